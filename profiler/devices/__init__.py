"""Devices that time models: `local` (this CPU), `adb:HOST:PORT` (ADB over TCP), `adb:SERIAL` (USB).

`parse_device_spec` checks a spec; `open_device` turns it into a `Device` through the `DEVICE_KINDS`
registry (kind -> factory)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compressor.errors import ConfigError
from profiler.devices.adb import AdbDevice, AdbTcpDevice, AdbUsbDevice, list_usb_serials
from profiler.devices.base import CommandResult, Device, Health
from profiler.devices.local import LocalDevice

__all__ = [
    "AdbDevice", "AdbTcpDevice", "AdbUsbDevice", "CommandResult", "DEVICE_KINDS", "Device", "DeviceSpec",
    "Health", "LocalDevice", "list_usb_serials", "open_device", "parse_device_spec",
]

_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SERIAL = re.compile(r"^[A-Za-z0-9._-]+$")
_EXAMPLES = "local, adb:192.168.1.20:5555 (TCP) or adb:R58M12ABCDE (USB serial)"


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device spec: `kind` is local | adb-tcp | adb-usb."""

    kind: str
    text: str
    host: str | None = None
    port: int | None = None
    serial: str | None = None

    def __str__(self) -> str:
        return self.text


def parse_device_spec(spec: str) -> DeviceSpec:
    """Parse `local`, `adb:HOST:PORT` or `adb:SERIAL`; raise ConfigError("device", ...) otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("device", f"empty device spec; use one of {_EXAMPLES}")
    text = spec.strip()
    if text == "local":
        return DeviceSpec("local", "local")
    scheme, sep, rest = text.partition(":")
    if scheme != "adb" or not sep:
        raise ConfigError("device", f"{spec!r} is not a device spec; use one of {_EXAMPLES}")
    if not rest:
        raise ConfigError("device", f"{spec!r} names no device after 'adb:'; use {_EXAMPLES}")
    if ":" in rest:
        host, _, port_text = rest.rpartition(":")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError("device", f"{spec!r}: port {port_text!r} is not a number in 1-65535")
        if not host or not _HOST.match(host):
            raise ConfigError("device", f"{spec!r}: {host!r} is not a host name or IPv4 address")
        return DeviceSpec("adb-tcp", f"adb:{host}:{int(port_text)}", host=host, port=int(port_text))
    if _IPV4.match(rest) or rest == "localhost":
        raise ConfigError("device", f"{spec!r} looks like a network address without a port; use adb:{rest}:5555")
    if not _SERIAL.match(rest):
        raise ConfigError("device", f"{spec!r}: {rest!r} is not a USB serial (letters, digits, . _ -)")
    return DeviceSpec("adb-usb", text, serial=rest)


DEVICE_KINDS: dict[str, Callable[..., Device]] = {
    "local": lambda spec, **kw: LocalDevice(spec.text, **kw),
    "adb-tcp": lambda spec, **kw: AdbTcpDevice(spec.text, host=spec.host, port=spec.port, **kw),
    "adb-usb": lambda spec, **kw: AdbUsbDevice(spec.text, serial=spec.serial, **kw),
}


def open_device(spec: str | DeviceSpec, **options: Any) -> Device:
    """A Device for `spec`; `options` go to its constructor (e.g. key_path, python, benchmark_binary)."""
    parsed = spec if isinstance(spec, DeviceSpec) else parse_device_spec(spec)
    return DEVICE_KINDS[parsed.kind](parsed, **options)
