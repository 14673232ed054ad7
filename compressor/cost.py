"""Exact per-layer cost (multiply-accumulates and parameters) of a network, before and after pruning.

`trace_layers` runs one forward pass with hooks and records every layer the per-op registry
(`compressor.ops`) knows. A `CostModel` then answers "how many MACs/params would the network have
with these channel counts" analytically, without building the pruned network, from each layer's
entry; `tests/test_pruning.py` and `tests/test_blocks.py` check it against the traced cost of really
pruned networks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from compressor.errors import UnsupportedLayerError
from compressor.latency import KernelSpec
from compressor.ops import OPS, UNSUPPORTED, Layer, LayerKind, op_for

__all__ = ["Cost", "CostModel", "Layer", "LayerKind", "measure", "trace_layers"]


@torch.inference_mode()
def trace_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[list[Layer], int]:
    """Layers with weights in forward order (every module the per-op registry knows), and the number
    of parameters outside them."""
    records: list[Layer] = []
    seen: set[str] = set()
    hooks = []

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name in seen:
                raise UnsupportedLayerError(
                    f"layer {name!r} is called more than once in a forward pass; shared layers cannot be "
                    "pruned. Give each use its own module.")
            seen.add(name)
            op = op_for(module)
            assert op is not None  # hooked below because it has an entry
            records.append(op.trace(name, module, inputs[0], output))
        return fn

    covered: set[int] = set()
    for name, module in model.named_modules():
        op = op_for(module)
        if op is not None:
            if not op.traced(module):
                continue
            hooks.append(module.register_forward_hook(hook(name)))
            covered.update(id(p) for p in module.parameters(recurse=False))
        elif isinstance(module, UNSUPPORTED):
            raise UnsupportedLayerError(
                f"layer {name!r} is a {type(module).__name__}; the pruner handles Conv2d, Linear and BatchNorm. "
                "Express the model with those, or mark it unprunable.")
    try:
        model(example_input)
    finally:
        for h in hooks:
            h.remove()
    other = sum(p.numel() for p in model.parameters() if id(p) not in covered)
    return records, other


# Kept channels per unit, as a list or an array.
Kept = Sequence[float] | np.ndarray


@dataclass
class Cost:
    macs: int
    params: int


class CostModel:
    """Cost of the network as a function of the kept channel count of every prunable unit.

    `out_unit[i]` names the unit whose kept channels scale layer i's output channels (or -1);
    `in_dims[i, u]` is how many of layer i's input dimensions unit u owns (a layer after a
    concatenation takes input from several units; a Linear after a flatten owns C·H·W dimensions).
    A depthwise convolution's cost depends on its output channels only. `gate_unit[i]` names the unit
    whose kept count 0 removes layer i altogether (a residual block turned into its shortcut), or -1.
    """

    def __init__(self, layers: Sequence[Layer], *, other_params: int, full: Sequence[int],
                 out_unit: Sequence[int], in_dims: np.ndarray, gate_unit: Sequence[int] | None = None):
        self.layers = list(layers)
        self.other_params = int(other_params)
        self.full = np.asarray(full, dtype=np.float64)
        self.out_unit = np.asarray(out_unit, dtype=np.int64)
        self.in_dims = np.asarray(in_dims, dtype=np.float64).reshape(len(self.layers), len(self.full))
        self._cin = np.array([layer.cin for layer in self.layers], dtype=np.float64)
        self._cout = np.array([layer.cout for layer in self.layers], dtype=np.float64)
        self._fixed_in = self._cin - self.in_dims.sum(axis=1)
        self.gate_unit = np.asarray([-1] * len(self.layers) if gate_unit is None else gate_unit, dtype=np.int64)
        self.layer_macs = np.array([layer.macs for layer in self.layers], dtype=np.float64)
        self.layer_params = np.array([layer.params for layer in self.layers], dtype=np.float64)

    def _channels(self, kept: Kept) -> tuple[np.ndarray, np.ndarray]:
        """Effective (cin, cout) of every layer."""
        r = np.asarray(kept, dtype=np.float64) / self.full
        cin = self._fixed_in + self.in_dims @ r
        cout = self._cout * np.append(r, 1.0)[self.out_unit]  # index -1 -> ratio 1
        return cin, cout

    def present(self, kept: Kept) -> np.ndarray:
        """Per layer: whether it still exists (False inside a removed block)."""
        alive = np.append(np.asarray(kept, dtype=np.float64) > 0, True)
        return alive[self.gate_unit]  # index -1 -> True

    def layer_costs(self, kept: Kept) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer (macs, params) with the given kept channels per unit."""
        cin, cout = self._channels(kept)
        on = self.present(kept)
        ops = [OPS[layer.kind] for layer in self.layers]
        macs = np.array([op.macs_at(layer, cin=ci, cout=co) for op, layer, ci, co in zip(ops, self.layers, cin, cout)])
        params = np.array([op.params_at(layer, cin=ci, cout=co)
                           for op, layer, ci, co in zip(ops, self.layers, cin, cout)])
        return macs * on, params * on

    def cost(self, kept: Kept) -> Cost:
        macs, params = self.layer_costs(kept)
        return Cost(macs=int(round(macs.sum())), params=int(round(params.sum())) + self.other_params)

    @property
    def full_cost(self) -> Cost:
        return self.cost(self.full)

    def kernel_slots(self, kept: Kept) -> list[KernelSpec | None]:
        """One slot per kernel of the unpruned network, in forward order: its kernel with the given kept
        channels, or None where its layer was removed (inside a removed block). Layers the runtime
        fuses into the kernel before them (BatchNorm) have no slot."""
        cins, couts = self._channels(kept)
        out: list[KernelSpec | None] = []
        for layer, ci, co, on in zip(self.layers, cins, couts, self.present(kept)):
            spec = OPS[layer.kind].kernel(layer, cin=int(round(ci)), cout=int(round(co)))
            if spec is not None:
                out.append(spec if on else None)
        return out

    def kernels(self, kept: Kept) -> list[KernelSpec]:
        """The network's compute kernels with the given kept channels (BN is fused into its conv)."""
        return [spec for spec in self.kernel_slots(kept) if spec is not None]

    def kernel_channels(self, candidates: Sequence[Sequence[int]]) -> list[tuple[list[int], list[int]]]:
        """Per kernel slot (as `kernel_slots`): every (input, output) channel count it can have when each
        unit keeps any of its `candidates`. A layer fed by several units (after a concatenation) takes
        every sum of their counts. A count of 0 removes the layers that depend on it, so it adds none."""
        out: list[tuple[list[int], list[int]]] = []
        for i, layer in enumerate(self.layers):
            if OPS[layer.kind].kernel(layer, cin=layer.cin, cout=layer.cout) is None:
                continue
            # Each unit owns a whole multiple of its channels of a layer's input: every term is whole.
            cins = {int(round(self._fixed_in[i]))}
            for u in np.flatnonzero(self.in_dims[i]).tolist():
                terms = {int(round(self.in_dims[i, u] * c / self.full[u])) for c in candidates[u] if c > 0}
                cins = {s + t for s in cins for t in terms}
            o = int(self.out_unit[i])
            couts = {int(round(self._cout[i] * c / self.full[o])) for c in candidates[o] if c > 0} if o >= 0 \
                else {int(self._cout[i])}
            out.append((sorted(cins), sorted(couts)))
        return out


def measure(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Exact MACs and parameters of a (possibly pruned) network, traced."""
    layers, _ = trace_layers(model, example_input)
    macs = sum(layer.macs for layer in layers)
    return Cost(macs=int(round(macs)), params=sum(p.numel() for p in model.parameters()))
