"""The latency oracle the search asks (compressor.latency.LatencyOracle), backed by a device's lookup
table for predictions and by the device pool for real measurements; every real measurement refines
the table's calibration."""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from compressor.latency import KernelSpec, LatencyOracle
from profiler.cache import MeasurementCache
from profiler.devices import Device, open_device, parse_device_spec
from profiler.devices.identity import IdentityBook
from profiler.errors import DeviceUnavailable
from profiler.export import export_for_timing
from profiler.kernels import search_kernels
from profiler.lut.build import build_lut
from profiler.lut.keys import Progress, model_family, shape_key, structure_key
from profiler.lut.space import (
    DEFAULT_CALIBRATION_VARIANTS,
    DEFAULT_MAX_POINTS,
    ModelKernels,
    calibration_set,
    model_kernels,
)
from profiler.lut.table import LatencyTable, Statistic, check_statistic, load_or_new
from profiler.paths import default_cache_path, default_lut_dir
from profiler.pool import DevicePool
from profiler.protocol import MeasureConfig, check_precision, check_runtime
from profiler.waiting import DeviceWait, PatientDevice

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _BuildArgs:
    """How the oracle times kernel shapes it meets for the first time."""

    config: MeasureConfig
    cache: MeasurementCache | None
    round_to: int
    a_min: float
    max_points: int | None
    progress: Progress | None


def _oracle_name(device_spec: str, runtime: str, precision: str) -> str:
    return f"lut:{device_spec}:{runtime}" + ("" if precision == "float32" else f":{precision}")


class LutOracle:
    """`predict_ms` from the lookup table (fast, used inside the search loop); `measure_ms` on a real
    device through the pool (None when no device answers before the deadline), then `observe`. Both in
    the table's precision: an int8 table's oracle predicts and times every candidate as int8 ONNX."""

    def __init__(self, table: LatencyTable, pool: DevicePool | None, *, runtime: str = "onnxruntime",
                 config: MeasureConfig | None = None, deadline_s: float | None = 180.0,
                 name: str | None = None, save: bool = True, builder: Device | None = None,
                 kernel_config: MeasureConfig | None = None, cache: MeasurementCache | None = None,
                 round_to: int = 8, a_min: float = 0.2, max_points: int | None = DEFAULT_MAX_POINTS,
                 progress: Progress | None = None, family: str | None = None, statistic: Statistic = "median"):
        self.table = table
        # Which number of a measurement stands for the model: the median (a dedicated phone), or the
        # fastest run ("min": a shared machine, where other processes only ever slow a run down).
        self.statistic = check_statistic(statistic)
        # The model this oracle serves (`model_family`): every variant's prediction and measurement
        # shares that model's calibration, whatever blocks it removed.
        self.family = family
        self.pool = pool
        self.runtime = check_runtime(runtime)
        self.config = config or MeasureConfig(threads=table.threads)
        self.deadline_s = deadline_s
        self.precision = check_precision(table.precision, self.runtime)
        self.name = name or _oracle_name(table.meta.get("device_spec", table.device_id), runtime, self.precision)
        self.save = save
        self.measurements = 0
        # With a builder device, kernel shapes the table has never seen are timed on first use.
        self.builder = builder
        self._build = _BuildArgs(config=kernel_config or MeasureConfig(threads=table.threads), cache=cache,
                                 round_to=round_to, a_min=a_min, max_points=max_points, progress=progress)
        self._lock = threading.Lock()

    def predict_ms(self, kernels: Sequence[KernelSpec]) -> float:
        if self.builder is not None:
            missing = [k for k in kernels if shape_key(k) not in self.table.entries]
            if missing:
                self._complete(self.builder, missing)
        return self.table.predict_ms(kernels, self.family)

    def _complete(self, builder: Device, missing: list[KernelSpec]) -> None:
        with self._lock:
            missing = [k for k in missing if shape_key(k) not in self.table.entries]
            if not missing:
                return
            log.info("timing %d kernel shape(s) %s has not seen", len({shape_key(k) for k in missing}),
                     self.table.device_id)
            a = self._build
            # Which widths the search may give these kernels is unknown here: every count the
            # rounding allows up to the width seen (wider ones extrapolate).
            mk = ModelKernels.assumed(missing, a_min=a.a_min, round_to=a.round_to, fixed_ends=False)
            build_lut(builder, mk, runtime=self.runtime, config=a.config, table=self.table, max_points=a.max_points,
                      round_to=a.round_to, a_min=a.a_min, cache=a.cache, progress=a.progress)

    def measure_ms(self, model: torch.nn.Module, example_input: torch.Tensor, *, fresh: bool = False) -> float | None:
        if self.pool is None:
            return None
        with tempfile.TemporaryDirectory(prefix="amc-measure-") as tmp:
            path = export_for_timing(model, example_input, Path(tmp) / "candidate.onnx", precision=self.precision)
            result = self.pool.measure(path, self.config, runtime=self.runtime, deadline_s=self.deadline_s,
                                       fresh=fresh)
        if result is None:
            return None
        self.measurements += 1
        ms = result.min_ms if self.statistic == "min" else result.median_ms
        self.observe(search_kernels(model, example_input), ms)
        return ms

    def measure_file_ms(self, path: Path, *, fresh: bool = False) -> float | None:
        """A model file timed as it is (an int8 ONNX or TFLite file); the float table learns nothing from it.
        A `.tflite` file is run with LiteRT when the oracle's own runtime is ONNX Runtime."""
        if self.pool is None:
            return None
        runtime = self.runtime
        if Path(path).suffix == ".onnx" and runtime != "onnxruntime":
            log.info("%s is an ONNX file; this oracle times %s models, so it is not timed", path, runtime)
            return None
        if Path(path).suffix == ".tflite" and runtime == "onnxruntime":
            runtime = "litert"
        result = self.pool.measure(Path(path), self.config, runtime=runtime, deadline_s=self.deadline_s,
                                   fresh=fresh)
        if result is None:
            return None
        self.measurements += 1
        return result.min_ms if self.statistic == "min" else result.median_ms

    def observe(self, kernels: Sequence[KernelSpec], measured_ms: float) -> None:
        self.table.observe(kernels, measured_ms, self.family)
        if self.save and self.table.path is not None:
            self.table.save()


def device_table(device: Device, *, lut_dir: Path | None = None, runtime: str = "onnxruntime",
                 threads: int = 1, precision: str = "float32") -> LatencyTable:
    """The lookup table of what `device` is (its identity), in `precision`, loaded or new. A device that does not answer
    gets the table of the device last identified at its address, for predictions (its measurements
    wait until it answers); DeviceUnavailable when none was ever identified there."""
    lut_dir = Path(lut_dir or default_lut_dir())
    book = IdentityBook(lut_dir / "identities.json")
    try:
        identity = device.identity()
    except DeviceUnavailable as exc:
        last = book.recall(device.spec)
        if last is None:
            raise
        log.warning("%s does not answer (%s); predicting with the table of %s, last seen at this address",
                    device.spec, exc.reason, last.describe())
        identity = last
    else:
        book.remember(device.spec, identity)
    table = load_or_new(lut_dir, identity.key, runtime, threads, legacy_id=device.legacy_id,
                        precision=check_precision(precision, runtime))
    table.meta["identity"] = {k: v for k, v in identity.to_dict().items() if k != "serial"}
    serials = table.meta.setdefault("serials", [])
    if identity.serial and identity.serial not in serials:
        serials.append(identity.serial)  # which units of this kind the table has served
    return table


def make_oracle(device_spec: str, *, runtime: str = "onnxruntime", threads: int = 1,
                lut_dir: Path | None = None, model: torch.nn.Module | None = None,
                example_input: torch.Tensor | None = None, round_to: int = 8, a_min: float = 0.2,
                prune_residual: bool = False, prune_blocks: bool = False, max_points: int | None = DEFAULT_MAX_POINTS,
                calibration_variants: int = DEFAULT_CALIBRATION_VARIANTS, progress: Progress | None = None,
                cache: MeasurementCache | None = None, pool: DevicePool | None = None,
                kernel_config: MeasureConfig | None = None, device_options: dict | None = None,
                statistic: Statistic = "median", device_wait_s: float | None = None,
                on_wait: Callable[[DeviceWait], None] | None = None,
                should_stop: Callable[[], bool] | None = None, precision: str = "float32") -> LatencyOracle:
    """Turn `--device SPEC` into an oracle. With `model` and `example_input`, the device's table is
    completed for the kernels that model can run as under the search's pruning settings (`round_to`,
    `a_min`, `prune_residual`, `prune_blocks`; only kernels never timed before) and calibrated on the
    whole model, once; later calls reuse the stored table. `statistic` is the number of a whole-model
    measurement the oracle uses (median, or min on a shared machine). With `device_wait_s`, a device that
    stops answering is waited for that long (`on_wait` hears of it; profiler.waiting) before
    DeviceWaitExpired; without it, DeviceUnavailable at once; `should_stop` (a job's cancel flag) cuts a
    wait short with DeviceWaitStopped. `precision` int8: the table (its own, beside the float one) times
    int8 kernels and the oracle int8 candidates. Raises ConfigError for a malformed spec."""
    parse_device_spec(device_spec)
    check_runtime(runtime)
    check_precision(precision, runtime)
    cache = cache if cache is not None else MeasurementCache(default_cache_path())
    device = open_device(device_spec, **(device_options or {}))
    if device_wait_s is not None:
        device = PatientDevice(device, wait_s=device_wait_s, on_wait=on_wait, should_stop=should_stop)
    if pool is None:
        pool = DevicePool([device], cache=cache)
    table = device_table(device, lut_dir=lut_dir, runtime=runtime, threads=threads, precision=precision)
    table.meta.setdefault("device_spec", device_spec)
    config = kernel_config or MeasureConfig(threads=threads)
    family = None
    if model is not None:
        if example_input is None:
            raise ValueError("make_oracle(model=...) needs example_input too")
        mk = model_kernels(model, example_input, round_to=round_to, a_min=a_min, prune_residual=prune_residual,
                           prune_blocks=prune_blocks)
        calibrate = []
        tmp = None
        # A table from before family calibrations, or one built without removable blocks, is
        # calibrated (once) on variants of this model as the search will prune it.
        family = model_family(mk.kernels)
        if structure_key(mk.kernels) not in table.calibrations or family not in table.calibrations:
            tmp = tempfile.TemporaryDirectory(prefix="amc-oracle-")
            calibrate = calibration_set(model, example_input, Path(tmp.name), variants=calibration_variants,
                                        round_to=round_to, a_min=a_min, prune_residual=prune_residual,
                                        prune_blocks=prune_blocks, precision=precision)
        try:
            build_lut(device, mk, runtime=runtime, config=config, table=table, max_points=max_points,
                      round_to=round_to, a_min=a_min, cache=cache, calibrate_with=calibrate, progress=progress,
                      family=family, statistic=statistic)
        finally:
            if tmp is not None:
                tmp.cleanup()
    return LutOracle(table, pool, runtime=runtime, config=MeasureConfig(threads=threads),
                     name=_oracle_name(device_spec, runtime, precision), builder=device, kernel_config=config, cache=cache,
                     round_to=round_to, a_min=a_min, max_points=max_points, progress=progress, family=family,
                     statistic=statistic)
