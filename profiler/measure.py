"""Measure a model on a device under the protocol, through the cache: a (device, runtime, threads,
CPU mask, model sha256) that was measured before is answered from SQLite without touching the device."""

from __future__ import annotations

import logging
from pathlib import Path

from profiler.cache import MeasurementCache
from profiler.devices.base import Device
from profiler.protocol import MeasureConfig, Measurement, check_runtime, sha256_file

log = logging.getLogger(__name__)


def measure(device: Device, model_path: Path | str, config: MeasureConfig | None = None, *,
            runtime: str = "onnxruntime", cache: MeasurementCache | None = None,
            timeout_s: float = 300.0) -> Measurement:
    """Median/p90 latency of `model_path` on `device`; cached results come back with `cached=True`."""
    config = config or MeasureConfig()
    check_runtime(runtime)
    sha = sha256_file(Path(model_path))
    if cache is not None:
        hit = cache.get(device_id=device.id, runtime=runtime, config=config, sha256=sha)
        if hit is not None:
            log.debug("cache hit for %s on %s", sha[:12], device.id)
            return hit
    result = device.measure(model_path, config, runtime=runtime, timeout_s=timeout_s, sha256=sha)
    if cache is not None:
        cache.put(result, config)
    return result
