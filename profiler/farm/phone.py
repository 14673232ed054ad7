"""What one phone's Ray actor does: it holds the phone's ADB connection on the host the phone is plugged
into, its lease (one measurement at a time, cluster-wide: whoever measures must hold the lease, and the
lease lives here, in the one process that talks to the phone), its last health, and it measures.

Plain Python so it is tested without Ray; `profiler.farm.host` turns it into an actor (threaded, so that
`info` answers while `measure` runs). Results and errors cross the wire as dicts: a client rebuilds
`Measurement`, `DeviceUnavailable` or `MeasurementError` from them (`raise_error`)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from profiler.devices.base import Device
from profiler.errors import DeviceUnavailable, MeasurementError
from profiler.protocol import MeasureConfig

log = logging.getLogger(__name__)


def error_dict(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, MeasurementError):
        return {"ok": False, "error_type": "MeasurementError", "device": exc.device, "message": exc.message,
                "hint": exc.hint, "model_fault": exc.model_fault, "output": exc.output[-2000:]}
    if isinstance(exc, DeviceUnavailable):
        return {"ok": False, "error_type": "DeviceUnavailable", "device": exc.device, "message": exc.reason,
                "hint": exc.hint}
    return {"ok": False, "error_type": "DeviceUnavailable", "device": "?",
            "message": f"{type(exc).__name__}: {exc}", "hint": ""}


def raise_error(data: dict[str, Any]) -> None:
    """Raise the error a phone actor reported (see `error_dict`)."""
    device, message, hint = str(data.get("device")), str(data.get("message")), str(data.get("hint") or "")
    if data.get("error_type") == "MeasurementError":
        raise MeasurementError(device, message, hint=hint, output=str(data.get("output") or ""),
                               model_fault=bool(data.get("model_fault")))
    raise DeviceUnavailable(device, message, hint=hint)


class PhoneServer:
    """One phone, served to the cluster. `lease` gives a token (or None while another holder has it);
    `measure` needs the token; a lease not used for `lease_ttl_s` lapses, so a client that died between
    leasing and measuring does not keep the phone forever."""

    def __init__(self, device: Device, *, host: str, lease_ttl_s: float = 60.0):
        self.device = device
        self.host = host
        self.lease_ttl_s = lease_ttl_s
        self._lock = threading.Lock()
        self._holder: str | None = None
        self._token: str | None = None
        self._lease_since = 0.0
        self._lease_until = 0.0
        self._measuring = False
        self._health: dict[str, Any] = {"ok": None, "detail": "not checked yet", "checked_at": None}
        self.measurements = 0
        self.failures = 0
        self._identity: dict[str, Any] | None = None
        self._android: str | None = None

    # -- identity and listing ---------------------------------------------------------------------
    def start(self) -> dict[str, Any]:
        """Identify the phone (DeviceUnavailable as a dict when it does not answer); its info."""
        try:
            identity = self.device.identity()
            res = self.device.run("getprop ro.build.version.release 2>/dev/null", timeout_s=10)
            self._android = res.stdout.strip() or None if res.rc == 0 else None
        except Exception as exc:  # reported to the host, which retries on its next scan
            return error_dict(exc)
        self._identity = {**identity.to_dict(), "key": identity.key}
        self._health = {"ok": True, "detail": "", "checked_at": time.time()}
        return {"ok": True, **self.info()}

    def info(self) -> dict[str, Any]:
        """What the listing shows; never talks to the phone."""
        with self._lock:
            self._expire()
            lease = None if self._holder is None else {
                "holder": self._holder, "since": self._lease_since, "measuring": self._measuring}
        identity = self._identity or {}
        return {"ready": self._identity is not None, "spec": self.device.spec, "host": self.host,
                "model": identity.get("model"),
                "serial": identity.get("serial"), "android": self._android, "identity": identity,
                "health": dict(self._health), "lease": lease, "measurements": self.measurements,
                "failures": self.failures}

    def health(self) -> dict[str, Any]:
        """Check the phone, unless it is leased (a measurement is never disturbed: the last result stays)."""
        with self._lock:
            self._expire()
            if self._holder is not None:
                return dict(self._health)
            self._measuring = True  # keeps a lease from being granted while the check talks to the phone
        try:
            h = self.device.health()
            self._health = {"ok": h.ok, "detail": h.detail, "checked_at": time.time()}
        finally:
            with self._lock:
                self._measuring = False
        return dict(self._health)

    # -- leasing ----------------------------------------------------------------------------------
    def _expire(self) -> None:
        if self._holder is not None and not self._measuring and time.monotonic() > self._lease_until:
            log.warning("lease of %s by %s lapsed after %.0f s unused", self.device.spec, self._holder,
                        self.lease_ttl_s)
            self._holder = self._token = None

    def lease(self, holder: str) -> str | None:
        with self._lock:
            self._expire()
            if self._holder is not None or self._measuring:
                return None
            self._holder, self._token = holder, uuid.uuid4().hex
            self._lease_since = time.time()
            self._lease_until = time.monotonic() + self.lease_ttl_s
            return self._token

    def release(self, token: str) -> bool:
        with self._lock:
            if token != self._token:
                return False
            self._holder = self._token = None
            return True

    # -- measuring --------------------------------------------------------------------------------
    def measure(self, token: str, model: bytes, suffix: str, config: dict[str, Any], runtime: str,
                timeout_s: float) -> dict[str, Any]:
        """Time `model` (the file's bytes) under the lease `token`: the Measurement as a dict, or an error dict."""
        return self._leased(token, lambda paths: [self.device.measure(paths[0], MeasureConfig(**config),
                                                                      runtime=runtime, timeout_s=timeout_s)],
                            [(model, suffix)], batch=False)

    def measure_many(self, token: str, models: list[tuple[bytes, str]], config: dict[str, Any], runtime: str,
                     timeout_s: float) -> dict[str, Any]:
        """Time several models (bytes, suffix) in one agent run under the lease `token`: `results`, a
        Measurement or an error dict for each in order; an error dict when the phone could not be used."""
        return self._leased(token, lambda paths: self.device.measure_many(paths, MeasureConfig(**config),
                                                                          runtime=runtime, timeout_s=timeout_s),
                            models, batch=True)

    def _leased(self, token: str, timed: Callable[[list[Path]], list[Any]], models: list[tuple[bytes, str]], *,
                batch: bool) -> dict[str, Any]:
        with self._lock:
            self._expire()
            if token != self._token:
                return {"ok": False, "error_type": "DeviceUnavailable", "device": self.device.spec,
                        "message": "the lease is not held (it lapsed, or another client holds the phone)",
                        "hint": "lease the phone again"}
            self._measuring = True
        started = time.time()
        try:
            # Only while they are pushed: the phone keeps its own copy by content hash.
            with tempfile.TemporaryDirectory(prefix="amc-farm-") as tmp:
                paths = []
                for model, suffix in models:
                    path = Path(tmp) / (hashlib.sha256(model).hexdigest()
                                        + (suffix if suffix in (".onnx", ".tflite") else ".onnx"))
                    path.write_bytes(model)
                    paths.append(path)
                results = timed(paths)
        except Exception as exc:
            self.failures += 1
            if isinstance(exc, DeviceUnavailable):
                self._health = {"ok": False, "detail": exc.reason, "checked_at": time.time()}
            return error_dict(exc)
        finally:
            with self._lock:
                self._measuring = False
                self._lease_until = time.monotonic() + self.lease_ttl_s
        self._health = {"ok": True, "detail": "", "checked_at": time.time()}
        where = {"phone": self.device.spec, "host": self.host, "started": started, "finished": time.time()}
        answers = []
        for result in results:
            if isinstance(result, Exception):
                self.failures += 1
                answers.append(error_dict(result))
                continue
            self.measurements += 1
            data = dataclasses.asdict(result)
            # Where and when it ran: the caller's log says which phone answered; tests check phones overlap.
            data["raw"] = {**data.get("raw", {}), "farm": where}
            answers.append({"ok": True, "measurement": data})
        return {"ok": True, "results": answers} if batch else answers[0]

    def close(self) -> None:
        self.device.close()
