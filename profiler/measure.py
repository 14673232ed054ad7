"""Measure a model on a device under the protocol, through the cache: a (device, runtime, threads,
CPU mask, model sha256) that was measured before is answered from SQLite without touching the device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from profiler.cache import MeasurementCache
from profiler.devices.base import Device
from profiler.errors import MeasurementError
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


def measure_many(device: Device, model_paths: Sequence[Path | str], config: MeasureConfig | None = None, *,
                 runtime: str = "onnxruntime", cache: MeasurementCache | None = None,
                 timeout_s: float = 300.0) -> list[Measurement | MeasurementError]:
    """Several models, in order: those the cache knows from it, the others timed in one agent run on the
    device (`Device.measure_many`); a model that could not be timed gets its MeasurementError in its place."""
    config = config or MeasureConfig()
    check_runtime(runtime)
    shas = [sha256_file(Path(p)) for p in model_paths]
    out: list[Measurement | MeasurementError | None] = [None] * len(shas)
    if cache is not None:
        for i, sha in enumerate(shas):
            out[i] = cache.get(device_id=device.id, runtime=runtime, config=config, sha256=sha)
    todo = [i for i, hit in enumerate(out) if hit is None]
    if todo:
        for i, result in zip(todo, device.measure_many([model_paths[i] for i in todo], config, runtime=runtime,
                                                       timeout_s=timeout_s), strict=True):
            out[i] = result
            if cache is not None and isinstance(result, Measurement):
                cache.put(result, config)
    return [r for r in out if r is not None]
