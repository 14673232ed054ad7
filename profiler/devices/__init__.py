"""Devices that time models: `local` (this CPU), `adb:HOST:PORT` (ADB over TCP), `adb:SERIAL` (USB), and,
with a phone farm (`AMC_RAY_ADDRESS`), `model:NAME` (any free phone of that model in the cluster).

`parse_device_spec` checks a spec; `open_device` turns it into a `Device` through the `DEVICE_KINDS`
registry (kind -> factory). With `AMC_RAY_ADDRESS` set, phones (`adb:...`, `model:...`) are the farm's:
leased cluster-wide through `profiler.farm` (Ray is imported only then)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from compressor.errors import ConfigError
from profiler.devices.adb import AdbDevice, AdbTcpDevice, AdbUsbDevice, list_usb_serials
from profiler.devices.base import CommandResult, Device, Health
from profiler.devices.local import LocalDevice
from profiler.farm.names import farm_address, insecure_from_env, parse_model_spec

__all__ = [
    "AdbDevice", "AdbTcpDevice", "AdbUsbDevice", "CommandResult", "DEVICE_KINDS", "Device", "DeviceSpec",
    "Health", "LocalDevice", "list_usb_serials", "open_device", "open_farm_device", "parse_device_spec",
]

_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
_SERIAL = re.compile(r"^[A-Za-z0-9._-]+$")
_EXAMPLES = ("local, adb:192.168.1.20:5555 (TCP), adb:R58M12ABCDE (USB serial) or, with a phone farm, "
             "model:Pixel_7")


@dataclass(frozen=True)
class DeviceSpec:
    """A parsed device spec: `kind` is local | adb-tcp | adb-usb | model (a phone model of the farm)."""

    kind: str
    text: str
    host: str | None = None
    port: int | None = None
    serial: str | None = None

    def __str__(self) -> str:
        return self.text


def parse_device_spec(spec: str) -> DeviceSpec:
    """Parse `local`, `adb:HOST:PORT`, `adb:SERIAL` or `model:NAME`; raise ConfigError("device", ...) otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("device", f"empty device spec; use one of {_EXAMPLES}")
    text = spec.strip()
    if text == "local":
        return DeviceSpec("local", "local")
    model = parse_model_spec(text)
    if model is not None:
        return DeviceSpec("model", f"model:{model}")
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


def open_device(spec: str | DeviceSpec, *, farm: str | None = None, direct: bool = False, **options: Any) -> Device:
    """A Device for `spec`; `options` go to its constructor (e.g. key_path, python, benchmark_binary).
    With a farm (`farm`, else `$AMC_RAY_ADDRESS`), a phone or phone model is the farm's; `direct`: the
    device itself, never through a farm (a device host serving its own phones, whose environment names
    the farm it serves them to)."""
    parsed = spec if isinstance(spec, DeviceSpec) else parse_device_spec(spec)
    address = None if direct else farm_address(farm)
    if parsed.kind != "local" and address is not None:
        return open_farm_device(parsed.text, address)
    if parsed.kind == "model":
        raise ConfigError("device", f"{parsed.text!r} names a phone model of a phone farm, and no farm is set: set "
                                    "AMC_RAY_ADDRESS (or --ray) to the Ray cluster's address (docs/FARM.md), or "
                                    "name one device: local, adb:SERIAL or adb:HOST:PORT")
    return DEVICE_KINDS[parsed.kind](parsed, **options)


def open_farm_device(spec: str, address: str) -> Device:
    """`spec` (a phone or `model:NAME`) on the farm at `address`; imports Ray."""
    from profiler.cache import MeasurementCache
    from profiler.farm.client import Farm, FarmDevice
    from profiler.paths import default_cache_path

    return FarmDevice(spec, farm=Farm(address, insecure=insecure_from_env()),
                      cache=MeasurementCache(default_cache_path()))
