"""How a network's summed kernel latencies become its predicted latency: `Calibration` fits
`measured ≈ a·sum + b` (and a slope per op group once there are enough points) on real whole-model
measurements, leaving out points taken during a burst of load."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_CALIBRATION_POINTS = 200
# How many points' worth of pull towards the common slope each op group's own slope gets.
GROUP_PRIOR = 1.0


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

    @property
    def floor(self) -> float:
        """The smallest measured/sum ratio among the points: no network is predicted faster than that
        share of its kernels' sum. A line fitted on a few large networks can have a negative offset that
        puts a much smaller one at 0 ms (and a search would then accept any latency target); every
        network measured so far took at least this share, and a smaller one, with more of its time in
        fixed overhead, takes more."""
        ratios = [m / s for s, m in self.points if s > 0]
        return min(ratios) if ratios else 0.0

    def apply(self, raw_sum: float, parts: dict[str, float] | None = None) -> float:
        if self.slopes and parts is not None and set(parts) <= set(self.slopes):
            fitted = sum(self.slopes[g] * v for g, v in parts.items()) + self.intercept
        else:
            fitted = self.a * raw_sum + self.b
        return max(fitted, self._floor * raw_sum, 0.0)

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

    def __post_init__(self) -> None:
        self._floor = self.floor  # apply() is on the search's hot path; points change only through add()

    def fit(self) -> None:
        self._floor = self.floor
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

