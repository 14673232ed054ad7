"""The device registry as the service sees it. Thin on purpose: the registry of TCP devices, USB
discovery and health checks are the profiler's (`profiler.registry`); a server keeps its registered
devices in its own data dir (`DeviceDirectory.for_settings`). With a phone farm (`AMC_RAY_ADDRESS`),
the devices are `local` and every phone of the cluster (`profiler.farm`), and jobs may name a phone
model (`model:Pixel_7`)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from compressor.errors import ConfigError
from profiler.devices import open_device, parse_device_spec
from profiler.devices.adb import list_usb_serials
from profiler.registry import DeviceRegistry, discover
from server.core.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    from profiler.farm.client import Farm

log = logging.getLogger(__name__)

SPEC_HELP = "local, adb:SERIAL (USB) or adb:HOST:PORT (TCP, registered with POST /devices)"


@dataclass
class DeviceInfo:
    spec: str
    source: str  # local | usb | registered | farm
    health: str  # ok | unhealthy | unknown
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)
    host: str | None = None
    lease: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DeviceDirectory:
    """Device listing with health for the API and the status page. A health check opens every
    device, so results are cached for `ttl_s` seconds (the status page polls)."""

    def __init__(self, registry: DeviceRegistry | None = None, *, ttl_s: float = 15.0,
                 farm: Farm | None = None):
        self.registry = registry or DeviceRegistry()
        self.ttl_s = ttl_s
        self.farm = farm
        self._lock = threading.Lock()
        self._cached: tuple[float, list[DeviceInfo], list[str]] | None = None

    @classmethod
    def for_settings(cls, settings: Settings) -> DeviceDirectory:
        """The directory of one server: its registered devices live in its data dir, not in the user's
        config folder that every server (and `amc devices`) on the machine would share. With
        `ray_address`, the farm's phones (Ray is imported on the first listing, not here)."""
        farm = None
        if settings.ray_address:
            from profiler.farm.client import Farm  # no Ray import: Farm joins the cluster on first use
            from profiler.farm.names import check_ray_address

            farm = Farm(check_ray_address(settings.ray_address, insecure=settings.ray_insecure),
                        insecure=settings.ray_insecure)
        return cls(DeviceRegistry(settings.devices_file), farm=farm)

    def _farm_list(self) -> tuple[list[DeviceInfo], list[str]]:
        assert self.farm is not None
        local = self._health(DeviceInfo("local", "local", "unknown"))
        try:
            phones = self.farm.phones(check_health=True)
        except Exception as exc:  # the cluster is down: say so, still list this machine
            return [local], [f"the phone farm at {self.farm.address} cannot be asked: {exc}"]
        devices = [local]
        for p in phones:
            health = {"ok": "ok", "unknown": "unknown"}.get(p.health, "unhealthy")
            detail = p.detail or ("its actor does not answer" if p.health == "no answer" else "")
            devices.append(DeviceInfo(p.spec, "farm", health, detail, host=p.host, lease=p.lease, info={
                "model": p.model, "model_spec": f"model:{p.model_slug}", "android": p.android,
                "serial": p.serial, "measurements": p.measurements, "identity": p.identity.get("key")}))
        notes = [f"phone farm: {self.farm.address}, {len(phones)} phone(s)"]
        return devices, notes

    def list(self, *, refresh: bool = False) -> tuple[list[DeviceInfo], list[str]]:
        """Every device (this machine, USB phones, registered TCP devices; or the farm's phones) with
        health, and notes."""
        with self._lock:
            if not refresh and self._cached is not None and time.monotonic() - self._cached[0] < self.ttl_s:
                return self._cached[1], self._cached[2]
            if self.farm is not None:
                devices, notes = self._farm_list()
                self._cached = (time.monotonic(), devices, notes)
                return devices, notes
            found, notes = discover(registry=self.registry, health=True)
            devices = [DeviceInfo(d.spec, d.source, "unknown" if d.ok is None else ("ok" if d.ok else "unhealthy"),
                                  d.detail, d.info) for d in found]
            self._cached = (time.monotonic(), devices, notes)
            return devices, notes

    def register(self, address: str, name: str | None = None) -> DeviceInfo:
        """Register a TCP device (`HOST:PORT` or `adb:HOST:PORT`); returns it with a fresh health check."""
        text = address if address.startswith(("adb:", "local")) else f"adb:{address}"
        parsed = parse_device_spec(text)
        if parsed.kind != "adb-tcp":
            raise ConfigError("spec", f"{address!r} is not a TCP device; register adb:HOST:PORT "
                                      "(USB phones and `local` are found without registering)")
        spec = self.registry.add(parsed.text, name=name)
        # Only the new device is checked: re-checking every registered one (each may take its connect
        # timeout) would make one registration as slow as all of them.
        info = self._health(DeviceInfo(spec, "registered", "unknown"))
        with self._lock:
            if self._cached is not None:
                kept = [d for d in self._cached[1] if d.spec != spec]
                self._cached = (self._cached[0], [*kept, info], self._cached[2])
        return info

    @staticmethod
    def _health(device: DeviceInfo) -> DeviceInfo:
        opened = None
        try:
            opened = open_device(device.spec)
            h = opened.health()
            device.health, device.detail, device.info = ("ok" if h.ok else "unhealthy"), h.detail, h.info
        except Exception as exc:  # report, never fail the registration: the device may come up later
            device.health, device.detail = "unhealthy", str(exc)
        finally:
            if opened is not None:
                opened.close()
        return device

    def check(self, spec: str) -> None:
        """A job may use `local`, a USB phone that is plugged in, or a registered TCP device."""
        parsed = parse_device_spec(spec)  # ConfigError("device", ...) naming the accepted forms
        if parsed.kind == "local":
            return
        if self.farm is not None:
            self.farm.check(parsed.text)  # a phone or phone model of the cluster
            return
        if parsed.kind == "model":
            raise ConfigError("device", f"{spec!r} names a phone model of a phone farm, and this server has none; "
                                        "start it with AMC_RAY_ADDRESS set (docs/FARM.md), or use one of: "
                                        f"{', '.join(['local', *self.registry.specs()])}")
        if parsed.kind == "adb-tcp":
            known = self.registry.specs()
            if parsed.text not in known:
                raise ConfigError("device", f"{spec!r} is not registered; register it with POST /devices, or use "
                                            f"one of: {', '.join(['local', *known])}")
            return
        serials, note = list_usb_serials()
        if parsed.serial not in serials:
            allowed = ", ".join(["local", *(f"adb:{s}" for s in serials), *self.registry.specs()])
            raise ConfigError("device", f"no USB phone {parsed.serial!r} is attached{'; ' + note if note else ''}; "
                                        f"use one of: {allowed}")
