"""Exact per-layer cost (multiply-accumulates and parameters) of a network, before and after pruning.

`trace_layers` runs one forward pass with hooks and records every layer that holds weights. A
`CostModel` then answers "how many MACs/params would the network have with these channel counts"
analytically, without building the pruned network; `tests/test_cost.py` checks it against the traced
cost of really pruned networks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from compressor.errors import UnsupportedLayerError
from compressor.latency import KernelSpec

LayerKind = Literal["conv", "dwconv", "linear", "bn"]

# Layers with parameters that we know how to cost and prune. Anything else holding parameters is
# counted as fixed parameters (and reported), never silently dropped.
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Layer:
    """One layer with weights, as seen in a forward pass of the unpruned network."""

    name: str
    kind: LayerKind
    cin: int
    cout: int
    kh: int = 1
    kw: int = 1
    stride: int = 1
    groups: int = 1
    in_h: int = 1
    in_w: int = 1
    out_h: int = 1
    out_w: int = 1
    bias: bool = False
    uses: int = 1  # how many positions a Linear is applied at (1 for N×C inputs)

    @property
    def macs(self) -> int:
        return self.macs_at(cin=self.cin, cout=self.cout)

    @property
    def params(self) -> int:
        return self.params_at(cin=self.cin, cout=self.cout)

    def macs_at(self, *, cin: float, cout: float) -> float:
        if self.kind == "bn":
            return 0
        per_out = self.kh * self.kw * (1 if self.kind == "dwconv" else cin / self.groups)
        return self.out_h * self.out_w * self.uses * per_out * cout

    def params_at(self, *, cin: float, cout: float) -> float:
        if self.kind == "bn":
            return 2 * cout
        per_out = self.kh * self.kw * (1 if self.kind == "dwconv" else cin / self.groups)
        return per_out * cout + (cout if self.bias else 0)


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


@torch.inference_mode()
def trace_layers(model: nn.Module, example_input: torch.Tensor) -> tuple[list[Layer], int]:
    """Layers with weights in forward order, and the number of parameters outside them."""
    records: list[Layer] = []
    seen: set[str] = set()
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs, output) -> None:
            if name in seen:
                raise UnsupportedLayerError(
                    f"layer {name!r} is called more than once in a forward pass; shared layers cannot be "
                    "pruned. Give each use its own module.")
            seen.add(name)
            x = inputs[0]
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                records.append(Layer(
                    name=name, kind="dwconv" if _is_depthwise(module) else "conv",
                    cin=module.in_channels, cout=module.out_channels, kh=kh, kw=kw,
                    stride=module.stride[0], groups=module.groups,
                    in_h=x.shape[2], in_w=x.shape[3], out_h=output.shape[2], out_w=output.shape[3],
                    bias=module.bias is not None))
            elif isinstance(module, nn.Linear):
                uses = int(np.prod(x.shape[1:-1])) if x.dim() > 2 else 1
                records.append(Layer(name=name, kind="linear", cin=module.in_features,
                                     cout=module.out_features, bias=module.bias is not None, uses=uses))
            else:  # BatchNorm
                records.append(Layer(name=name, kind="bn", cin=module.num_features, cout=module.num_features,
                                     bias=True, in_h=x.shape[2] if x.dim() == 4 else 1,
                                     in_w=x.shape[3] if x.dim() == 4 else 1))
        return fn

    covered: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear) + _NORMS):
            if isinstance(module, _NORMS) and not module.affine:
                continue
            hooks.append(module.register_forward_hook(hook(name)))
            covered.update(id(p) for p in module.parameters(recurse=False))
        elif isinstance(module, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)):
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

    def _channels(self, kept: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Effective (cin, cout) of every layer."""
        r = np.asarray(kept, dtype=np.float64) / self.full
        cin = self._fixed_in + self.in_dims @ r
        cout = self._cout * np.append(r, 1.0)[self.out_unit]  # index -1 -> ratio 1
        return cin, cout

    def present(self, kept: Sequence[float]) -> np.ndarray:
        """Per layer: whether it still exists (False inside a removed block)."""
        alive = np.append(np.asarray(kept, dtype=np.float64) > 0, True)
        return alive[self.gate_unit]  # index -1 -> True

    def layer_costs(self, kept: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Per-layer (macs, params) with the given kept channels per unit."""
        cin, cout = self._channels(kept)
        on = self.present(kept)
        macs = np.array([layer.macs_at(cin=ci, cout=co) for layer, ci, co in zip(self.layers, cin, cout)])
        params = np.array([layer.params_at(cin=ci, cout=co) for layer, ci, co in zip(self.layers, cin, cout)])
        return macs * on, params * on

    def cost(self, kept: Sequence[float]) -> Cost:
        macs, params = self.layer_costs(kept)
        return Cost(macs=int(round(macs.sum())), params=int(round(params.sum())) + self.other_params)

    @property
    def full_cost(self) -> Cost:
        return self.cost(self.full)

    def kernels(self, kept: Sequence[float]) -> list[KernelSpec]:
        """The network's compute kernels with the given kept channels (BN is fused into its conv)."""
        cins, couts = self._channels(kept)
        out: list[KernelSpec] = []
        for layer, ci, co, on in zip(self.layers, cins, couts, self.present(kept)):
            if layer.kind == "bn" or not on:
                continue
            cin, cout = int(round(ci)), int(round(co))
            if layer.kind == "linear":
                out.append(KernelSpec("linear", cin, cout))
            else:
                out.append(KernelSpec(layer.kind, cin, cout, k=layer.kh, stride=layer.stride,
                                      h=layer.in_h, w=layer.in_w, relu=True))
        return out


def measure(model: nn.Module, example_input: torch.Tensor) -> Cost:
    """Exact MACs and parameters of a (possibly pruned) network, traced."""
    layers, _ = trace_layers(model, example_input)
    macs = sum(layer.macs for layer in layers)
    return Cost(macs=int(round(macs)), params=sum(p.numel() for p in model.parameters()))
