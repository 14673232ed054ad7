"""A pool of interchangeable devices (e.g. several phones of one model, or `local`): one measurement
per device at a time, health checks, retry on another device when one fails, quarantine of a device
that keeps failing (released after a cool-off), and a deadline after which the caller gets None so
the lookup table answers instead."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.cache import MeasurementCache
from profiler.devices.base import Device, Health
from profiler.errors import DeviceUnavailable, MeasurementError
from profiler.protocol import MeasureConfig, Measurement, check_runtime, sha256_file

log = logging.getLogger(__name__)


@dataclass
class DeviceState:
    device: Device
    busy: bool = False
    consecutive_failures: int = 0
    quarantined_until: float = 0.0
    last_error: str = ""
    measurements: int = 0
    failures: int = 0
    history: list[str] = field(default_factory=list)

    def quarantined(self, now: float) -> bool:
        return now < self.quarantined_until


class DevicePool:
    """Leases devices to measurements. `quarantine_after` consecutive failures put a device aside for
    `cooloff_s` seconds; after that it gets one more chance (a further failure quarantines it again)."""

    def __init__(self, devices: Sequence[Device] = (), *, cache: MeasurementCache | None = None,
                 quarantine_after: int = 3, cooloff_s: float = 300.0, measure_timeout_s: float = 300.0):
        if quarantine_after < 1:
            raise ValueError("quarantine_after must be at least 1")
        self.cache = cache
        self.quarantine_after = quarantine_after
        self.cooloff_s = cooloff_s
        self.measure_timeout_s = measure_timeout_s
        self._states: dict[str, DeviceState] = {}
        self._cond = threading.Condition()
        for d in devices:
            self.add(d)

    @classmethod
    def from_specs(cls, specs: Sequence[str], *, device_options: dict[str, Any] | None = None,
                   **kwargs: Any) -> DevicePool:
        """A pool of the devices named by `specs` (ConfigError for a malformed one)."""
        from profiler.devices import open_device

        return cls([open_device(spec, **(device_options or {})) for spec in specs], **kwargs)

    # -- membership -------------------------------------------------------------------------------
    def add(self, device: Device) -> None:
        with self._cond:
            if device.spec in self._states:
                raise ValueError(f"device {device.spec} is already in the pool")
            self._states[device.spec] = DeviceState(device)
            self._cond.notify_all()

    def remove(self, spec: str) -> None:
        with self._cond:
            state = self._states.pop(spec, None)
        if state is not None:
            state.device.close()

    @property
    def devices(self) -> list[Device]:
        with self._cond:
            return [s.device for s in self._states.values()]

    def state(self, spec: str) -> DeviceState:
        return self._states[spec]

    def is_quarantined(self, spec: str) -> bool:
        return self._states[spec].quarantined(time.monotonic())

    def status(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        with self._cond:
            return [{"spec": s.device.spec, "busy": s.busy, "quarantined": s.quarantined(now),
                     "quarantine_left_s": max(0.0, s.quarantined_until - now),
                     "consecutive_failures": s.consecutive_failures, "measurements": s.measurements,
                     "failures": s.failures, "last_error": s.last_error} for s in self._states.values()]

    # -- leasing ----------------------------------------------------------------------------------
    @contextmanager
    def lease(self, *, timeout_s: float | None = None, exclude: Sequence[str] = ()) -> Iterator[Device | None]:
        """A free, non-quarantined device (not in `exclude`) for exclusive use, or None when none
        frees up within `timeout_s` (None: wait as long as one could still become free)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        state = None
        with self._cond:
            while True:
                now = time.monotonic()
                candidates = [s for s in self._states.values()
                              if s.device.spec not in exclude and not s.quarantined(now)]
                free = [s for s in candidates if not s.busy]
                if free:
                    # Least-used first spreads wear (and heat) across phones.
                    state = min(free, key=lambda s: (s.consecutive_failures, s.measurements))
                    state.busy = True
                    break
                if not candidates:
                    break
                wait = None if deadline is None else deadline - now
                if wait is not None and wait <= 0:
                    break
                self._cond.wait(timeout=wait)
        try:
            yield state.device if state else None
        finally:
            if state is not None:
                with self._cond:
                    state.busy = False
                    self._cond.notify_all()

    def _record(self, device: Device, error: Exception | None) -> None:
        with self._cond:
            state = self._states.get(device.spec)
            if state is None:
                return
            if error is None:
                state.consecutive_failures = 0
                state.measurements += 1
                return
            state.failures += 1
            state.consecutive_failures += 1
            state.last_error = str(error)[:500]
            if state.consecutive_failures >= self.quarantine_after:
                state.quarantined_until = time.monotonic() + self.cooloff_s
                # One more failure after the cool-off quarantines it again.
                state.consecutive_failures = self.quarantine_after - 1
                log.warning("quarantined %s for %.0f s after %d consecutive failures: %s",
                            device.spec, self.cooloff_s, self.quarantine_after, state.last_error)

    # -- health -----------------------------------------------------------------------------------
    def check_health(self) -> list[Health]:
        """Health of every device that is not busy; a failed check counts as a failure."""
        out = []
        for device in self.devices:
            with self.lease(timeout_s=0, exclude=[d.spec for d in self.devices if d is not device]) as leased:
                if leased is None:
                    st = self._states.get(device.spec)
                    out.append(Health(device.spec, st is not None and not st.quarantined(time.monotonic()),
                                      "busy" if st and st.busy else "quarantined"))
                    continue
                health = leased.health()
                self._record(leased, None if health.ok else DeviceUnavailable(leased.spec, health.detail))
                out.append(health)
        return out

    # -- measuring --------------------------------------------------------------------------------
    def measure(self, model_path: Path | str, config: MeasureConfig | None = None, *,
                runtime: str = "onnxruntime", deadline_s: float | None = None,
                fresh: bool = False) -> Measurement | None:
        """Measure on the first free device, retrying on the others when one fails. Returns None when
        no device answered before the deadline (or every device failed); raises MeasurementError only
        when the model itself is at fault. `fresh`: measure now even when the cache knows the model (the
        device's speed today is the question, e.g. a search's calibration); the result is cached."""
        config = config or MeasureConfig()
        check_runtime(runtime)
        sha = sha256_file(Path(model_path))
        if self.cache is not None and not fresh:
            # Devices already identified answer from the cache without being leased or asked anything.
            for cached_on in self.devices:
                known = cached_on.known_identity
                hit = None if known is None else self.cache.get(device_id=known.key, runtime=runtime,
                                                                config=config, sha256=sha)
                if hit is not None:
                    return hit
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        tried: list[str] = []
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                log.warning("no device measured %s within %.1f s", Path(model_path).name, deadline_s)
                return None
            with self.lease(timeout_s=left, exclude=tried) as device:
                if device is None:
                    if tried:
                        log.warning("every device failed to measure %s (%s)", Path(model_path).name,
                                    ", ".join(tried))
                    return None
                tried.append(device.spec)
                timeout = self.measure_timeout_s if left is None else max(1.0, min(self.measure_timeout_s, left))
                try:
                    # Identifying the device (first lease) may find its numbers already cached.
                    hit = None if self.cache is None or fresh else self.cache.get(
                        device_id=device.id, runtime=runtime, config=config, sha256=sha)
                    if hit is not None:
                        return hit
                    result = device.measure(model_path, config, runtime=runtime, timeout_s=timeout, sha256=sha)
                except MeasurementError as exc:
                    if exc.model_fault:
                        self._record(device, None)
                        raise
                    self._record(device, exc)
                    log.warning("measurement on %s failed, trying another device: %s", device.spec, exc)
                    continue
                except DeviceUnavailable as exc:
                    self._record(device, exc)
                    log.warning("%s unavailable, trying another device: %s", device.spec, exc)
                    continue
                self._record(device, None)
            if self.cache is not None:
                self.cache.put(result, config)
            return result

    def close(self) -> None:
        for device in self.devices:
            device.close()
