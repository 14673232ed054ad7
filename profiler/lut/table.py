"""`LatencyTable`: kernel latencies (ms) of one device identity, runtime and thread count, interpolated
between measured channel counts, and the calibrations that turn their sum into a network's latency;
saved as one JSON file per table (`lut_path`)."""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from compressor.fileio import atomic_write
from compressor.latency import KernelSpec
from profiler.kernels import kernel_macs
from profiler.lut.calibration import Calibration
from profiler.lut.keys import LutError, family_key, kernel_channels, op_group, shape_key, structure_key

log = logging.getLogger(__name__)

# 2: tables keyed by device identity (`DeviceIdentity.key`). Version 1 keyed them by the address a device
# was reached at, which another phone may answer at later.
LUT_VERSION = 2

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


def _monotone_at(value: float, knots: Sequence[int], at_knots: Sequence[float], x: float) -> float:
    """`value` (a piecewise-linear function's value at `x`, its `at_knots` values at ascending `knots`)
    raised to its running maximum from the left: the smallest nondecreasing function above it there.
    Left of the first knot, where the function is one line, it is capped by its first knot's value."""
    if x < knots[0]:
        return min(value, at_knots[0])
    return max([value, *(v for k, v in zip(knots, at_knots, strict=True) if k <= x)])


@dataclass
class LatencyTable:
    """Kernel latencies (ms) of one device/runtime/thread count/precision, and calibrations per
    structure. An int8 table times every kernel and calibration model as post-training int8 ONNX."""

    device_id: str
    runtime: str
    threads: int
    entries: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    precision: str = "float32"

    def __post_init__(self) -> None:
        self._lock = threading.RLock()

    # -- contents ---------------------------------------------------------------------------------
    def add_entry(self, spec: KernelSpec, ms: float) -> None:
        with self._lock:
            self.entries.setdefault(shape_key(spec), {})[kernel_channels(spec)] = float(ms)

    def has(self, spec: KernelSpec) -> bool:
        return kernel_channels(spec) in self.entries.get(shape_key(spec), {})

    def __len__(self) -> int:
        return sum(len(v) for v in self.entries.values())

    def kernel_ms(self, spec: KernelSpec) -> float:
        """One kernel's latency: exact, interpolated between measured channel counts, or (for a shape
        never measured) scaled by MACs from kernels of the same op."""
        points = self.entries.get(shape_key(spec))
        if points:
            return max(self._interpolate(points, *kernel_channels(spec)), 0.0)
        return self._by_macs(spec)

    @staticmethod
    def _interpolate(points: dict[tuple[int, int], float], cin: int, cout: int) -> float:
        """Piecewise-linear in cout, then in cin, monotone in both: a kernel with fewer channels is never
        predicted slower. Timings that say otherwise (noise, a burst of load while one was taken) are
        raised to the largest timing of fewer channels (a running maximum along each axis)."""
        rows: dict[int, list[tuple[int, float]]] = {}
        for (ci, co), ms in points.items():
            rows.setdefault(ci, []).append((co, ms))
        cins = sorted(rows)

        def along_cout(ci: int, at: Sequence[int]) -> np.ndarray:
            row = sorted(rows[ci])
            xs, ys = [c for c, _ in row], np.maximum.accumulate([v for _, v in row]).tolist()
            return np.array([_interp1(xs, ys, c) for c in at])

        # Column j: the rows at cout and at every cout of the grid (those set the extrapolation below).
        grid = sorted({co for (_, co) in points})
        at = [cout, *grid]
        table = np.maximum.accumulate(np.array([along_cout(ci, at) for ci in cins]), axis=0)
        if len(cins) == 1:
            return float(table[0, 0])
        if cins[0] <= cin <= cins[-1]:
            return _interp1(cins, table[:, 0].tolist(), cin)
        # Beyond the timed rows: linear from the end rows, a different slope at each cout, which could
        # reverse the order in cout; the running maximum over cout restores it (exact where it holds).
        ends = slice(-2, None) if cin > cins[-1] else slice(0, 2)
        extrapolated = [_interp1(cins[ends], col.tolist(), cin) for col in table[ends].T]
        return _monotone_at(extrapolated[0], grid, extrapolated[1:], cout)

    def _by_macs(self, spec: KernelSpec) -> float:
        same = [(k, v) for key, pts in self.entries.items() if key.startswith(spec.op + "|")
                for k, v in self._specs_of(key, pts)]
        pool = same or [(k, v) for key, pts in self.entries.items() for k, v in self._specs_of(key, pts)]
        if not pool:
            raise LutError(f"the lookup table for {self.device_id} is empty; run `amc lut build` first")
        x = np.array([kernel_macs(k) for k, _ in pool], dtype=float)
        y = np.array([v for _, v in pool], dtype=float)
        if len(pool) >= 2 and np.ptp(x) > 0 and np.polyfit(x, y, 1)[0] > 0:
            slope, icept = np.polyfit(x, y, 1)  # more MACs never faster: a falling fit is not used
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
            "threads": self.threads, "precision": self.precision, "meta": self.meta,
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
        if data.get("version") == 1:
            raise LutError(f"{path} is a version-1 lookup table, keyed by the address {data.get('device_id')!r}, "
                           "which another phone may answer at: it cannot be told which phone it was built on. "
                           "Rebuild it with `amc lut build --device SPEC --model NAME` (tables are now filed by "
                           "what the device is) and delete the old file")
        if data.get("version") != LUT_VERSION:
            raise LutError(f"{path} has version {data.get('version')}, expected {LUT_VERSION}; rebuild it with "
                           "`amc lut build --device SPEC --model NAME`")
        table = cls(data["device_id"], data["runtime"], int(data["threads"]), meta=data.get("meta", {}), path=path,
                    precision=str(data.get("precision", "float32")))
        for e in data.get("entries", []):
            table.entries.setdefault(e["shape"], {})[(int(e["cin"]), int(e["cout"]))] = float(e["ms"])
        for key, cal in data.get("calibrations", {}).items():
            table.calibrations[key] = Calibration(cal["a"], cal["b"], [tuple(p) for p in cal.get("points", [])],
                                                  parts=[dict(p) for p in cal.get("parts", [])],
                                                  slopes=dict(cal.get("slopes", {})),
                                                  intercept=float(cal.get("intercept", 0.0)),
                                                  outliers=int(cal.get("outliers", 0)))
        return table


def lut_path(lut_dir: Path, device_id: str, runtime: str, threads: int, precision: str = "float32") -> Path:
    """The table file of a device identity (`Device.id`), runtime, thread count and precision (float32
    tables keep the names they always had; an int8 table is `...__int8__t1.json` beside its float one)."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", device_id)
    kind = runtime if precision == "float32" else f"{runtime}__{precision}"
    return Path(lut_dir) / f"{safe}__{kind}__t{threads}.json"


def load_or_new(lut_dir: Path, device_id: str, runtime: str, threads: int, *,
                legacy_id: str | None = None, precision: str = "float32") -> LatencyTable:
    """The stored table of `device_id` (a device identity key), or a new empty one to be saved there.
    `legacy_id` (the device's address) names a table from before identities, which is not used."""
    path = lut_path(lut_dir, device_id, runtime, threads, precision)
    if path.is_file():
        table = LatencyTable.load(path)
        if table.precision != precision:
            raise LutError(f"{path} holds {table.precision} kernels, not {precision}; delete it and rebuild it "
                           f"with `amc lut build --precision {precision}`")
        return table
    old = lut_path(lut_dir, legacy_id, runtime, threads) if legacy_id else None
    if old is not None and old != path and old.is_file():
        log.warning("not using %s: it is keyed by the address %s, from before tables were keyed by what a device "
                    "is, and may be another phone's; a new table is built for %s (delete the old file)",
                    old, legacy_id, device_id)
    return LatencyTable(device_id, runtime, threads, path=path, precision=precision)

