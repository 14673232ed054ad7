"""Checking a table: how well it predicts real measurements of random pruned variants (`check_lut`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from profiler.lut.keys import Progress
from profiler.lut.space import random_variants
from profiler.lut.table import LatencyTable

if TYPE_CHECKING:  # pragma: no cover
    import torch


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
