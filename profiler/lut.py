"""Per-device latency lookup tables (nn-Meter style): every fused kernel the search can produce is
timed once as a tiny single-kernel model; a network's latency is predicted as the sum of its kernels'
latencies (interpolated linearly between measured channel counts) passed through a calibration
`measured ≈ a·sum + b`, fitted by least squares on real whole-model measurements and refined with
every measurement made afterwards (`observe`).

One table file per (device, runtime, threads) under the LUT folder, shared by every model measured
on that device; calibrations are kept per network structure (the kernel sequence without channel
counts), because the fixed overhead depends on how many kernels a network has, and per family (the
set of kernel shapes, however many of each): a structure seen too few times — a variant with some
residual blocks removed, say — is predicted with its family's calibration, which every measurement
of the family refines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import tempfile
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from compressor.fileio import atomic_write
from compressor.latency import KernelSpec
from profiler.cache import MeasurementCache
from profiler.devices.base import Device
from profiler.errors import ProfilerError
from profiler.export import export_onnx
from profiler.kernels import kernel_macs, kernel_module, search_kernels
from profiler.measure import measure
from profiler.protocol import MeasureConfig

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressor.kernel_space import KernelSpace

log = logging.getLogger(__name__)

LUT_VERSION = 1
# Progress callback: (done, total, message).
Progress = Callable[[int, int, str], None]
# Kernels are timed under the same protocol as whole models (10 warm-up, 50 runs, median): a kernel
# timed with fewer runs settles less (worse under load), and the agent's start, not the runs,
# dominates the cost of timing a tiny kernel anyway.
LUT_MEASURE = MeasureConfig(threads=1)
MAX_CALIBRATION_POINTS = 200
# Channel counts timed per kernel axis (the rest interpolated). Measured on MobileNet-V2 (CIFAR):
# 3 points leave interpolation errors the calibration cannot remove; 8 points cost ~340 kernels.
DEFAULT_MAX_POINTS = 8
# Pruned variants measured whole (besides the full model) when a table is calibrated for a model:
# enough points for a slope per op group and for leaving out a measurement taken during a burst.
DEFAULT_CALIBRATION_VARIANTS = 10
# Separate agent runs per kernel, fastest kept (see build_lut).
DEFAULT_KERNEL_PASSES = 1
# How many points' worth of pull towards the common slope each op group's own slope gets.
GROUP_PRIOR = 1.0
# A one-op model on one value: what a runtime costs per inference whatever the network.
OVERHEAD_PROBE = KernelSpec("add", 1, 1, h=1, w=1)


class LutError(ProfilerError):
    """A lookup table cannot answer (empty, wrong file, unknown kernel op)."""


def shape_key(spec: KernelSpec) -> str:
    """Everything about a kernel except its channel counts (and the fused activation, which costs
    next to nothing and which kernel lists do not always agree on)."""
    return f"{spec.op}|k{spec.k}|s{spec.stride}|{spec.h}x{spec.w}"


def structure_key(kernels: Sequence[KernelSpec]) -> str:
    """A network's structure without channel counts: pruned variants of one model share it."""
    text = ";".join(shape_key(k) for k in kernels)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def family_key(kernels: Sequence[KernelSpec]) -> str:
    """Networks made of the same kinds of kernel, in any number: a model, its variants with residual
    blocks removed, its deeper or shallower siblings. What a calibration corrects (how the runtime's
    whole-network time differs from the sum of its kernels) depends on the kinds of kernel far more
    than on how many there are of each. Used when the caller does not say which model a kernel list
    is a variant of (`model_family`)."""
    text = ";".join(sorted({shape_key(k) for k in kernels}))
    return "family:" + hashlib.sha1(text.encode()).hexdigest()[:16]


def model_family(full_kernels: Sequence[KernelSpec]) -> str:
    """The family of every pruned variant of one model (blocks removed or not): its full structure."""
    return "family:" + structure_key(full_kernels)


# Which number of a whole-model measurement stands for it: the median of its runs, or on a shared
# machine (where other processes only ever slow a run down) the fastest.
Statistic = Literal["median", "min"]
STATISTICS: tuple[str, ...] = ("median", "min")


def check_statistic(statistic: str) -> Statistic:
    if statistic not in STATISTICS:
        raise LutError(f"unknown latency statistic {statistic!r}: use one of {', '.join(STATISTICS)}")
    return statistic  # type: ignore[return-value]


# A structure's own calibration is used once it has this many measurements (or as many as its
# family's); before, its family's.
MIN_OWN_POINTS = 3


def _channels(spec: KernelSpec) -> tuple[int, int]:
    # Depthwise convs, adds and pools have one channel count.
    if spec.op in ("dwconv", "add", "pool"):
        return spec.cout if spec.op == "dwconv" else spec.cin, 0
    return spec.cin, spec.cout


def _interp1(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear through (xs, ys) (xs ascending), extrapolating linearly from the end segments."""
    if len(xs) == 1:
        return ys[0]
    i = bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return ys[i]
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def op_group(spec: KernelSpec) -> str:
    """Which calibration slope a kernel shares: its op and kernel size (`conv1`, `conv3`, `dwconv3`,
    `linear`, ...). Isolated timings of 1×1 convs, 3×3 convs and depthwise convs drift from their
    in-network cost by different factors (data reuse, memory-bound vs compute-bound)."""
    return f"{spec.op}{spec.k}" if spec.op in ("conv", "dwconv") else spec.op


@dataclass
class Calibration:
    """`measured ≈ a·sum + b`; least squares on (sum, measured) points, pulled gently towards a = 1 so
    that one point or nearly equal sums cannot produce a wild slope. Points far off the fit (a
    measurement taken during a burst of load) are left out of it.

    With per-op-group sums recorded for its points (`parts`) and enough points, a slope per op group
    (`slopes`, `measured ≈ Σ_g slopes[g]·sum_g + intercept`) is fitted too, each pulled towards the
    common slope `a` so that a group the points barely vary in keeps the common slope."""

    a: float = 1.0
    b: float = 0.0
    points: list[tuple[float, float]] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)
    slopes: dict[str, float] = field(default_factory=dict)
    intercept: float = 0.0
    outliers: int = 0

    def apply(self, raw_sum: float, parts: dict[str, float] | None = None) -> float:
        if self.slopes and parts is not None and set(parts) <= set(self.slopes):
            return max(sum(self.slopes[g] * v for g, v in parts.items()) + self.intercept, 0.0)
        return max(self.a * raw_sum + self.b, 0.0)

    def add(self, raw_sum: float, measured: float, parts: dict[str, float] | None = None) -> None:
        if len(self.parts) != len(self.points):  # points from before parts were recorded
            self.parts = []
        if parts is not None and len(self.parts) == len(self.points):
            self.parts.append({g: float(v) for g, v in parts.items()})
        else:
            self.parts = []
        self.points.append((float(raw_sum), float(measured)))
        del self.points[:-MAX_CALIBRATION_POINTS]
        del self.parts[:-MAX_CALIBRATION_POINTS]
        self.fit()

    def fit(self) -> None:
        self.slopes, self.intercept, self.outliers = {}, 0.0, 0
        if not self.points:
            self.a, self.b = 1.0, 0.0
            return
        s = np.array([p[0] for p in self.points])
        m = np.array([p[1] for p in self.points])
        keep = np.ones(len(s), dtype=bool)
        self.a, self.b = self._fit_global(s, m)
        with_parts = len(self.parts) == len(self.points)
        if with_parts:
            self._fit_groups(keep, m)
        if len(s) >= 6:
            # One robust pass: a point more than 3 robust sigmas (and 2%) off the fit is noise.
            fitted = [self.apply(s[i], self.parts[i] if with_parts else None) for i in range(len(s))]
            resid = m - np.array(fitted)
            mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
            keep = np.abs(resid - np.median(resid)) <= max(3 * mad, 0.02 * float(np.median(m)))
            if keep.sum() >= 3 and not keep.all():
                self.outliers = int((~keep).sum())
                self.a, self.b = self._fit_global(s[keep], m[keep])
                if with_parts:
                    self._fit_groups(keep, m)

    @staticmethod
    def _fit_global(s: np.ndarray, m: np.ndarray) -> tuple[float, float]:
        # The prior row weighs like a point at a tenth of the typical sum: it decides the slope when
        # the sums barely differ (one model's pruned variants early in a search) and fades otherwise.
        prior = 0.1 * (float(np.sqrt(np.mean(s * s))) or 1.0)
        rows = np.vstack([np.column_stack([s, np.ones_like(s)]), [[prior, 0.0]]])
        target = np.concatenate([m, [prior]])
        (a, b), *_ = np.linalg.lstsq(rows, target, rcond=None)
        if a <= 0:  # more kernels can never make a network faster: fall back to a pure offset
            a, b = 1.0, float(np.mean(m - s))
        return float(a), float(b)

    def _fit_groups(self, keep: np.ndarray, m: np.ndarray) -> None:
        self.slopes, self.intercept = {}, 0.0
        groups = sorted({g for p in self.parts for g in p})
        x = np.array([[p.get(g, 0.0) for g in groups] for p in self.parts])[keep]
        y = m[keep]
        # A group (nearly) constant across the points (the stem conv, a classifier) says nothing about
        # its own slope: it keeps the common one and the intercept absorbs the rest.
        spread = np.std(x, axis=0)
        free = spread > 0.02 * np.sqrt(np.mean(x * x, axis=0))
        if free.sum() < 2 or len(y) < free.sum() + 3:
            return
        y = y - x[:, ~free] @ np.full((~free).sum(), self.a)
        xf = x[:, free]
        # Only a group's variation across the points says anything about its slope: the ridge towards
        # the common slope weighs like GROUP_PRIOR points' worth of that variation.
        scale = spread[free]
        prior = np.zeros((len(scale), len(scale) + 1))
        prior[np.arange(len(scale)), np.arange(len(scale))] = GROUP_PRIOR * scale
        rows = np.vstack([np.column_stack([xf, np.ones(len(y))]), prior])
        target = np.concatenate([y, GROUP_PRIOR * scale * self.a])
        coef, *_ = np.linalg.lstsq(rows, target, rcond=None)
        if np.any(coef[:-1] <= 0):  # a group that makes a network faster: not a model to trust
            return
        fitted = iter(coef[:-1])
        self.slopes = {g: (float(next(fitted)) if f else self.a) for g, f in zip(groups, free)}
        self.intercept = float(coef[-1])

    def describe(self) -> str:
        """One line for reports: the slopes, offset and number of points."""
        text = f"a={self.a:.3f}, b={self.b:.4f} ms"
        if self.slopes:
            text += "; per op group " + ", ".join(f"{g}: {v:.3f}" for g, v in self.slopes.items())
            text += f" + {self.intercept:.4f} ms"
        return text + f" ({len(self.points)} points, {self.outliers} left out as outliers)"


@dataclass
class LatencyTable:
    """Kernel latencies (ms) of one device/runtime/thread count, and calibrations per structure."""

    device_id: str
    runtime: str
    threads: int
    entries: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def __post_init__(self) -> None:
        self._lock = threading.RLock()

    # -- contents ---------------------------------------------------------------------------------
    def add_entry(self, spec: KernelSpec, ms: float) -> None:
        with self._lock:
            self.entries.setdefault(shape_key(spec), {})[_channels(spec)] = float(ms)

    def has(self, spec: KernelSpec) -> bool:
        return _channels(spec) in self.entries.get(shape_key(spec), {})

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def kernel_ms(self, spec: KernelSpec) -> float:
        """One kernel's latency: exact, interpolated between measured channel counts, or (for a shape
        never measured) scaled by MACs from kernels of the same op."""
        points = self.entries.get(shape_key(spec))
        if points:
            return max(self._interpolate(points, *_channels(spec)), 0.0)
        return self._by_macs(spec)

    @staticmethod
    def _interpolate(points: dict[tuple[int, int], float], cin: int, cout: int) -> float:
        rows: dict[int, list[tuple[int, float]]] = {}
        for (ci, co), ms in points.items():
            rows.setdefault(ci, []).append((co, ms))
        cins = sorted(rows)

        def along_cout(ci: int) -> float:
            row = sorted(rows[ci])
            return _interp1([c for c, _ in row], [v for _, v in row], cout)

        return _interp1(cins, [along_cout(ci) for ci in cins], cin)

    def _by_macs(self, spec: KernelSpec) -> float:
        same = [(k, v) for key, pts in self.entries.items() if key.startswith(spec.op + "|")
                for k, v in self._specs_of(key, pts)]
        pool = same or [(k, v) for key, pts in self.entries.items() for k, v in self._specs_of(key, pts)]
        if not pool:
            raise LutError(f"the lookup table for {self.device_id} is empty; run `amc lut build` first")
        x = np.array([kernel_macs(k) for k, _ in pool], dtype=float)
        y = np.array([v for _, v in pool], dtype=float)
        if len(pool) >= 2 and np.ptp(x) > 0:
            slope, icept = np.polyfit(x, y, 1)
            est = float(slope * kernel_macs(spec) + icept)
        else:
            est = float(np.mean(y))
        log.debug("kernel %s not in the table; estimated %.4f ms from MACs", spec, est)
        return max(est, float(np.min(y)) * 0.5)

    @staticmethod
    def _specs_of(key: str, pts: dict[tuple[int, int], float]):
        m = re.match(r"(\w+)\|k(-?\d+)\|s(\d+)\|(\d+)x(\d+)$", key)
        if not m:
            return []
        op, k, s, h, w = m.group(1), int(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5))
        out = []
        for (ci, co), v in pts.items():
            cout = co if op in ("conv", "linear") else ci
            out.append((KernelSpec(op, ci, cout, k=k, stride=s, h=h, w=w), v))  # type: ignore[arg-type]
        return out

    # -- prediction and calibration ---------------------------------------------------------------
    @property
    def overhead_ms(self) -> float:
        """The runtime's fixed cost per inference (a one-op model), paid once per network but
        contained in every single-kernel measurement."""
        return float(self.meta.get("overhead_ms") or 0.0)

    def raw_sum(self, kernels: Sequence[KernelSpec]) -> float:
        """Sum of kernel latencies, with the per-inference overhead counted once, not per kernel."""
        total = float(sum(self.kernel_ms(k) for k in kernels))
        return max(total - max(len(kernels) - 1, 0) * self.overhead_ms, 0.0)

    def group_sums(self, kernels: Sequence[KernelSpec]) -> dict[str, float]:
        """Kernel latencies summed per op group (`op_group`), each kernel without the per-inference
        overhead (paid once per network; the calibration's intercept holds it)."""
        out: dict[str, float] = {}
        for k in kernels:
            g = op_group(k)
            out[g] = out.get(g, 0.0) + self.kernel_ms(k) - self.overhead_ms
        return out

    def calibration(self, kernels: Sequence[KernelSpec], family: str | None = None) -> Calibration:
        """The structure's own calibration once it has enough points, else its family's: `family`
        (e.g. `model_family` of the model these kernels are a variant of), or `family_key(kernels)`."""
        own = self.calibrations.get(structure_key(kernels))
        mine = len(own.points) if own is not None else 0
        family_cal = self.calibrations.get(family or family_key(kernels))
        if mine < MIN_OWN_POINTS and family_cal is not None and len(family_cal.points) > mine:
            return family_cal  # better informed than the structure's own few points
        return own or Calibration()

    def predict_ms(self, kernels: Sequence[KernelSpec], family: str | None = None) -> float:
        """Predicted whole-network latency (ms)."""
        with self._lock:
            cal = self.calibration(kernels, family)
            parts = self.group_sums(kernels) if cal.slopes else None
            return cal.apply(self.raw_sum(kernels), parts)

    def observe(self, kernels: Sequence[KernelSpec], measured_ms: float, family: str | None = None) -> None:
        """Refine the calibration of this network structure with a real measurement."""
        if not (math.isfinite(measured_ms) and measured_ms > 0):
            return
        with self._lock:
            raw, parts = self.raw_sum(kernels), self.group_sums(kernels)
            for key in (structure_key(kernels), family or family_key(kernels)):
                self.calibrations.setdefault(key, Calibration()).add(raw, measured_ms, parts)

    # -- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": LUT_VERSION, "device_id": self.device_id, "runtime": self.runtime,
            "threads": self.threads, "meta": self.meta,
            "entries": [{"shape": key, "cin": ci, "cout": co, "ms": ms}
                        for key, pts in sorted(self.entries.items()) for (ci, co), ms in sorted(pts.items())],
            "calibrations": {key: asdict(cal) for key, cal in self.calibrations.items()},
        }

    def save(self, path: Path | None = None) -> Path:
        path = Path(path or self.path or "")
        if not path.name:
            raise LutError("no path to save the lookup table to")
        with self._lock:
            text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, text.encode())  # readers never see a half-written table
        self.path = path
        return path

    @classmethod
    def load(cls, path: Path) -> LatencyTable:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise LutError(f"cannot read lookup table {path}: {exc}; rebuild it with `amc lut build`") from exc
        if data.get("version") != LUT_VERSION:
            raise LutError(f"{path} has version {data.get('version')}, expected {LUT_VERSION}; rebuild it")
        table = cls(data["device_id"], data["runtime"], int(data["threads"]), meta=data.get("meta", {}), path=path)
        for e in data.get("entries", []):
            table.entries.setdefault(e["shape"], {})[(int(e["cin"]), int(e["cout"]))] = float(e["ms"])
        for key, cal in data.get("calibrations", {}).items():
            table.calibrations[key] = Calibration(cal["a"], cal["b"], [tuple(p) for p in cal.get("points", [])],
                                                  parts=[dict(p) for p in cal.get("parts", [])],
                                                  slopes=dict(cal.get("slopes", {})),
                                                  intercept=float(cal.get("intercept", 0.0)),
                                                  outliers=int(cal.get("outliers", 0)))
        return table


def lut_path(lut_dir: Path, device_id: str, runtime: str, threads: int) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", device_id)
    return Path(lut_dir) / f"{safe}__{runtime}__t{threads}.json"


def load_or_new(lut_dir: Path, device_id: str, runtime: str, threads: int) -> LatencyTable:
    path = lut_path(lut_dir, device_id, runtime, threads)
    if path.is_file():
        return LatencyTable.load(path)
    return LatencyTable(device_id, runtime, threads, path=path)


# -- which kernels to time -------------------------------------------------------------------------


def _spread(values: Sequence[int], max_points: int | None) -> list[int]:
    """At most `max_points` of `values` (sorted), evenly spaced, always keeping both ends."""
    values = sorted(set(values))
    if max_points is None or len(values) <= max_points:
        return values
    if max_points < 2:
        return [values[-1]]
    idx = np.linspace(0, len(values) - 1, max_points).round().astype(int)
    return [values[i] for i in sorted(set(idx.tolist()))]


@dataclass
class ModelKernels:
    """What to time for a network: its kernels at full width and, per kernel, the input/output channel
    counts pruning can give it (from `compressor.kernel_space`)."""

    kernels: list[KernelSpec]
    cin_options: list[list[int]]
    cout_options: list[list[int]]
    # rng -> (kernels, build) of a random pruned variant; rng None gives the narrowest one.
    sampler: Callable[[random.Random | None], tuple[list[KernelSpec], Any]] | None = None

    @classmethod
    def of(cls, space: KernelSpace) -> ModelKernels:
        sampler = None
        if space.pruner is not None:
            def sampler(rng: random.Random | None) -> tuple[list[KernelSpec], Any]:
                variant = space.sample(rng) if rng is not None else space.narrowest()
                return variant.kernels, variant.build
        return cls(space.kernels, space.cin_options, space.cout_options, sampler)

    @classmethod
    def assumed(cls, kernels: Sequence[KernelSpec], *, a_min: float, round_to: int,
                fixed_ends: bool = True) -> ModelKernels:
        """Kernels seen without their pruner: see `compressor.kernel_space.KernelSpace.assumed`."""
        from compressor.kernel_space import KernelSpace

        return cls.of(KernelSpace.assumed(kernels, a_min=a_min, round_to=round_to, fixed_ends=fixed_ends))


def model_kernels(model: torch.nn.Module, example_input: torch.Tensor, *, round_to: int = 8,
                  a_min: float = 0.2, prune_residual: bool = False, prune_blocks: bool = False) -> ModelKernels:
    """Kernels of `model` and the channel counts the search's pruner allows with these settings
    (`compressor.kernel_space`), so the table covers exactly what the search will ask; falls back to
    hooks (every width prunable except the input and the classifier output) when the pruner cannot
    read the model."""
    from compressor.kernel_space import kernel_space

    try:
        return ModelKernels.of(kernel_space(model, example_input, a_min=a_min, round_to=round_to,
                                            prune_residual=prune_residual, prune_blocks=prune_blocks))
    except Exception as exc:  # unsupported layers, torch-pruning limits: keep going with hooks
        log.info("pruner-based kernel list unavailable (%s); using forward hooks", exc)
    return ModelKernels.assumed(search_kernels(model, example_input), a_min=a_min, round_to=round_to)


def kernel_grid(mk: ModelKernels, *, max_points: int | None = None) -> list[KernelSpec]:
    """Distinct kernels to time: per layer, its cin options × cout options (each thinned to
    `max_points`, interpolation fills the gaps); layers with the same shape share measurements."""
    seen: dict[tuple, KernelSpec] = {}
    for k, cins, couts in zip(mk.kernels, mk.cin_options, mk.cout_options, strict=True):
        if k.op in ("dwconv", "add", "pool"):
            chans = _spread(sorted(set(cins) | set(couts)) if k.op == "dwconv" else cins, max_points)
            for c in chans:
                spec = KernelSpec(k.op, c, c, k=k.k, stride=k.stride, h=k.h, w=k.w, relu=k.relu or k.op != "pool")
                seen.setdefault((shape_key(spec), _channels(spec)), spec)
            continue
        for ci in _spread(cins, max_points):
            for co in _spread(couts, max_points):
                spec = KernelSpec(k.op, ci, co, k=k.k, stride=k.stride, h=k.h, w=k.w, relu=k.op != "linear" or k.relu)
                seen.setdefault((shape_key(spec), _channels(spec)), spec)
    return list(seen.values())


# -- building -------------------------------------------------------------------------------------


def time_kernel(device: Device, spec: KernelSpec, *, runtime: str, config: MeasureConfig,
                work_dir: Path, cache: MeasurementCache | None = None) -> float:
    """Median ms of one kernel exported as its own ONNX model."""
    module, x = kernel_module(spec)
    name = f"{spec.op}_c{spec.cin}_{spec.cout}_k{spec.k}_s{spec.stride}_{spec.h}x{spec.w}_{int(spec.relu)}.onnx"
    path = export_onnx(module, x, Path(work_dir) / name, validate=False)
    return measure(device, path, config, runtime=runtime, cache=cache).median_ms


def build_lut(device: Device, kernels: ModelKernels | Sequence[KernelSpec], *, runtime: str = "onnxruntime",
              config: MeasureConfig | None = None, lut_dir: Path | None = None,
              table: LatencyTable | None = None, max_points: int | None = DEFAULT_MAX_POINTS, round_to: int = 8,
              a_min: float = 0.2, cache: MeasurementCache | None = None,
              calibrate_with: Sequence[tuple[Sequence[KernelSpec], Path]] = (),
              progress: Progress | None = None, work_dir: Path | None = None,
              passes: int = DEFAULT_KERNEL_PASSES, family: str | None = None,
              statistic: Statistic = "median") -> LatencyTable:
    """Time every kernel of the grid not yet in the table (device's table under `lut_dir`, or
    `table`), then calibrate on `calibrate_with` (kernel list, exported whole model) pairs. Saves the
    table when it has a path. A kernel that fails to time is skipped (interpolation covers it).

    With `passes` > 1 each kernel is timed in that many separate agent runs (the grid in alternating
    order) and its fastest median kept. On the shared 2-core VM two 2-pass builds agreed no better
    than two 1-pass builds (kernel timings there follow the machine's load over minutes), hence 1."""
    config = config or LUT_MEASURE
    mk = kernels if isinstance(kernels, ModelKernels) else ModelKernels.assumed(kernels, a_min=a_min,
                                                                                round_to=round_to)
    if table is None:
        from profiler.paths import default_lut_dir

        table = load_or_new(Path(lut_dir or default_lut_dir()), device.id, runtime, config.threads)
    grid = [k for k in kernel_grid(mk, max_points=max_points) if not table.has(k)]
    passes = max(1, int(passes))
    total = len(grid) * passes + len(calibrate_with)
    start = time.monotonic()
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="amc-lut-", dir=work_dir) as tmp:
        if grid and "overhead_ms" not in table.meta:
            try:
                table.meta["overhead_ms"] = time_kernel(device, OVERHEAD_PROBE, runtime=runtime, config=config,
                                                        work_dir=Path(tmp), cache=cache)
            except ProfilerError as exc:
                log.warning("could not time the runtime overhead on %s: %s", device.spec, exc)
        best: dict[int, float] = {}
        done = 0
        for p in range(passes):
            order = list(enumerate(grid)) if p % 2 == 0 else list(enumerate(grid))[::-1]
            for i, spec in order:
                if progress:
                    progress(done, total, f"{spec.op} {spec.cin}->{spec.cout} k{spec.k} s{spec.stride} "
                                          f"{spec.h}x{spec.w}" + (f" (pass {p + 1})" if passes > 1 else ""))
                done += 1
                try:
                    # Later passes bypass the cache: they exist to get an independent timing.
                    ms = time_kernel(device, spec, runtime=runtime, config=config, work_dir=Path(tmp),
                                     cache=cache if p == 0 else None)
                except ProfilerError as exc:
                    failures.append(f"{spec}: {exc}")
                    log.warning("could not time kernel %s: %s", spec, exc)
                    if len(failures) >= 3 and not best:
                        raise LutError(f"the first kernels all failed on {device.spec}: {failures[-1]}") from exc
                    continue
                best[i] = min(ms, best.get(i, math.inf))
                table.add_entry(spec, best[i])
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


# -- checking -------------------------------------------------------------------------------------


@dataclass
class LutCheck:
    """How well the table predicts real measurements of random pruned variants."""

    samples: list[dict[str, float]]
    tolerance: float = 0.10

    @property
    def within(self) -> float:
        """Share of samples predicted within ±tolerance of the measured latency."""
        if not self.samples:
            return 0.0
        ok = [abs(s["predicted_ms"] - s["measured_ms"]) <= self.tolerance * s["measured_ms"] for s in self.samples]
        return float(np.mean(ok))

    @property
    def mean_abs_rel_error(self) -> float:
        if not self.samples:
            return float("nan")
        return float(np.mean([abs(s["predicted_ms"] - s["measured_ms"]) / s["measured_ms"] for s in self.samples]))

    def to_dict(self) -> dict[str, Any]:
        return {"within": self.within, "tolerance": self.tolerance,
                "mean_abs_rel_error": self.mean_abs_rel_error, "samples": self.samples}


def random_variants(model: torch.nn.Module, example_input: torch.Tensor, n: int, *, seed: int = 0,
                    round_to: int = 8, a_min: float = 0.2, prune_residual: bool = False, prune_blocks: bool = False,
                    include_smallest: bool = False) -> list[tuple[list[KernelSpec], torch.nn.Module]]:
    """`n` randomly pruned copies of `model` with their kernel lists (through the search's pruner)."""
    mk = model_kernels(model, example_input, round_to=round_to, a_min=a_min, prune_residual=prune_residual,
                       prune_blocks=prune_blocks)
    return _variants(mk, n, seed=seed, include_smallest=include_smallest)


def _variants(mk: ModelKernels, n: int, *, seed: int,
              include_smallest: bool) -> list[tuple[list[KernelSpec], torch.nn.Module]]:
    if mk.sampler is None:
        raise LutError("random pruned variants need the search's channel pruner, which could not handle this model")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ks, build = mk.sampler(None if include_smallest and i == 0 else rng)
        out.append((ks, build()))
    return out


def calibration_set(model: torch.nn.Module, example_input: torch.Tensor, work_dir: Path, *, variants: int = 3,
                    round_to: int = 8, a_min: float = 0.2, prune_residual: bool = False, prune_blocks: bool = False,
                    seed: int = 0) -> list[tuple[list[KernelSpec], Path]]:
    """Whole models to calibrate a table on: the full model, the narrowest variant and random ones,
    exported to ONNX. The spread of widths pins down the calibration's slope, not only its offset."""
    mk = model_kernels(model, example_input, round_to=round_to, a_min=a_min, prune_residual=prune_residual,
                       prune_blocks=prune_blocks)
    out = [(mk.kernels, export_onnx(model, example_input, Path(work_dir) / "full.onnx"))]
    if mk.sampler is not None and variants > 0:
        for i, (ks, variant) in enumerate(_variants(mk, variants, seed=seed, include_smallest=True)):
            out.append((ks, export_onnx(variant, example_input, Path(work_dir) / f"variant{i}.onnx")))
    return out


def check_lut(table: LatencyTable, measure_fn: Callable[[torch.nn.Module, torch.Tensor], float | None],
              model: torch.nn.Module, example_input: torch.Tensor, *, samples: int = 10, seed: int = 1,
              round_to: int = 8, a_min: float = 0.2, prune_residual: bool = False, prune_blocks: bool = False,
              tolerance: float = 0.10, progress: Progress | None = None) -> LutCheck:
    """Predict and measure `samples` random pruned variants; the table is not changed."""
    result = LutCheck([], tolerance)
    variants = random_variants(model, example_input, samples, seed=seed, round_to=round_to, a_min=a_min,
                               prune_residual=prune_residual, prune_blocks=prune_blocks)
    for i, (ks, variant) in enumerate(variants):
        if progress:
            progress(i, samples, f"variant {i + 1}")
        measured = measure_fn(variant, example_input)
        if measured is None:
            continue
        result.samples.append({"predicted_ms": table.predict_ms(ks), "measured_ms": float(measured)})
    if progress:
        progress(samples, samples, f"{result.within:.0%} within ±{tolerance:.0%}")
    return result
