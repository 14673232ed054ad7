"""Building a table on a device: every kernel of a model's grid not yet in the table is timed as its
own tiny ONNX model, then the table is calibrated on whole models (`build_lut`)."""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from compressor.latency import KernelSpec
from profiler.cache import MeasurementCache
from profiler.devices.base import Device
from profiler.errors import DeviceWaitExpired, ProfilerError
from profiler.export import export_for_timing
from profiler.kernels import kernel_module
from profiler.lut.keys import LutError, Progress
from profiler.lut.space import DEFAULT_MAX_POINTS, ModelKernels, kernel_grid
from profiler.lut.table import LatencyTable, Statistic, load_or_new
from profiler.measure import measure, measure_many
from profiler.protocol import MeasureConfig

log = logging.getLogger(__name__)

# Kernels are timed under the same protocol as whole models (10 warm-up, 50 runs, median): a kernel
# timed with fewer runs settles less (worse under load), and the agent's start, not the runs,
# dominates the cost of timing a tiny kernel anyway.
LUT_MEASURE = MeasureConfig(threads=1)
# Separate agent runs per kernel, fastest kept (see build_lut).
DEFAULT_KERNEL_PASSES = 1
# A one-op model on one value: what a runtime costs per inference whatever the network.
OVERHEAD_PROBE = KernelSpec("add", 1, 1, h=1, w=1)


# Kernels timed by one agent run on the device (Device.measure_many): starting Python and the runtime costs
# more than timing a tiny kernel (0.26 s against ~0.03 s on the phone emulator), so a table is timed in
# batches; a batch is small enough that progress still moves every few seconds.
KERNELS_PER_RUN = 16


def export_kernel(spec: KernelSpec, work_dir: Path, precision: str = "float32") -> Path:
    """One kernel as its own ONNX model (int8: quantized as shipped models are)."""
    module, x = kernel_module(spec)
    name = f"{spec.op}_c{spec.cin}_{spec.cout}_k{spec.k}_s{spec.stride}_{spec.h}x{spec.w}_{int(spec.relu)}"
    if precision != "float32":
        name += f"_{precision}"
    return export_for_timing(module, x, Path(work_dir) / f"{name}.onnx", precision=precision, validate=False)


def time_kernel(device: Device, spec: KernelSpec, *, runtime: str, config: MeasureConfig,
                work_dir: Path, cache: MeasurementCache | None = None, precision: str = "float32") -> float:
    """Median ms of one kernel exported as its own ONNX model."""
    return measure(device, export_kernel(spec, work_dir, precision), config, runtime=runtime, cache=cache).median_ms


def time_kernels(device: Device, specs: Sequence[KernelSpec], *, runtime: str, config: MeasureConfig,
                 work_dir: Path, cache: MeasurementCache | None = None,
                 precision: str = "float32") -> list[float | ProfilerError]:
    """Median ms of each kernel, timed in one agent run; a kernel that could not be timed gets its error.
    When the run as a whole fails (the device went away mid-batch), each kernel is timed on its own, as
    before batches: one failure then costs one kernel, not the batch."""
    paths = [export_kernel(spec, work_dir, precision) for spec in specs]
    try:
        results = measure_many(device, paths, config, runtime=runtime, cache=cache)
    except DeviceWaitExpired:
        raise  # the device is gone past the job's wait for it: no kernel will be timed
    except ProfilerError as exc:
        log.warning("timing %d kernels in one run on %s failed (%s); timing them one by one", len(specs),
                    device.spec, exc)
        out: list[float | ProfilerError] = []
        for path in paths:
            try:
                out.append(measure(device, path, config, runtime=runtime, cache=cache).median_ms)
            except DeviceWaitExpired:
                raise
            except ProfilerError as one:
                out.append(one)
        return out
    return [r if isinstance(r, ProfilerError) else r.median_ms for r in results]


def build_lut(device: Device, kernels: ModelKernels | Sequence[KernelSpec], *, runtime: str = "onnxruntime",
              config: MeasureConfig | None = None, lut_dir: Path | None = None,
              table: LatencyTable | None = None, max_points: int | None = DEFAULT_MAX_POINTS, round_to: int = 8,
              a_min: float = 0.2, cache: MeasurementCache | None = None,
              calibrate_with: Sequence[tuple[Sequence[KernelSpec], Path]] = (),
              progress: Progress | None = None, work_dir: Path | None = None,
              passes: int = DEFAULT_KERNEL_PASSES, family: str | None = None,
              statistic: Statistic = "median", precision: str = "float32") -> LatencyTable:
    """Time every kernel of the grid not yet in the table (device's table under `lut_dir` in `precision`,
    or `table`, in its own precision: an int8 table's kernels are timed as int8 ONNX files), then
    calibrate on `calibrate_with` (kernel list, whole model exported in that precision: `calibration_set`)
    pairs. Saves the table when it has a path. A kernel that fails to time is skipped (interpolation
    covers it).

    With `passes` > 1 each kernel is timed in that many separate agent runs (the grid in alternating
    order) and its fastest median kept. On the shared 2-core VM two 2-pass builds agreed no better
    than two 1-pass builds (kernel timings there follow the machine's load over minutes), hence 1."""
    config = config or LUT_MEASURE
    mk = kernels if isinstance(kernels, ModelKernels) else ModelKernels.assumed(kernels, a_min=a_min,
                                                                                round_to=round_to)
    if table is None:
        from profiler.paths import default_lut_dir

        table = load_or_new(Path(lut_dir or default_lut_dir()), device.id, runtime, config.threads,
                            legacy_id=device.legacy_id, precision=precision)
    precision = table.precision
    grid = [k for k in kernel_grid(mk, max_points=max_points) if not table.has(k)]
    passes = max(1, int(passes))
    total = len(grid) * passes + len(calibrate_with)
    start = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="amc-lut-", dir=work_dir) as tmp:
        if grid and "overhead_ms" not in table.meta:
            try:
                table.meta["overhead_ms"] = time_kernel(device, OVERHEAD_PROBE, runtime=runtime, config=config,
                                                        work_dir=Path(tmp), cache=cache, precision=precision)
            except ProfilerError as exc:
                log.warning("could not time the runtime overhead on %s: %s", device.spec, exc)
        best: dict[int, float] = {}
        done = 0
        for p in range(passes):
            order = list(enumerate(grid)) if p % 2 == 0 else list(enumerate(grid))[::-1]
            for start_at in range(0, len(order), KERNELS_PER_RUN):
                batch = order[start_at:start_at + KERNELS_PER_RUN]
                if progress:
                    spec = batch[0][1]
                    more = f" and {len(batch) - 1} more" if len(batch) > 1 else ""
                    progress(done, total, f"{spec.op} {spec.cin}->{spec.cout} k{spec.k} s{spec.stride} "
                                          f"{spec.h}x{spec.w}{more}" + (f" (pass {p + 1})" if passes > 1 else ""))
                # Later passes bypass the cache: they exist to get an independent timing.
                timed = time_kernels(device, [spec for _, spec in batch], runtime=runtime, config=config,
                                     work_dir=Path(tmp), cache=cache if p == 0 else None, precision=precision)
                for (i, spec), ms in zip(batch, timed, strict=True):
                    done += 1
                    if isinstance(ms, ProfilerError):
                        failures.append(f"{spec}: {ms}")
                        log.warning("could not time kernel %s: %s", spec, ms)
                        continue
                    best[i] = min(ms, best.get(i, math.inf))
                    table.add_entry(spec, best[i])
                if len(failures) >= 3 and not best:
                    raise LutError(f"the first kernels all failed on {device.spec}: {failures[-1]}")
    if not len(table):
        raise LutError(f"no kernel could be timed on {device.spec}: {failures[:1]}")
    for j, (ks, path) in enumerate(calibrate_with):
        if progress:
            progress(len(grid) * passes + j, total, f"calibrating on {Path(path).name}")
        # Exactly as the oracle measures candidates, so a calibration point and a later measurement
        # of the same model agree (and share a cache entry).
        whole = MeasureConfig(threads=config.threads, cpu_mask=config.cpu_mask)
        result = measure(device, path, whole, runtime=runtime, cache=cache)
        table.observe(ks, result.min_ms if statistic == "min" else result.median_ms, family)
    table.meta.update({"updated": time.time(), "round_to": round_to, "a_min": a_min, "max_points": max_points,
                       "kernel_runs": config.runs, "kernel_passes": passes, "device_spec": device.spec,
                       "build_s": round(time.monotonic() - start, 2)})
    if progress:
        progress(total, total, f"{len(table)} kernels")
    if table.path is not None:
        table.save()
    return table
