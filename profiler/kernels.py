"""Kernels as the runtime executes them (conv+BN+ReLU fused into one), read from a PyTorch model, and
the tiny single-kernel models the lookup table times.

`extract_kernels` hooks every leaf module during one forward pass: a layer the compressor's per-op
registry knows (`compressor.ops`: conv, depthwise conv, linear, BatchNorm) becomes the kernel its entry
names, or folds into the kernel before it (BatchNorm); pooling becomes a pool kernel and an activation
folds into the kernel that produced its input. Functional ops (`F.relu`, `x + y`) are invisible to
hooks; the search's own kernel list (`compressor.kernel_space.network_kernels`) is the authority, this
is the fallback and the tool for tests.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from compressor.latency import KernelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

_ACTS = ("ReLU", "ReLU6", "Hardtanh", "LeakyReLU", "Hardswish", "SiLU")


def extract_kernels(model: torch.nn.Module, example_input: torch.Tensor) -> list[KernelSpec]:
    """The model's fused kernels in forward order (a depthwise conv has groups == cin == cout)."""
    import torch
    from torch import nn

    from compressor.ops import op_for

    kernels: list[KernelSpec] = []
    owner: dict[int, int] = {}  # id(output tensor) -> index of the kernel that produced it
    hooks = []

    def on_forward(module: nn.Module, inputs, output) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
            return
        op = op_for(module)
        spec = None
        if op is not None:
            layer = op.trace("", module, x, output)
            spec = op.kernel(layer, cin=layer.cin, cout=layer.cout)
        if spec is not None:
            # The activation is fused below, only where one really follows.
            kernels.append(replace(spec, relu=False))
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            c, h, w = int(x.shape[1]), int(x.shape[2]), int(x.shape[3])
            if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                k, s = 0, 1  # k = 0: global pooling
            else:
                k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
                s = module.stride if isinstance(module.stride, int) else (module.stride or (k,))[0]
            kernels.append(KernelSpec("pool", c, c, k=int(k), stride=int(s), h=h, w=w))
        elif op is not None or type(module).__name__ in _ACTS:
            # A layer without a kernel of its own (BatchNorm) or an activation: folded into the kernel
            # that produced its input (in-place ReLU returns the same tensor).
            i = owner.get(id(x))
            if i is None:
                return
            if type(module).__name__ in _ACTS:
                kernels[i] = replace(kernels[i], relu=True)
            owner[id(output)] = i
            return
        else:
            return
        owner[id(output)] = len(kernels) - 1

    for module in model.modules():
        if not list(module.children()):
            hooks.append(module.register_forward_hook(on_forward))
    try:
        with torch.inference_mode():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()
    return kernels


def kernel_module(spec: KernelSpec) -> tuple[torch.nn.Module, torch.Tensor]:
    """A one-kernel network (conv+BN+ReLU, linear, add or pool) and an input for it."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if spec.op in ("conv", "dwconv"):
        groups = spec.cin if spec.op == "dwconv" else 1
        cout = spec.cin if spec.op == "dwconv" else spec.cout
        layers: list[nn.Module] = [nn.Conv2d(spec.cin, cout, spec.k, stride=spec.stride, padding=spec.k // 2,
                                             groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if spec.relu:
            layers.append(nn.ReLU())
        return nn.Sequential(*layers), torch.randn(1, spec.cin, spec.h, spec.w)
    if spec.op == "linear":
        layers = [nn.Linear(spec.cin, spec.cout)] + ([nn.ReLU()] if spec.relu else [])
        return nn.Sequential(*layers), torch.randn(1, spec.cin)
    if spec.op == "add":
        return _Add(spec.cin, spec.relu), torch.randn(1, spec.cin, spec.h, spec.w)
    if spec.op == "pool":
        pool = nn.AdaptiveAvgPool2d(1) if spec.k <= 0 or spec.k >= max(spec.h, spec.w) \
            else nn.AvgPool2d(spec.k, stride=spec.stride)
        return pool, torch.randn(1, spec.cin, spec.h, spec.w)
    raise ValueError(f"unknown kernel op {spec.op!r}")


def _add_module():
    from torch import nn

    class Add(nn.Module):
        """A residual addition (one broadcast Add the runtime cannot fold away)."""

        def __init__(self, channels: int, relu: bool):
            super().__init__()
            import torch

            self.bias = nn.Parameter(torch.randn(1, channels, 1, 1))
            self.relu = relu

        def forward(self, x):
            y = x + self.bias
            return y.relu() if self.relu else y

    return Add


def _Add(channels: int, relu: bool):  # noqa: N802 - factory that looks like a class
    return _add_module()(channels, relu)


def kernel_macs(spec: KernelSpec) -> float:
    """Multiply-accumulates of a kernel (elementwise ops count one per output element)."""
    h_out = math.ceil(spec.h / max(spec.stride, 1))
    w_out = math.ceil(spec.w / max(spec.stride, 1))
    if spec.op == "conv":
        return spec.k * spec.k * spec.cin * spec.cout * h_out * w_out
    if spec.op == "dwconv":
        return spec.k * spec.k * spec.cout * h_out * w_out
    if spec.op == "linear":
        return spec.cin * spec.cout * spec.h * spec.w
    return spec.cin * spec.h * spec.w


def search_kernels(model: torch.nn.Module, example_input: torch.Tensor) -> list[KernelSpec]:
    """The kernel list exactly as the search builds it (`compressor.kernel_space.network_kernels`), so
    that calibrations learned from measured models match the search's predictions. Falls back to
    `extract_kernels` when the compressor cannot read the model."""
    from compressor.kernel_space import network_kernels

    try:
        return network_kernels(model, example_input)
    except Exception:  # an unsupported layer: the hooks still give a usable list
        return extract_kernels(model, example_input)
