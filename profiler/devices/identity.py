"""What a device is, as opposed to the address it was reached at: a phone on `adb:HOST:PORT` today may be
another phone tomorrow, and two phones of one model and build time models alike wherever they are
plugged in. The measurement cache and the latency tables are keyed by `DeviceIdentity.key`."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compressor.fileio import atomic_write

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceIdentity:
    """One device as it describes itself: its serial (this unit), and what decides how fast it runs a
    model: its model (`ro.product.model`), its build (`ro.build.fingerprint`; the OS on Linux), the
    versions of its runtimes and of the agent that times them. Units that agree on all of these but
    the serial share one `key`, hence one set of cached measurements and one lookup table."""

    serial: str | None
    model: str | None
    build: str | None
    agent: str
    runtimes: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """`<model>-<hash of model, build, runtimes, agent>`: readable in file names, never an address."""
        text = json.dumps([self.model, self.build, sorted(self.runtimes.items()), self.agent])
        slug = re.sub(r"[^A-Za-z0-9]+", "_", self.model or "device").strip("_")[:40] or "device"
        return f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"

    def describe(self) -> str:
        return f"{self.model or '?'} (serial {self.serial or '?'}, build {self.build or '?'})"

    def mismatch(self, info: dict[str, Any]) -> str | None:
        """What differs between this identity and device info a measurement reported (None: nothing),
        comparing only what both name: the phone at an address may have been swapped meanwhile."""
        for name, mine in (("serial", self.serial), ("model", self.model), ("build", self.build)):
            theirs = info.get(name)
            if mine and isinstance(theirs, str) and theirs and theirs != mine:
                return f"{name} {mine!r} became {theirs!r}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeviceIdentity:
        return cls(serial=data.get("serial"), model=data.get("model"), build=data.get("build"),
                   agent=str(data.get("agent") or "none"), runtimes=dict(data.get("runtimes") or {}))

    @classmethod
    def from_info(cls, info: dict[str, Any], *, agent: str) -> DeviceIdentity:
        """From the agent's device info (`python -m device_agent info`)."""
        runtimes = info.get("runtimes")
        return cls(serial=_text(info.get("serial")), model=_text(info.get("model")), build=_text(info.get("build")),
                   agent=agent, runtimes={str(k): str(v) for k, v in (runtimes or {}).items()}
                   if isinstance(runtimes, dict) else {})


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


class IdentityBook:
    """The identity last seen at each address (a JSON file next to the lookup tables), so a search whose
    phone is offline can still predict with that phone's table; never used to key a measurement."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("ignoring %s (%s); it is rewritten when a device next answers", self.path, exc)
            return {}
        return data if isinstance(data, dict) else {}

    def remember(self, address: str, identity: DeviceIdentity) -> None:
        data = self._read()
        if data.get(address) == identity.to_dict():
            return
        data[address] = identity.to_dict()
        try:
            atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True).encode())
        except OSError as exc:  # only the offline fallback is lost
            log.warning("cannot record the identity of %s in %s: %s", address, self.path, exc)

    def recall(self, address: str) -> DeviceIdentity | None:
        entry = self._read().get(address)
        return DeviceIdentity.from_dict(entry) if isinstance(entry, dict) else None
