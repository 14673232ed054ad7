"""Which latency kernels a model can run as once pruned: the one owner of that question.

The search predicts a candidate's latency from its kernel list (`compressor.latency.KernelSpec`, built
by the cost model from the per-op registry); a device's lookup table must have timed every kernel the
search can ask for. `kernel_space` answers from the search's own pruner and cost model, so the two
cannot drift apart: the kernels of the full network, the input/output channel counts pruning can give
each of them, and random pruned variants (their kernel lists and a builder for the real network).
`network_kernels` gives the kernel list of a concrete (already pruned) network the same way, and
`candidate_counts` the kept-channel counts a unit of a given width may take.

A public interface: with `compressor.latency` and `compressor.ops` it is all `profiler` knows of how the
search prunes (the import contracts in pyproject.toml keep `cost` and `pruning` internal).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from compressor.cost import trace_layers
from compressor.latency import KernelSpec
from compressor.ops import OPS
from compressor.pruning import ChannelPruner, candidate_counts

__all__ = ["KernelSpace", "Variant", "candidate_counts", "kernel_space", "network_kernels"]


@dataclass(frozen=True)
class Variant:
    """One pruned configuration: the kept count per unit, its kernel list, and how to build it."""

    kept: list[int]
    kernels: list[KernelSpec]
    build: Callable[[], nn.Module]


@dataclass
class KernelSpace:
    """A network's kernels at full width and, per kernel, the input/output channel counts pruning can
    give it. `candidates` holds each unit's allowed kept counts (0: its residual block removed, and
    with it the block's kernels)."""

    kernels: list[KernelSpec]
    cin_options: list[list[int]]
    cout_options: list[list[int]]
    candidates: list[list[int]]
    pruner: ChannelPruner | None = field(default=None, repr=False, compare=False)

    def sample(self, rng: random.Random) -> Variant:
        """A random configuration: every unit at one of its allowed counts (0 included)."""
        return self._variant([rng.choice(c) for c in self.candidates])

    def narrowest(self) -> Variant:
        """Every unit at its smallest non-zero count: the narrowest network with the full network's
        structure (no block removed)."""
        return self._variant([min(k for k in c if k > 0) for c in self.candidates])

    def _variant(self, kept: list[int]) -> Variant:
        pruner = self.pruner
        if pruner is None:
            raise ValueError("this kernel space was not made from the pruner; it has no variants")
        return Variant(kept, pruner.cost_model.kernels(kept), lambda: pruner.apply(kept).model)

    @classmethod
    def assumed(cls, kernels: Sequence[KernelSpec], *, a_min: float, round_to: int,
                fixed_ends: bool = True) -> KernelSpace:
        """For kernels whose pruner is unknown (a model the pruner cannot read, or kernel shapes seen
        without their model): every width may take any candidate count, except, with `fixed_ends`, the
        first kernel's input (the image) and the last kernel's output (the classes). No variants."""
        ks = list(kernels)
        last = len(ks) - 1
        return cls(ks,
                   [[k.cin] if fixed_ends and i == 0 else candidate_counts(k.cin, a_min=a_min, round_to=round_to)
                    for i, k in enumerate(ks)],
                   [[k.cout] if fixed_ends and i == last else candidate_counts(k.cout, a_min=a_min, round_to=round_to)
                    for i, k in enumerate(ks)],
                   candidates=[])


def kernel_space(model: nn.Module, example_input: torch.Tensor, *, a_min: float, round_to: int,
                 prune_residual: bool = False, prune_blocks: bool = False) -> KernelSpace:
    """The kernels `model` can run as under the search's channel pruner with these settings (the
    settings of `compressor.pruning.ChannelPruner`). Raises `compressor.errors.AmcError` (or
    torch-pruning's errors) when the pruner cannot handle the model."""
    pruner = ChannelPruner(model, example_input, a_min=a_min, round_to=round_to, prune_residual=prune_residual,
                           prune_blocks=prune_blocks)
    cm = pruner.cost_model
    candidates = [list(u.candidates) for u in pruner.units]
    channels = cm.kernel_channels(candidates)
    return KernelSpace(cm.kernels(cm.full), [cin for cin, _ in channels], [cout for _, cout in channels],
                       candidates, pruner)


def network_kernels(model: nn.Module, example_input: torch.Tensor) -> list[KernelSpec]:
    """The kernel list of a concrete network exactly as the search builds it for a candidate (each
    layer's registry entry: conv/dwconv with fused BN and ReLU, linear). Raises
    `compressor.errors.UnsupportedLayerError` for a model the tracer cannot read."""
    layers, _ = trace_layers(model, example_input)
    out: list[KernelSpec] = []
    for layer in layers:
        spec = OPS[layer.kind].kernel(layer, cin=layer.cin, cout=layer.cout)
        if spec is not None:
            out.append(spec)
    return out
