"""What a table must hold for a model: its kernels and the channel counts the search's pruner can give
them (`model_kernels`, from `compressor.kernel_space`), the grid of kernels to time (`kernel_grid`),
and whole pruned variants of the model to calibrate on (`calibration_set`) or check against
(`random_variants`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compressor.latency import KernelSpec
from profiler.export import export_for_timing
from profiler.kernels import search_kernels
from profiler.lut.keys import LutError, kernel_channels, shape_key

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from compressor.kernel_space import KernelSpace

log = logging.getLogger(__name__)

# Channel counts timed per kernel axis (the rest interpolated). Measured on MobileNet-V2 (CIFAR):
# 3 points leave interpolation errors the calibration cannot remove; 8 points cost ~340 kernels.
DEFAULT_MAX_POINTS = 8
# Pruned variants measured whole (besides the full model) when a table is calibrated for a model:
# enough points for a slope per op group and for leaving out a measurement taken during a burst.
DEFAULT_CALIBRATION_VARIANTS = 10


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
                seen.setdefault((shape_key(spec), kernel_channels(spec)), spec)
            continue
        for ci in _spread(cins, max_points):
            for co in _spread(couts, max_points):
                spec = KernelSpec(k.op, ci, co, k=k.k, stride=k.stride, h=k.h, w=k.w, relu=k.op != "linear" or k.relu)
                seen.setdefault((shape_key(spec), kernel_channels(spec)), spec)
    return list(seen.values())



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
                    seed: int = 0, precision: str = "float32") -> list[tuple[list[KernelSpec], Path]]:
    """Whole models to calibrate a table on: the full model, the narrowest variant and random ones,
    exported to ONNX (in the table's `precision`). The spread of widths pins down the calibration's
    slope, not only its offset."""
    mk = model_kernels(model, example_input, round_to=round_to, a_min=a_min, prune_residual=prune_residual,
                       prune_blocks=prune_blocks)
    out = [(mk.kernels, export_for_timing(model, example_input, Path(work_dir) / "full.onnx", precision=precision))]
    if mk.sampler is not None and variants > 0:
        for i, (ks, variant) in enumerate(_variants(mk, variants, seed=seed, include_smallest=True)):
            out.append((ks, export_for_timing(variant, example_input, Path(work_dir) / f"variant{i}.onnx",
                                              precision=precision)))
    return out

