"""Errors of the latency side. Each says which device or measurement failed and what to do next."""

from __future__ import annotations

from compressor.errors import AmcError


class ProfilerError(AmcError):
    """Base class of the profiler's own errors."""


class DeviceUnavailable(ProfilerError):
    """A device cannot be reached or cannot run the agent (not connected, unauthorised, no Python...)."""

    def __init__(self, device: str, reason: str, *, hint: str = ""):
        self.device = device
        self.reason = reason
        self.hint = hint or "check `amc devices` and the cable / network, or measure on another device"
        super().__init__(f"device {device} is unavailable: {reason} ({self.hint})")


class MeasurementError(ProfilerError):
    """The device answered, but the measurement itself failed (bad model, agent crash, garbage output)."""

    def __init__(self, device: str, message: str, *, output: str = "", hint: str = "",
                 model_fault: bool = False):
        self.device = device
        self.message = message
        # True when the model itself is at fault (missing, corrupt, unsupported op): another device
        # would fail the same way, so the pool neither retries nor blames the device.
        self.model_fault = model_fault
        self.output = output
        self.hint = hint or "run `amc bench MODEL --device SPEC -v` to see the agent's full output"
        tail = f"; output tail: {output[-400:]!r}" if output else ""
        super().__init__(f"measurement on {device} failed: {message} ({self.hint}){tail}")


class DeviceWaitExpired(DeviceUnavailable):
    """A device a job cannot do without stopped answering and did not come back within the wait
    (`device_wait_s`). The work done so far is kept: resume when the device is back."""

    def __init__(self, device: str, reason: str, *, waited_s: float, wait_s: float):
        self.waited_s = waited_s
        self.wait_s = wait_s
        super().__init__(device, f"{reason}; waited {waited_s:.0f} s of {wait_s:.0f} s (device_wait_s) for it to "
                                 "come back",
                         hint="reconnect the device (check `amc devices`), then resume: POST /jobs/{id}/resume, or "
                              "`amc compress ... --resume DIR`; a longer device_wait_s waits longer")


class DeviceWaitStopped(DeviceWaitExpired):
    """The wait for a device was cut short because its job is stopping (cancelled, or the server shutting
    down): the job ends as cancelled (or pauses), not as failed."""

    def __init__(self, device: str, reason: str, *, waited_s: float, wait_s: float):
        self.waited_s = waited_s
        self.wait_s = wait_s
        DeviceUnavailable.__init__(self, device, f"{reason}; stopped waiting for it after {waited_s:.0f} s: the job "
                                                 "is stopping",
                                   hint="resume the job when the device is back")
