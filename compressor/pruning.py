"""Dependency-aware channel pruning and fine-grained magnitude pruning.

A *unit* is one set of coupled channels: the output channels of a convolution together with its
BatchNorm, any depthwise convolution that carries them, and the input channels of every layer that
consumes them. torch-pruning's dependency graph finds the units, so no model needs index lists.
Within a unit the channels with the largest L1 norm (summed over every coupled weight) are kept.

Both pruners share one shape: `units` (what the agent decides, in forward order), a `CostModel`, and
`apply(kept) -> PrunedModel` that returns a pruned copy and leaves the original untouched.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from compressor.cost import CostModel, Layer, trace_layers
from compressor.errors import UnsupportedLayerError
from compressor.ops import OPS, op_for, unit_root_types

log = logging.getLogger(__name__)

# grad_fn names of ops whose channel mapping torch-pruning cannot know (channel zero-padding in
# option-A ResNet shortcuts): a unit touching one is never pruned.
_OPAQUE_OPS = ("ConstantPadNd", "ReplicationPad", "ReflectionPad", "Roll", "ChannelShuffle", "PixelShuffle")
# Elementwise ops that couple two tensors' channels (residual connections).
_COUPLING_OPS = ("AddBackward", "SubBackward", "MulBackward")


@dataclass
class Unit:
    """Channels the agent decides about in one step."""

    index: int
    name: str  # the root layer whose output channels these are
    channels: int
    candidates: list[int]  # allowed kept counts, ascending (multiples of round_to, and `channels`)
    order: np.ndarray  # channel indices by importance, most important first
    out_layers: list[str] = field(default_factory=list)
    in_layers: list[str] = field(default_factory=list)
    residual: bool = False
    # The residual block this unit is the inside of, when it may be removed whole (kept count 0);
    # a preserve ratio below `drop_below` (the search's a_min) removes it.
    block: str | None = None
    drop_below: float = 0.0

    @property
    def removable(self) -> bool:
        return self.block is not None

    def kept_for(self, ratio: float) -> int:
        """The smallest allowed count that keeps at least `ratio` of the channels (0 — the block
        removed — for a removable unit whose ratio is below `drop_below`)."""
        if self.removable and ratio < self.drop_below - 1e-9:
            return 0
        want = ratio * self.channels - 1e-9
        for c in self.candidates:
            if c >= want:
                return c
        return self.candidates[-1]


@dataclass
class PrunedModel:
    model: nn.Module
    kept: list[int]
    # per layer name: removed input / output indices (in the unpruned numbering)
    removed_in: dict[str, list[int]] = field(default_factory=dict)
    removed_out: dict[str, list[int]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # residual blocks turned into their shortcut


@runtime_checkable
class RemovableBlock(Protocol):
    """A residual block that can become its shortcut (models.BasicBlock, models.InvertedResidual). A user's
    model opts in by giving its blocks these two methods; `drop_branch` deletes the branch's layers."""

    def can_drop(self) -> bool: ...

    def drop_branch(self) -> None: ...


class Pruner(Protocol):
    units: list[Unit]
    cost_model: CostModel
    layers: list[Layer]

    def apply(self, kept: Sequence[int]) -> PrunedModel: ...


def candidate_counts(channels: int, *, a_min: float, round_to: int) -> list[int]:
    """Kept-channel counts a unit may take: multiples of round_to from ceil(a_min·n) up, plus n."""
    lowest = max(1, math.ceil(a_min * channels - 1e-9))
    lowest = min(channels, max(round_to, math.ceil(lowest / round_to) * round_to))
    counts = list(range(lowest, channels, round_to)) + [channels]
    return sorted(set(counts))


def _module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


class ChannelPruner:
    """Coarse-grained pruning: whole channels of dependency groups are removed; the network shrinks."""

    granularity = "channel"

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, a_min: float = 0.2,
                 round_to: int = 8, prune_residual: bool = False, prune_blocks: bool = False):
        self.model = model.eval()
        self.example_input = example_input
        self.layers, other = trace_layers(model, example_input)
        layer_index = {layer.name: i for i, layer in enumerate(self.layers)}
        names = _module_names(model)
        self._graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
        last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)][-1:]
        out_unit = [-1] * len(self.layers)
        in_dims: list[dict[int, int]] = [{} for _ in self.layers]
        self.units: list[Unit] = []
        self._roots: list[tuple[nn.Module, object]] = []
        skipped: list[str] = []
        for group in self._graph.get_all_groups(ignored_layers=last_linear, root_module_types=unit_root_types()):
            root = group[0].dep.target.module
            root_name = names.get(id(root), "?")
            n = len(group[0].idxs)
            reason = self._unprunable(group, names, n, prune_residual)
            if reason:
                skipped.append(f"{root_name} ({reason})")
                continue
            u = len(self.units)
            unit = Unit(index=u, name=root_name, channels=n,
                        candidates=candidate_counts(n, a_min=a_min, round_to=round_to),
                        order=self._importance_order(group, n),
                        residual=any(any(op in self._op_name(dep) for op in _COUPLING_OPS)
                                     for dep, _ in group))
            for dep, idxs in group:
                name = names.get(id(dep.target.module))
                if name not in layer_index:
                    continue
                i = layer_index[name]
                if self._graph.is_out_channel_pruning_fn(dep.handler) or OPS[self.layers[i].kind].follows_input:
                    out_unit[i] = u
                    unit.out_layers.append(name)
                elif self._graph.is_in_channel_pruning_fn(dep.handler):
                    in_dims[i][u] = in_dims[i].get(u, 0) + len(idxs)
                    unit.in_layers.append(name)
            self.units.append(unit)
            self._roots.append((root, group[0].dep.handler))
        if skipped:
            log.info("not pruned: %s", "; ".join(skipped))
        self.skipped = skipped
        self._order_units_by_forward(layer_index)
        remap = {old: new for new, old in enumerate(self._unit_order)}
        self.units = [self.units[i] for i in self._unit_order]
        self._roots = [self._roots[i] for i in self._unit_order]
        for new, unit in enumerate(self.units):
            unit.index = new
        out_unit = [remap.get(u, -1) for u in out_unit]
        dims = np.zeros((len(self.layers), len(self.units)))
        for i, owned in enumerate(in_dims):
            for u, d in owned.items():
                dims[i, remap[u]] = d
        gate = self._find_blocks(model, a_min) if prune_blocks else [-1] * len(self.layers)
        self.cost_model = CostModel(self.layers, other_params=other,
                                    full=[u.channels for u in self.units],
                                    out_unit=out_unit, in_dims=dims, gate_unit=gate)
        if not self.units:
            raise UnsupportedLayerError(
                "found no prunable channels in this model (every group touches the output, an opaque op "
                f"or a residual connection): {'; '.join(skipped) or 'no Conv2d/Linear layers'}")

    def _find_blocks(self, model: nn.Module, a_min: float) -> list[int]:
        """Mark the units that are the whole inside of a removable block; returns, per layer, the unit
        whose kept count 0 removes it (-1: none). A block qualifies when exactly one unit's layers
        all lie inside it, so removing the block is that unit's limit of pruning."""
        gate = [-1] * len(self.layers)
        for block_name, module in model.named_modules():
            if not block_name or not isinstance(module, RemovableBlock) or not module.can_drop():
                continue
            prefix = block_name + "."
            inside = [u for u in self.units
                      if all(n.startswith(prefix) for n in u.out_layers + u.in_layers) and u.out_layers]
            if len(inside) != 1:
                continue
            unit = inside[0]
            unit.block, unit.drop_below = block_name, a_min
            unit.candidates = [0] + [c for c in unit.candidates if c > 0]
            for i, layer in enumerate(self.layers):
                if layer.name.startswith(prefix):
                    gate[i] = unit.index
        return gate

    def _order_units_by_forward(self, layer_index: dict[str, int]) -> None:
        self._unit_order = sorted(range(len(self.units)),
                                  key=lambda u: layer_index.get(self.units[u].name, 1 << 30))

    @staticmethod
    def _op_name(dep) -> str:
        grad_fn = getattr(dep.target, "grad_fn", None)
        return type(grad_fn).__name__ if grad_fn is not None else ""

    def _unprunable(self, group, names: dict[int, str], n: int, prune_residual: bool) -> str | None:
        for dep, _ in group:
            op = self._op_name(dep)
            if any(o in op for o in _OPAQUE_OPS):
                return f"coupled through {op}, whose channel mapping is unknown"
            if not prune_residual and any(o in op for o in _COUPLING_OPS):
                return "residual connection (enable prune_residual to prune it)"
            module = dep.target.module
            layer_op = op_for(module)
            refusal = layer_op.refusal(module) if layer_op is not None else None
            if refusal:
                return f"{refusal} {names.get(id(module))}"
            if isinstance(module, (nn.Conv2d, nn.BatchNorm2d)) and self._graph.is_out_channel_pruning_fn(dep.handler):
                width = module.out_channels if isinstance(module, nn.Conv2d) else module.num_features
                if width != n:
                    return f"inconsistent widths ({names.get(id(module))} has {width}, group has {n})"
        return None

    def _importance_order(self, group, n: int) -> np.ndarray:
        """Channels sorted by the L1 norm of every filter that produces them, most important first."""
        score = torch.zeros(n, dtype=torch.float64)
        for item in group:
            module = item.dep.target.module
            op = op_for(module)
            if op is None or not self._graph.is_out_channel_pruning_fn(item.dep.handler):
                continue
            l1 = op.channel_scores(module)
            if l1 is None:
                continue
            score[torch.as_tensor(item.root_idxs)] += l1[torch.as_tensor(item.idxs)]
        # stable order: ties keep the lower index first
        return np.array(sorted(range(n), key=lambda c: (-float(score[c]), c)), dtype=np.int64)

    def apply(self, kept: Sequence[int]) -> PrunedModel:
        """A pruned deep copy keeping `kept[u]` most important channels of every unit."""
        if len(kept) != len(self.units):
            raise ValueError(f"expected {len(self.units)} kept counts, got {len(kept)}")
        clone = copy.deepcopy(self.model)
        by_name = dict(clone.named_modules())
        names = _module_names(self.model)
        result = PrunedModel(model=clone, kept=[int(k) for k in kept])
        # Indices are gathered in the unpruned numbering and each (layer, dimension) is cut once:
        # a layer fed by a concatenation is cut by several units.
        cuts: dict[tuple[str, Any], tuple[Any, int, set[int]]] = {}
        dropped = [unit.block for unit, k in zip(self.units, kept) if k == 0 and unit.block is not None]
        for unit, (root, handler), k in zip(self.units, self._roots, kept):
            if k >= unit.channels or (k == 0 and unit.block is not None):
                continue
            if k not in unit.candidates:
                raise ValueError(f"unit {unit.name}: {k} channels is not an allowed count {unit.candidates}")
            removed = sorted(int(c) for c in unit.order[k:])
            for dep, idxs in self._graph.get_pruning_group(root, handler, removed):
                name = names.get(id(dep.target.module))
                if name is None or name not in by_name:
                    continue  # an op node (relu, add): nothing to cut
                key = (name, dep.handler)
                cuts.setdefault(key, (dep.handler, dep.target.pruning_dim, set()))[2].update(int(i) for i in idxs)
        for (name, _), (handler, pruning_dim, idxs) in cuts.items():
            handler.__self__.pruning_dim = pruning_dim
            handler(by_name[name], sorted(idxs))
            if any(name.startswith(b + ".") for b in dropped):
                continue  # deleted below: nothing to reconstruct
            target = result.removed_out if self._graph.is_out_channel_pruning_fn(handler) else result.removed_in
            target.setdefault(name, []).extend(sorted(idxs))
        for block in dropped:
            by_name[block].drop_branch()
        result.dropped = dropped
        return result


class MagnitudePruner:
    """Fine-grained pruning: the smallest-magnitude weights of each layer are zeroed (model size).

    Each Conv2d/Linear is a unit; the kept count is the number of non-zero weights. MACs are counted
    as the dense MACs scaled by each layer's density (what a sparse kernel would execute).
    """

    granularity = "weight"

    def __init__(self, model: nn.Module, example_input: torch.Tensor, *, a_min: float = 0.2, round_to: int = 8):
        self.model = model.eval()
        self.layers, other = trace_layers(model, example_input)
        modules = dict(model.named_modules())
        self.units: list[Unit] = []
        out_unit = [-1] * len(self.layers)
        for i, layer in enumerate(self.layers):
            if not OPS[layer.kind].weighted:
                continue
            weight = modules[layer.name].weight.detach()
            n = weight.numel()
            step = max(1, n // 100)  # 1% steps: the action is a density
            lowest = max(1, math.ceil(a_min * n))
            cands = sorted(set(list(range(lowest, n, step)) + [n]))
            order = torch.argsort(weight.abs().flatten(), descending=True, stable=True).numpy()
            self.units.append(Unit(index=len(self.units), name=layer.name, channels=n, candidates=cands,
                                   order=order, out_layers=[layer.name]))
            out_unit[i] = len(self.units) - 1
        self.skipped: list[str] = []
        # Density scales a layer's weights (not biases) and MACs linearly: model it as scaling cout
        # with cin fixed, which the cost model does exactly (bias is the only non-linear part, so
        # biases are kept out by costing them as other params).
        self.cost_model = _DensityCostModel(self.layers, other_params=other,
                                            full=[u.channels for u in self.units], out_unit=out_unit)

    def apply(self, kept: Sequence[int]) -> PrunedModel:
        clone = copy.deepcopy(self.model)
        by_name = dict(clone.named_modules())
        for unit, k in zip(self.units, kept):
            w = by_name[unit.name].weight
            with torch.no_grad():
                flat = w.view(-1)
                flat[torch.as_tensor(unit.order[int(k):])] = 0.0
        return PrunedModel(model=clone, kept=[int(k) for k in kept])


class _DensityCostModel(CostModel):
    def __init__(self, layers, *, other_params, full, out_unit):
        super().__init__(layers, other_params=other_params, full=full, out_unit=out_unit,
                         in_dims=np.zeros((len(layers), len(full))))

    def layer_costs(self, kept):
        r = np.append(np.asarray(kept, dtype=np.float64) / self.full, 1.0)[self.out_unit]
        macs = self.layer_macs * r
        bias = np.array([(layer.cout if layer.bias and OPS[layer.kind].weighted else 0) for layer in self.layers])
        params = (self.layer_params - bias) * r + bias
        return macs, params


def count_nonzero_params(model: nn.Module) -> int:
    return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


PRUNERS = {"channel": ChannelPruner, "weight": MagnitudePruner}
