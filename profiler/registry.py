"""Registered TCP devices (`amc devices add HOST:PORT`) in a small JSON file under the config folder,
and discovery for `amc devices`: this machine, USB phones, registered TCP devices, each with health."""

from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.errors import ConfigError
from compressor.fileio import atomic_write
from profiler.devices import list_usb_serials, open_device, parse_device_spec
from profiler.paths import config_dir

log = logging.getLogger(__name__)


def default_registry_path() -> Path:
    return config_dir() / "devices.json"


class DeviceRegistry:
    """The TCP devices the user registered; a spec may appear once."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or default_registry_path())

    def _read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text())
        except ValueError as exc:
            raise ConfigError("devices", f"{self.path} is not valid JSON ({exc}); fix or delete it") from exc
        return list(data.get("devices", []))

    def _write(self, entries: list[dict[str, Any]]) -> None:
        # 0600 as before: it lives in the user's config folder, next to the adb keys
        atomic_write(self.path, json.dumps({"devices": entries}, indent=1).encode(), mode=0o600)

    def specs(self) -> list[str]:
        return [e["spec"] for e in self._read()]

    def add(self, address: str, *, name: str | None = None) -> str:
        """Register `HOST:PORT` (or a full `adb:...` spec); returns the normalised spec."""
        text = address if address.startswith(("adb:", "local")) else f"adb:{address}"
        parsed = parse_device_spec(text)
        if parsed.kind == "local":
            raise ConfigError("device", "`local` is always listed; register network devices as HOST:PORT")
        entries = self._read()
        if any(e["spec"] == parsed.text for e in entries):
            return parsed.text
        entries.append({"spec": parsed.text, "name": name, "added": time.time()})
        self._write(entries)
        return parsed.text

    def remove(self, address: str) -> bool:
        text = address if address.startswith("adb:") else f"adb:{address}"
        spec = parse_device_spec(text).text
        entries = self._read()
        kept = [e for e in entries if e["spec"] != spec]
        if len(kept) == len(entries):
            return False
        self._write(kept)
        return True


@dataclass
class DiscoveredDevice:
    spec: str
    source: str  # local | usb | registered
    ok: bool | None = None
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def discover(*, registry: DeviceRegistry | None = None, health: bool = True,
             device_options: dict[str, Any] | None = None) -> tuple[list[DiscoveredDevice], list[str]]:
    """Every device we know of, with health when asked; and notes (e.g. why USB could not be listed)."""
    registry = registry or DeviceRegistry()
    notes: list[str] = []
    found = [DiscoveredDevice("local", "local")]
    serials, note = list_usb_serials()
    if note:
        notes.append(note)
    found += [DiscoveredDevice(f"adb:{s}", "usb") for s in serials]
    found += [DiscoveredDevice(spec, "registered") for spec in registry.specs()]
    if health:
        def check(d: DiscoveredDevice) -> DiscoveredDevice:
            device = None
            try:
                device = open_device(d.spec, **(device_options or {}))
                h = device.health()
                d.ok, d.detail, d.info = h.ok, h.detail, h.info
            except Exception as exc:  # report, never crash the listing
                d.ok, d.detail = False, str(exc)
            finally:
                if device is not None:
                    device.close()
            return d

        with ThreadPoolExecutor(max_workers=4) as ex:
            found = list(ex.map(check, found))
    return found, notes
