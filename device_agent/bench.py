"""Time a model on this device: load it, warm up, time `runs` inferences, report robust statistics."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import deviceinfo
from .runtimes import get_runner
from .schema import (
    SCHEMA_VERSION,
    AffinityError,
    AgentError,
    BatchResult,
    BenchResult,
    ErrorResult,
    ModelNotFound,
    RuntimeUnavailable,
    UsageError,
    error_result,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig:
    model: Path
    runtime: str = "onnxruntime"
    threads: int = 1
    warmup: int = 10
    runs: int = 50
    cpu_mask: str | None = None
    cooldown_s: float = 0.0
    seed: int = 0
    keep_samples: bool = False

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")
        if self.warmup < 0:
            raise UsageError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.runs < 1:
            raise UsageError(f"--runs must be at least 1, got {self.runs}")
        if self.cooldown_s < 0:
            raise UsageError(f"--cooldown must be 0 or more seconds, got {self.cooldown_s}")


def parse_cpu_mask(mask: str) -> set[int]:
    """'0xf0' or 'f0' -> {4, 5, 6, 7}."""
    text = mask.strip().lower()
    text = text[2:] if text.startswith("0x") else text
    try:
        value = int(text, 16)
    except ValueError:
        raise UsageError(f"--cpu-mask {mask!r} is not a hexadecimal CPU mask such as 0xf0") from None
    cpus = {bit for bit in range(value.bit_length()) if value >> bit & 1}
    if not cpus:
        raise UsageError(f"--cpu-mask {mask!r} selects no CPU")
    return cpus


def pin_cpus(mask: str) -> list[int]:
    cpus = parse_cpu_mask(mask)
    if not hasattr(os, "sched_setaffinity"):
        raise AffinityError("--cpu-mask needs os.sched_setaffinity, which this platform lacks (Linux only)")
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as exc:
        raise AffinityError(
            f"cannot pin to CPUs {sorted(cpus)} (mask {mask}): {exc}; this device has {os.cpu_count()} CPUs"
        ) from exc
    return sorted(os.sched_getaffinity(0))


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes); raises ModelNotFound when the file is missing or unreadable."""
    if not path.exists():
        raise ModelNotFound(f"model file {path} does not exist; push it to the device first")
    if not path.is_file():
        raise ModelNotFound(f"model path {path} is not a regular file")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelNotFound(f"cannot read model file {path}: {exc}") from exc
    return digest.hexdigest(), path.stat().st_size


def summarize(samples_ms: list[float]) -> dict[str, float]:
    values = np.asarray(samples_ms, dtype=np.float64)
    return {
        "median_ms": float(np.median(values)),
        "p90_ms": float(np.percentile(values, 90)),
        "mean_ms": float(values.mean()),
        "std_ms": float(values.std()),
        "min_ms": float(values.min()),
        "max_ms": float(values.max()),
    }


def run_bench(config: BenchConfig) -> BenchResult:
    runner_cls = get_runner(config.runtime)
    runtime_version = runner_cls.version()  # fails early when the runtime is not installed
    sha256, size = file_digest(config.model)
    affinity = pin_cpus(config.cpu_mask) if config.cpu_mask else deviceinfo.cpu_affinity()

    runner = runner_cls(config.model, threads=config.threads)
    start = time.perf_counter()
    runner.load()
    load_ms = (time.perf_counter() - start) * 1000.0
    runner.prepare(np.random.default_rng(config.seed))
    logger.debug("loaded %s with %s in %.1f ms", config.model, config.runtime, load_ms)

    if config.cooldown_s > 0:
        time.sleep(config.cooldown_s)
    temp_before, _ = deviceinfo.temperature()
    for _ in range(config.warmup):
        runner.run()
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(config.runs):
        t0 = clock()
        runner.run()
        samples.append((clock() - t0) / 1e6)
    temp_after, _ = deviceinfo.temperature()

    result: BenchResult = {
        "schema": SCHEMA_VERSION,
        "kind": "bench",
        "ok": True,
        "runtime": config.runtime,
        "runtime_version": runtime_version,
        "threads": config.threads,
        "warmup": config.warmup,
        "runs": config.runs,
        "cooldown_s": config.cooldown_s,
        "cpu_affinity": affinity,
        **summarize(samples),  # type: ignore[typeddict-item]
        "load_ms": load_ms,
        "model_path": str(config.model),
        "model_sha256": sha256,
        "model_size": size,
        "inputs": runner.inputs(),
        "device": deviceinfo.device_info(),
        "temperature_before_c": temp_before,
        "temperature_after_c": temp_after,
    }
    if config.keep_samples:
        result["samples_ms"] = samples
    return result


# Errors that are the device's or the command's, not one model's: every model of a batch would fail alike.
_BATCH_FATAL = (UsageError, RuntimeUnavailable, AffinityError)


def run_batch(configs: list[BenchConfig]) -> BatchResult:
    """Time each model in turn in this process. A model that cannot be timed (missing, corrupt, failing)
    gets its error in its place and the next one is timed; an error every model would share (the runtime
    missing, the CPU mask refused) is raised for the whole batch."""
    results: list[BenchResult | ErrorResult] = []
    for config in configs:
        try:
            results.append(run_bench(config))
        except _BATCH_FATAL:
            raise
        except AgentError as exc:
            results.append(error_result(exc))
        except Exception as exc:  # one model's failure, still reported in its place
            logger.debug("timing %s failed", config.model, exc_info=True)
            results.append(error_result(exc))
    return {"schema": SCHEMA_VERSION, "kind": "batch", "ok": True, "results": results}
