"""Read what a device says about itself: Android properties when there is `getprop`, Linux sysfs otherwise."""

from __future__ import annotations

import functools
import glob
import logging
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .schema import DeviceInfo

logger = logging.getLogger(__name__)

GOVERNOR_PATH = Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
THERMAL_GLOB = "/sys/class/thermal/thermal_zone*"
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
# Zone types that track the CPU, best first; otherwise the first readable zone is used.
PREFERRED_ZONE_TYPES = ("cpu", "soc", "x86_pkg_temp", "tsens", "mtktscpu", "ap")


def getprop(key: str, *, timeout_s: float = 3.0) -> str | None:
    """Android system property, or None where there is no `getprop` or the property is empty."""
    exe = shutil.which("getprop")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, key], capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("getprop %s failed: %s", key, exc)
        return None
    value = out.stdout.strip()
    return value or None


def _read_text(path: Path | str) -> str | None:
    try:
        return Path(path).read_text(errors="replace").strip("\x00 \n\t") or None
    except OSError:
        return None


def cpu_governor(path: Path = GOVERNOR_PATH) -> str | None:
    return _read_text(path)


def _zone_temperature(zone: str) -> float | None:
    raw = _read_text(os.path.join(zone, "temp"))
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    # sysfs reports millidegrees; a few vendor kernels report whole degrees.
    celsius = value / 1000.0 if abs(value) > 200 else value
    return round(celsius, 2)


def temperature(zones_glob: str = THERMAL_GLOB) -> tuple[float | None, str | None]:
    """(°C, zone type) of the most CPU-like readable thermal zone, or (None, None)."""
    readings: list[tuple[str, float]] = []
    for zone in sorted(glob.glob(zones_glob)):
        value = _zone_temperature(zone)
        if value is None:
            continue
        zone_type = _read_text(os.path.join(zone, "type")) or os.path.basename(zone)
        readings.append((zone_type, value))
    if not readings:
        return None, None
    for preferred in PREFERRED_ZONE_TYPES:
        for zone_type, value in readings:
            if preferred in zone_type.lower():
                return value, zone_type
    zone_type, value = readings[0]
    return value, zone_type


def cpu_affinity() -> list[int] | None:
    if not hasattr(os, "sched_getaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


# The distributions each runtime comes in (the first one installed is reported).
RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "litert": ("ai-edge-litert",),
    "tflite_runtime": ("tflite-runtime",),
}


def runtime_versions() -> dict[str, str]:
    """Versions of the installed runtimes, read from package metadata (no runtime is imported)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str] = {}
    for runtime, distributions in RUNTIME_DISTRIBUTIONS.items():
        for dist in distributions:
            try:
                found[runtime] = version(dist)
                break
            except PackageNotFoundError:
                continue
    return found


def build_fingerprint() -> str | None:
    """Android's build fingerprint; elsewhere the OS and its C library (what a kernel update changes)."""
    return getprop("ro.build.fingerprint") or platform.platform() or None


@functools.cache
def _fixed_info() -> dict[str, Any]:
    """What cannot change while this process runs, read once: on a phone each `getprop` is a process
    start, and a batch of models reports the device with each result."""
    model = getprop("ro.product.model")
    if model is None:
        model = _read_text(DEVICE_TREE_MODEL) or platform.node() or None
    return {
        "model": model,
        "manufacturer": getprop("ro.product.manufacturer"),
        "abi": getprop("ro.product.cpu.abi") or platform.machine() or None,
        "android_release": getprop("ro.build.version.release"),
        "serial": getprop("ro.serialno"),
        "kernel": platform.release() or None,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "build": build_fingerprint(),
        "runtimes": runtime_versions(),
    }


def device_info() -> DeviceInfo:
    """The device now: its fixed properties, its CPU governor and its temperature."""
    temp, zone = temperature()
    info: DeviceInfo = {**_fixed_info(), "governor": cpu_governor(),  # type: ignore[typeddict-item]
                        "temperature_c": temp, "thermal_zone": zone}
    return info
