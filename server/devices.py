"""The device registry as the service sees it: `local`, registered TCP devices, and whatever the
profiler's registry knows. Thin on purpose: device logic lives in `profiler`."""

from __future__ import annotations

import importlib
import logging
import re
import socket
from dataclasses import asdict, dataclass
from typing import Any

from compressor.errors import ConfigError
from server.store import Store

log = logging.getLogger(__name__)

SPEC_HELP = "local, adb:SERIAL (USB) or adb:HOST:PORT (TCP)"
_TCP = re.compile(r"^adb:(?P<host>[A-Za-z0-9.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
_USB = re.compile(r"^adb:(?P<serial>[A-Za-z0-9._\-]+)$")


@dataclass
class DeviceInfo:
    spec: str
    kind: str  # local | usb | tcp
    name: str
    health: str  # ok | unreachable | unknown
    detail: str = ""
    registered: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _profiler_devices() -> Any | None:
    try:
        return importlib.import_module("profiler.devices")
    except ImportError:
        return None


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """(kind, parts) of a device spec; ConfigError("device") naming the accepted forms otherwise."""
    spec = spec.strip()
    prof = _profiler_devices()
    if prof is not None and hasattr(prof, "parse_device_spec"):
        try:
            prof.parse_device_spec(spec)
        except Exception as exc:  # the profiler's own error type; its message says what was wrong
            raise ConfigError("device", f"{spec!r} is not a device: {exc}; use {SPEC_HELP}") from None
    if spec == "local":
        return "local", {}
    m = _TCP.match(spec)
    if m:
        port = int(m["port"])
        if not 0 < port < 65536:
            raise ConfigError("device", f"port {port} is out of range in {spec!r}; use {SPEC_HELP}")
        return "tcp", {"host": m["host"].strip("[]"), "port": port}
    m = _USB.match(spec)
    if m:
        return "usb", {"serial": m["serial"]}
    raise ConfigError("device", f"{spec!r} is not a device; use {SPEC_HELP}")


def _tcp_health(host: str, port: int, timeout: float = 0.3) -> tuple[str, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "ok", "TCP port answers"
    except OSError as exc:
        return "unreachable", f"{type(exc).__name__}: {exc}"


def list_devices(store: Store, *, check_health: bool = True) -> list[DeviceInfo]:
    """`local`, the registered TCP devices (with a reachability check) and USB phones adb can see."""
    out = [DeviceInfo("local", "local", "this machine's CPU", "ok", "always available")]
    for dev in store.list_devices():
        kind, parts = parse_spec(dev.spec)
        health, detail = ("unknown", "")
        if check_health and kind == "tcp":
            health, detail = _tcp_health(parts["host"], parts["port"])
        out.append(DeviceInfo(dev.spec, kind, dev.name or dev.spec, health, detail, registered=True))
    prof = _profiler_devices()
    lister = getattr(prof, "list_devices", None) if prof is not None else None
    if callable(lister):
        known = {d.spec for d in out}
        try:
            for d in lister():
                spec = str(getattr(d, "spec", d))
                if spec not in known:
                    out.append(DeviceInfo(spec, parse_spec(spec)[0], str(getattr(d, "name", spec)),
                                          str(getattr(d, "health", "unknown"))))
        except Exception as exc:  # a broken adb must not take the device list down
            log.warning("profiler could not list devices: %s", exc)
    return out


def register_device(store: Store, spec: str, name: str = "") -> DeviceInfo:
    """Register a TCP device (`adb:HOST:PORT`) so searches can use it."""
    kind, parts = parse_spec(spec)
    if kind != "tcp":
        raise ConfigError("spec", f"only TCP devices are registered (adb:HOST:PORT); {spec!r} is {kind}")
    store.add_device(spec, name)
    health, detail = _tcp_health(parts["host"], parts["port"])
    return DeviceInfo(spec, kind, name or spec, health, detail, registered=True)


def check_device(store: Store, spec: str) -> None:
    """A job may use `local`, a USB phone, or a TCP device registered with POST /devices."""
    kind, _ = parse_spec(spec)
    if kind == "tcp" and spec not in {d.spec for d in store.list_devices()}:
        allowed = ", ".join(["local"] + [d.spec for d in store.list_devices()])
        raise ConfigError("device", f"{spec!r} is not registered; register it with POST /devices "
                                    f"or use one of: {allowed}")
