"""Waiting for a device a job cannot do without: `PatientDevice` wraps any Device (a phone over ADB, a farm
phone or phone model) so that a call that fails because the device is gone (it no longer passes a health
check) waits for it to come back, up to a deadline, and then goes on where it stopped. Past the deadline
it raises `DeviceWaitExpired`, which a job records as a failure to resume from (its checkpoint and the
measurements already taken are kept). `on_wait` hears when the wait starts, ends and expires, so a job's
state and log can say so."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

from profiler.devices.base import CommandResult, Device, Health
from profiler.devices.identity import DeviceIdentity
from profiler.errors import DeviceUnavailable, DeviceWaitExpired, DeviceWaitStopped, MeasurementError
from profiler.protocol import MeasureConfig, Measurement

log = logging.getLogger(__name__)

T = TypeVar("T")
WaitState = Literal["waiting", "back", "expired"]


@dataclass(frozen=True)
class DeviceWait:
    """One moment of a wait for a device: it started (`waiting`), the device answers again (`back`), or
    the deadline passed (`expired`)."""

    spec: str
    state: WaitState
    reason: str  # why the device was given up on: the error that started the wait
    waited_s: float
    wait_s: float  # the deadline, from the first failure

    def describe(self) -> str:
        if self.state == "waiting":
            return (f"waiting for device {self.spec} (up to {self.wait_s:.0f} s, device_wait_s): it stopped "
                    f"answering: {self.reason}")
        if self.state == "back":
            return f"device {self.spec} is back after {self.waited_s:.0f} s; continuing"
        return f"device {self.spec} did not come back within {self.wait_s:.0f} s (device_wait_s): {self.reason}"


class PatientDevice(Device):
    """`inner`, waiting up to `wait_s` for it whenever it stops answering. A failure while the device still
    answers a health check (an agent that cannot start, a bad model) is not waited for: it is raised at once.
    After one wait expired, later calls do not wait again until the device has answered once. `should_stop`
    (the job's cancel flag) is asked at every poll: when it says stop, the wait ends with DeviceWaitStopped."""

    kind = "patient"

    def __init__(self, inner: Device, *, wait_s: float, poll_s: float = 2.0,
                 on_wait: Callable[[DeviceWait], None] | None = None,
                 should_stop: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if wait_s < 0:
            raise ValueError("wait_s must be at least 0")
        super().__init__(inner.spec, benchmark_binary=inner.benchmark_binary)
        self.inner = inner
        self.wait_s = wait_s
        self.poll_s = poll_s
        self.on_wait = on_wait
        self.should_stop = should_stop
        self.waits: list[DeviceWait] = []  # every notice, for logs and tests
        self._given_up = False
        self._clock = clock
        self._sleep = sleep

    # -- waiting ----------------------------------------------------------------------------------
    def _notify(self, notice: DeviceWait) -> None:
        self.waits.append(notice)
        (log.info if notice.state == "back" else log.warning)("%s", notice.describe())
        if self.on_wait is not None:
            self.on_wait(notice)

    def _answers(self) -> bool:
        try:
            return self.inner.health().ok
        except DeviceUnavailable:
            return False

    def patiently(self, call: Callable[[], T]) -> T:
        """`call()`, waiting for the device and calling again each time it fails because the device is gone."""
        while True:
            try:
                result = call()
            except DeviceWaitExpired:
                raise
            except DeviceUnavailable as exc:
                if self._answers():
                    raise  # the device is there: waiting would not change the answer
                self._wait(exc)
                continue
            self._given_up = False
            return result

    def _wait(self, cause: DeviceUnavailable) -> None:
        reason = cause.reason
        if self._given_up:
            raise DeviceWaitExpired(self.spec, reason, waited_s=0.0, wait_s=self.wait_s) from cause
        start = self._clock()
        self.inner.forget_identity()  # another phone may come back at this address
        self._notify(DeviceWait(self.spec, "waiting", reason, 0.0, self.wait_s))
        while True:
            waited = self._clock() - start
            if waited >= self.wait_s:
                self._given_up = True
                self._notify(DeviceWait(self.spec, "expired", reason, waited, self.wait_s))
                raise DeviceWaitExpired(self.spec, reason, waited_s=waited, wait_s=self.wait_s) from cause
            if self.should_stop is not None and self.should_stop():
                raise DeviceWaitStopped(self.spec, reason, waited_s=waited, wait_s=self.wait_s) from cause
            self._sleep(min(self.poll_s, self.wait_s - waited))
            if self._answers():
                self._notify(DeviceWait(self.spec, "back", reason, self._clock() - start, self.wait_s))
                return

    # -- the device, patiently --------------------------------------------------------------------
    def identity(self) -> DeviceIdentity:
        return self.patiently(self.inner.identity)

    @property
    def known_identity(self) -> DeviceIdentity | None:
        return self.inner.known_identity

    @property
    def legacy_id(self) -> str:
        return self.inner.legacy_id

    def forget_identity(self) -> None:
        self.inner.forget_identity()

    def agent_version(self) -> str:
        return self.inner.agent_version()

    def measure(self, model_path: Path | str, config: MeasureConfig | None = None, *,
                runtime: str = "onnxruntime", timeout_s: float = 300.0,
                sha256: str | None = None) -> Measurement:
        return self.patiently(lambda: self.inner.measure(model_path, config, runtime=runtime, timeout_s=timeout_s,
                                                         sha256=sha256))

    def measure_many(self, model_paths: Sequence[Path | str], config: MeasureConfig | None = None, *,
                     runtime: str = "onnxruntime", timeout_s: float = 300.0) -> list[Measurement | MeasurementError]:
        return self.patiently(lambda: self.inner.measure_many(model_paths, config, runtime=runtime,
                                                              timeout_s=timeout_s))

    def health(self) -> Health:
        return self.inner.health()

    def temperature_c(self) -> float | None:
        return self.inner.temperature_c()

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        return self.patiently(lambda: self.inner.run(command, timeout_s=timeout_s))

    def model_path_on_device(self, model_path: Path, sha256: str) -> str:
        return self.patiently(lambda: self.inner.model_path_on_device(model_path, sha256))

    def agent_command(self) -> str:
        return self.inner.agent_command()

    def forget_model(self, remote: str) -> None:
        self.inner.forget_model(remote)

    def close(self) -> None:
        self.inner.close()
