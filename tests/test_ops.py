"""The per-op registry (compressor.ops): every registered layer kind has every part — tracing, cost,
pruning, reconstruction, latency kernel — and each part agrees with the real module."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from compressor.cost import trace_layers
from compressor.kernel_space import network_kernels
from compressor.ops import OPS, Layer, LayerOp, op_for
from profiler.kernels import extract_kernels, kernel_module

# One small module per registered kind, with an input. A kind registered without an example here
# fails `test_every_registered_kind_has_an_example`.
EXAMPLES = {
    "conv": lambda: (nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=True), torch.randn(2, 4, 9, 9)),
    "dwconv": lambda: (nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), torch.randn(2, 6, 8, 8)),
    "linear": lambda: (nn.Linear(12, 5), torch.randn(2, 3, 12)),  # applied at 3 positions
    "bn": lambda: (nn.BatchNorm2d(6), torch.randn(2, 6, 5, 5)),
}


def _example(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, Layer]:
    torch.manual_seed(0)
    module, x = EXAMPLES[kind]()
    module.eval()
    with torch.no_grad():
        y = module(x)
    layers, _ = trace_layers(nn.Sequential(module), x)
    assert len(layers) == 1
    return module, x, y, layers[0]


def test_every_registered_kind_has_an_example():
    assert set(OPS) == set(EXAMPLES)
    assert all(op.kind == kind and isinstance(op, LayerOp) for kind, op in OPS.items())


# The parts an entry must have: tracing, cost, pruning, reconstruction, latency kernel.
PARTS = {"trace", "macs_at", "params_at", "channel_scores", "refit", "kernel"}


def test_every_part_is_required_of_an_entry():
    assert LayerOp.__abstractmethods__ == PARTS


@pytest.mark.parametrize("part", sorted(PARTS))
def test_an_entry_lacking_a_part_cannot_be_made(part):
    others = {name: (lambda *args, **kwargs: None) for name in PARTS - {part}}
    incomplete = type("Incomplete", (LayerOp,), {"kind": "conv", "module_type": nn.Conv2d, **others})
    with pytest.raises(TypeError, match=part):
        incomplete()


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_tracing_finds_the_entry(kind):
    module, _, _, layer = _example(kind)
    assert op_for(module) is OPS[kind]
    assert layer.kind == kind and layer.op is OPS[kind]


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_cost_at_full_width_is_the_modules_own(kind):
    module, x, y, layer = _example(kind)
    op = OPS[kind]
    assert op.params_at(layer, cin=layer.cin, cout=layer.cout) == sum(p.numel() for p in module.parameters())
    weight = module.weight
    # One multiply-accumulate per weight entry of an output's filter, per output value (BN: folded).
    per_output = weight[0].numel() if op.weighted else 0
    assert op.macs_at(layer, cin=layer.cin, cout=layer.cout) == y[0].numel() * per_output
    # Fewer output channels cost less, never more.
    half = op.params_at(layer, cin=layer.cin, cout=layer.cout / 2)
    assert half < op.params_at(layer, cin=layer.cin, cout=layer.cout)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_channel_scores_rank_output_channels(kind):
    module, _, _, layer = _example(kind)
    scores = OPS[kind].channel_scores(module)
    if scores is None:
        assert OPS[kind].follows_input  # a layer without channels of its own joins its input's unit
        return
    assert scores.shape == (layer.cout,) and bool((scores >= 0).all())


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_refit_features_reproduce_the_output(kind):
    module, x, y, _ = _example(kind)
    refit = OPS[kind].refit(module)
    if refit is None:
        assert kind in ("dwconv", "bn")  # one input per output, or re-estimated instead
        return
    _check_refit(module, x, y)


def test_a_conv_padded_by_name_is_refitted_as_padded_by_numbers():
    torch.manual_seed(0)
    module, x = nn.Conv2d(4, 6, 3, padding="same", dilation=2), torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        _check_refit(module, x, module(x))
    assert OPS["conv"].refit(nn.Conv2d(4, 6, 2, padding="same")) is None  # uneven padding: not refitted


def _check_refit(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    op = op_for(module)
    assert op is not None
    refit = op.refit(module)
    assert refit is not None
    gen = torch.Generator().manual_seed(0)
    rows = refit.features(x, 10_000, gen)  # every position, in a random order
    assert rows.shape[1] == refit.dim
    w = module.weight.detach().flatten(1)
    fitted = rows @ w.T + module.bias.detach()
    assert w.shape[1] == refit.dim
    want = y.movedim(1, -1).reshape(-1, w.shape[0]) if y.dim() == 4 else y.reshape(-1, w.shape[0])
    assert torch.allclose(fitted.sort(0).values, want.sort(0).values, atol=1e-5)
    # The columns of the kept input channels: all of them, in order, and those of one channel.
    assert refit.columns(range(refit.inputs)).tolist() == list(range(refit.dim))
    assert len(refit.columns([1])) * refit.inputs == refit.dim


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_latency_kernel_matches_the_hooked_kernel(kind):
    module, x, _, layer = _example(kind)
    spec = OPS[kind].kernel(layer, cin=layer.cin, cout=layer.cout)
    seen = extract_kernels(nn.Sequential(module), x)
    if spec is None:  # fused into the kernel before it
        assert seen == [] and network_kernels(nn.Sequential(module), x) == []
        return
    assert (spec.op, spec.cin, spec.cout) == (layer.kind, layer.cin, layer.cout)
    assert [replace(k, relu=False) for k in network_kernels(nn.Sequential(module), x)] == seen
    built, inp = kernel_module(spec)  # the profiler can time it
    assert built(inp).shape[0] == 1
