"""The per-op registry: everything the compressor knows about one kind of layer, in one entry.

An entry (`LayerOp`) says, for its kind of layer,

- tracing:        which modules it is (`matches`) and the `Layer` a forward pass records (`trace`);
- cost:           its multiply-accumulates and parameters at given channel counts (`macs_at`,
                  `params_at`), which `cost.CostModel` evaluates without building the pruned network;
- pruning:        the importance of its output channels (`channel_scores`), whether its output channels
                  are its input channels (`follows_input`: a depthwise conv belongs to the unit it
                  carries), whether magnitude pruning may zero its weights (`weighted`) and why a
                  module of this kind cannot be pruned (`refusal`). The surgery itself is torch-pruning's
                  own per-op registry;
- reconstruction: how its least-squares refit sees its input (`refit`: im2col rows for a conv, rows
                  for a linear, None for layers that are not refitted);
- latency:        the fused kernel the runtime executes for it (`kernel`; None when it is fused into the
                  kernel that produced its input, as BatchNorm is).

Adding a layer type is adding one subclass to `OPS`; `tests/test_ops.py` fails when a registered kind
lacks any part. `cost.trace_layers`, `pruning`, `reconstruct`, `kernel_space` and the profiler's kernel
extraction all ask this registry instead of testing module types themselves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.latency import KernelSpec

LayerKind = Literal["conv", "dwconv", "linear", "bn"]

# Modules with channels that we cannot cost or prune: tracing refuses them instead of miscounting.
UNSUPPORTED: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose2d)


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
    def op(self) -> LayerOp:
        return OPS[self.kind]

    @property
    def macs(self) -> float:
        return self.macs_at(cin=self.cin, cout=self.cout)

    @property
    def params(self) -> float:
        return self.params_at(cin=self.cin, cout=self.cout)

    def macs_at(self, *, cin: float, cout: float) -> float:
        return self.op.macs_at(self, cin=cin, cout=cout)

    def params_at(self, *, cin: float, cout: float) -> float:
        return self.op.params_at(self, cin=cin, cout=cout)


class Refit(ABC):
    """How a layer's least-squares reconstruction sees its input: rows X with X·Wᵀ its output
    (`W` the weight flattened to out × `dim`), and which columns of W its `inputs` channels own."""

    inputs: int  # input channels (unpruned)
    dim: int  # columns of the flattened weight

    @abstractmethod
    def features(self, x: torch.Tensor, points: int, gen: torch.Generator) -> torch.Tensor:
        """Rows of X at `points` random positions per sample (rows × dim)."""

    @abstractmethod
    def columns(self, kept_inputs: Collection[int]) -> torch.Tensor:
        """Indices of W's columns that belong to the kept input channels."""


class Im2col(Refit):
    """A k×k convolution as a matrix product over im2col patches."""

    def __init__(self, conv: nn.Conv2d, padding: tuple[int, ...]):
        self.conv = conv
        self.padding = padding
        self.kk = conv.kernel_size[0] * conv.kernel_size[1]
        self.inputs = conv.in_channels
        self.dim = conv.in_channels * self.kk

    def features(self, x: torch.Tensor, points: int, gen: torch.Generator) -> torch.Tensor:
        m = self.conv
        cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=self.padding,
                        stride=m.stride)  # B × (C·kh·kw) × L
        b, d, L = cols.shape
        k = min(points, L)
        pos = torch.stack([torch.randperm(L, generator=gen)[:k] for _ in range(b)])  # B × k
        picked = torch.gather(cols, 2, pos.unsqueeze(1).expand(b, d, k))
        return picked.permute(0, 2, 1).reshape(b * k, d)

    def columns(self, kept_inputs: Collection[int]) -> torch.Tensor:
        return torch.tensor([c * self.kk + j for c in kept_inputs for j in range(self.kk)])


class Rows(Refit):
    """A linear layer: every input vector is a row."""

    def __init__(self, linear: nn.Linear):
        self.inputs = self.dim = linear.in_features

    def features(self, x: torch.Tensor, points: int, gen: torch.Generator) -> torch.Tensor:
        return x.reshape(-1, x.shape[-1])

    def columns(self, kept_inputs: Collection[int]) -> torch.Tensor:
        return torch.tensor(list(kept_inputs))


class LayerOp(ABC):
    """One kind of layer: how it is traced, costed, pruned, reconstructed and timed."""

    kind: ClassVar[LayerKind]
    module_type: ClassVar[type[nn.Module] | tuple[type[nn.Module], ...]]
    # Its output channels are its input channels (it joins the unit that feeds it).
    follows_input: ClassVar[bool] = False
    # Magnitude pruning may zero its weights; its bias is a fixed cost.
    weighted: ClassVar[bool] = True

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, self.module_type)

    def traced(self, module: nn.Module) -> bool:
        """Whether tracing records this module (one without weights costs nothing)."""
        return True

    @abstractmethod
    def trace(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> Layer:
        """The record of one call: `x` is the module's input, `output` its output."""

    @abstractmethod
    def macs_at(self, layer: Layer, *, cin: float, cout: float) -> float: ...

    @abstractmethod
    def params_at(self, layer: Layer, *, cin: float, cout: float) -> float: ...

    @abstractmethod
    def channel_scores(self, module: nn.Module) -> torch.Tensor | None:
        """Importance of each output channel (L1 of the filter that produces it), or None when the
        layer produces no channels of its own."""

    def refusal(self, module: nn.Module) -> str | None:
        """Why a unit containing this module cannot be pruned, or None."""
        return None

    @abstractmethod
    def refit(self, module: nn.Module) -> Refit | None:
        """How reconstruction refits this module, or None when it is not refitted."""

    @abstractmethod
    def kernel(self, layer: Layer, *, cin: int, cout: int) -> KernelSpec | None:
        """The fused latency kernel at these channel counts, or None when the layer is fused into
        the kernel that produced its input."""


def _l1_per_output(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight.detach().abs().double().flatten(1).sum(1)


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _numeric_padding(conv: nn.Conv2d) -> tuple[int, ...] | None:
    """The conv's padding as numbers (None for 'same' with an even kernel: padded unevenly)."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
    return tuple(r // 2 for r in reach) if all(r % 2 == 0 for r in reach) else None


class _Conv2dOp(LayerOp):
    module_type = nn.Conv2d
    kernel_op: ClassVar[Literal["conv", "dwconv"]]

    def trace(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> Layer:
        assert isinstance(module, nn.Conv2d)
        kh, kw = module.kernel_size
        return Layer(name=name, kind=self.kind, cin=module.in_channels, cout=module.out_channels, kh=kh, kw=kw,
                     stride=module.stride[0], groups=module.groups,
                     in_h=x.shape[2], in_w=x.shape[3], out_h=output.shape[2], out_w=output.shape[3],
                     bias=module.bias is not None)

    def _per_output(self, layer: Layer, cin: float) -> float:
        """Multiply-accumulates per output value."""
        return layer.kh * layer.kw * (cin / layer.groups)

    def macs_at(self, layer: Layer, *, cin: float, cout: float) -> float:
        return layer.out_h * layer.out_w * layer.uses * self._per_output(layer, cin) * cout

    def params_at(self, layer: Layer, *, cin: float, cout: float) -> float:
        return self._per_output(layer, cin) * cout + (cout if layer.bias else 0)

    def channel_scores(self, module: nn.Module) -> torch.Tensor | None:
        return _l1_per_output(module)

    def kernel(self, layer: Layer, *, cin: int, cout: int) -> KernelSpec | None:
        # The runtime fuses the BatchNorm and activation that follow a convolution into it.
        return KernelSpec(self.kernel_op, cin, cout, k=layer.kh, stride=layer.stride, h=layer.in_h, w=layer.in_w,
                          relu=True)


class Conv2dOp(_Conv2dOp):
    """A dense (or grouped) 2-D convolution."""

    kind = "conv"
    kernel_op = "conv"

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d) and not _is_depthwise(module)

    def refusal(self, module: nn.Module) -> str | None:
        assert isinstance(module, nn.Conv2d)
        # A grouped convolution couples channels within groups, which the units do not model.
        return "grouped convolution" if module.groups > 1 else None

    def refit(self, module: nn.Module) -> Refit | None:
        assert isinstance(module, nn.Conv2d)
        padding = _numeric_padding(module)
        return Im2col(module, padding) if module.groups == 1 and padding is not None else None


class DepthwiseConv2dOp(_Conv2dOp):
    """A depthwise convolution (groups == in == out channels): one filter per channel, so it carries
    its input's channels and costs by its channel count alone."""

    kind = "dwconv"
    kernel_op = "dwconv"
    follows_input = True

    def matches(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Conv2d) and _is_depthwise(module)

    def _per_output(self, layer: Layer, cin: float) -> float:
        return layer.kh * layer.kw * 1

    def refit(self, module: nn.Module) -> Refit | None:
        return None  # one input channel per output: removing inputs removes the outputs too


class LinearOp(LayerOp):
    """A fully connected layer, applied at `uses` positions (1 for N×C inputs)."""

    kind = "linear"
    module_type = nn.Linear

    def trace(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> Layer:
        assert isinstance(module, nn.Linear)
        uses = int(np.prod(x.shape[1:-1])) if x.dim() > 2 else 1
        return Layer(name=name, kind="linear", cin=module.in_features, cout=module.out_features,
                     bias=module.bias is not None, uses=uses)

    def macs_at(self, layer: Layer, *, cin: float, cout: float) -> float:
        return layer.uses * cin * cout

    def params_at(self, layer: Layer, *, cin: float, cout: float) -> float:
        return cin * cout + (cout if layer.bias else 0)

    def channel_scores(self, module: nn.Module) -> torch.Tensor | None:
        return _l1_per_output(module)

    def refit(self, module: nn.Module) -> Refit | None:
        assert isinstance(module, nn.Linear)
        return Rows(module)

    def kernel(self, layer: Layer, *, cin: int, cout: int) -> KernelSpec | None:
        return KernelSpec("linear", cin, cout)


class BatchNormOp(LayerOp):
    """BatchNorm: two parameters per channel, no multiply-accumulates (folded into the conv before it
    at inference), re-estimated after pruning rather than refitted."""

    kind = "bn"
    module_type = (nn.BatchNorm1d, nn.BatchNorm2d)
    follows_input = True
    weighted = False

    def traced(self, module: nn.Module) -> bool:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        return module.affine

    def trace(self, name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> Layer:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        return Layer(name=name, kind="bn", cin=module.num_features, cout=module.num_features, bias=True,
                     in_h=x.shape[2] if x.dim() == 4 else 1, in_w=x.shape[3] if x.dim() == 4 else 1)

    def macs_at(self, layer: Layer, *, cin: float, cout: float) -> float:
        return 0

    def params_at(self, layer: Layer, *, cin: float, cout: float) -> float:
        return 2 * cout

    def channel_scores(self, module: nn.Module) -> torch.Tensor | None:
        return None

    def refit(self, module: nn.Module) -> Refit | None:
        return None

    def kernel(self, layer: Layer, *, cin: int, cout: int) -> KernelSpec | None:
        return None


OPS: dict[LayerKind, LayerOp] = {op.kind: op for op in (Conv2dOp(), DepthwiseConv2dOp(), LinearOp(), BatchNormOp())}


def op_for(module: nn.Module) -> LayerOp | None:
    """The registry entry for a module, or None for modules without one (activations, pooling, containers)."""
    for op in OPS.values():
        if op.matches(module):
            return op
    return None


def unit_root_types() -> tuple[type[nn.Module], ...]:
    """Module types that make channels of their own (not `follows_input`): the roots of units."""
    types: list[type[nn.Module]] = []
    for op in OPS.values():
        if op.follows_input:
            continue
        for t in op.module_type if isinstance(op.module_type, tuple) else (op.module_type,):
            if t not in types:
                types.append(t)
    return tuple(types)
