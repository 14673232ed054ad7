"""Dependency-aware channel pruning, the exact cost model, and least-squares reconstruction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import INPUT, TINY_MODELS, randomize_bn
from torch import nn

from compressor.cost import measure
from compressor.pruning import ChannelPruner, MagnitudePruner, candidate_counts, count_nonzero_params
from compressor.reconstruct import Reconstructor, recalibrate_batchnorm


@pytest.fixture(params=sorted(TINY_MODELS))
def tiny(request):
    torch.manual_seed(0)
    return request.param, randomize_bn(TINY_MODELS[request.param]())


def test_candidate_counts_are_rounded_and_bounded():
    assert candidate_counts(64, a_min=0.2, round_to=8) == [16, 24, 32, 40, 48, 56, 64]
    assert candidate_counts(16, a_min=0.2, round_to=8) == [8, 16]
    assert candidate_counts(12, a_min=0.2, round_to=8) == [8, 12]
    assert candidate_counts(4, a_min=0.2, round_to=8) == [4]
    assert candidate_counts(10, a_min=0.5, round_to=1) == [5, 6, 7, 8, 9, 10]


@pytest.mark.parametrize("prune_residual", [False, True])
def test_cost_model_matches_really_pruned_networks(tiny, prune_residual):
    """The analytic MACs/params of any kept configuration equal those traced on the pruned network,
    and the pruned network still maps the input to the same output shape."""
    _, model = tiny
    x = torch.randn(INPUT)
    pruner = ChannelPruner(model, x, prune_residual=prune_residual)
    full = pruner.cost_model.cost(pruner.cost_model.full)
    assert full == measure(model, x)
    assert full.params == sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    for _ in range(4):
        kept = [int(rng.choice(u.candidates)) for u in pruner.units]
        pruned = pruner.apply(kept)
        assert pruned.model(x).shape == model(x).shape
        assert measure(pruned.model, x) == pruner.cost_model.cost(kept)
    smallest = pruner.cost_model.cost([u.candidates[0] for u in pruner.units])
    assert smallest.macs < full.macs


def test_apply_leaves_the_original_untouched(tiny):
    _, model = tiny
    x = torch.randn(INPUT)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = ChannelPruner(model, x)
    pruner.apply([u.candidates[0] for u in pruner.units])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_option_a_shortcut_channels_are_not_pruned_but_block_internals_are():
    model = randomize_bn(TINY_MODELS["resnet"]())
    pruner = ChannelPruner(model, torch.randn(INPUT), prune_residual=True)
    assert [u.name for u in pruner.units] == ["layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.1.conv1"]
    assert any("ConstantPadNd" in s for s in pruner.skipped)


def test_residual_channels_move_together_in_inverted_residuals():
    model = randomize_bn(TINY_MODELS["mobilenetv2"]())
    x = torch.randn(INPUT)
    without = ChannelPruner(model, x)
    with_res = ChannelPruner(model, x, prune_residual=True)
    assert not any(u.residual for u in without.units)
    residual = [u for u in with_res.units if u.residual]
    assert residual, "the residual stream of the inverted residual blocks should be a unit"
    unit = residual[0]
    kept = [u.channels if u is not unit else u.candidates[0] for u in with_res.units]
    pruned = with_res.apply(kept).model
    modules = dict(pruned.named_modules())
    # every producer on the residual stream lost the same channels
    widths = {modules[name].out_channels if isinstance(modules[name], nn.Conv2d) else modules[name].num_features
              for name in unit.out_layers}
    assert widths == {unit.candidates[0]}
    assert pruned(x).shape == (1, 10)


def test_depthwise_convolutions_follow_their_producer():
    model = randomize_bn(TINY_MODELS["mobilenetv2"]())
    pruner = ChannelPruner(model, torch.randn(INPUT))
    unit = pruner.units[0]
    pruned = pruner.apply([u.candidates[0] if u is unit else u.channels for u in pruner.units]).model
    dw = dict(pruned.named_modules())["blocks.0.conv.3"]
    assert dw.groups == dw.in_channels == dw.out_channels == unit.candidates[0]


def test_l1_order_keeps_the_largest_filters():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.01)
        model[0].weight[[3, 7, 11, 12, 13, 14, 15, 0]] *= 1000  # the 8 biggest filters
    pruner = ChannelPruner(model, torch.randn(1, 3, 8, 8), round_to=8)
    assert sorted(pruner.units[0].order[:8].tolist()) == [0, 3, 7, 11, 12, 13, 14, 15]


def test_reconstruction_lowers_the_consumer_output_error(tiny):
    """Same kept channels, with and without least-squares re-fitting, measured on held-out inputs."""
    name, model = tiny
    torch.manual_seed(1)
    x = torch.randn(INPUT)
    pruner = ChannelPruner(model, x, prune_residual=name == "mobilenetv2")
    consumers = {n for u in pruner.units for n in u.in_layers}
    calibration, held_out = torch.randn(96, *INPUT[1:]), torch.randn(64, *INPUT[1:])
    rec = Reconstructor(model, consumers, calibration)
    kept = [u.candidates[0] for u in pruner.units]
    reference = model(held_out)

    plain = pruner.apply(kept)
    refit = pruner.apply(kept)
    assert rec.apply(refit) > 0
    err_plain = (plain.model(held_out) - reference).pow(2).mean().item()
    err_refit = (refit.model(held_out) - reference).pow(2).mean().item()
    assert err_refit < err_plain

    # and at the level of one consumer layer: its output matches the unpruned layer's better
    consumer = pruner.units[-1].in_layers[0]  # its output channels are not pruned
    outputs = {}

    def grab(key):
        return lambda m, i, o: outputs.__setitem__(key, o.detach())

    hooks = [dict(model.named_modules())[consumer].register_forward_hook(grab("ref")),
             dict(plain.model.named_modules())[consumer].register_forward_hook(grab("plain")),
             dict(refit.model.named_modules())[consumer].register_forward_hook(grab("refit"))]
    model(held_out), plain.model(held_out), refit.model(held_out)
    for h in hooks:
        h.remove()
    e_plain = (outputs["plain"] - outputs["ref"]).pow(2).mean()
    e_refit = (outputs["refit"] - outputs["ref"]).pow(2).mean()
    assert e_refit < e_plain


def test_batchnorm_recalibration_sets_statistics_of_the_data():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)).eval()
    images = torch.randn(64, 3, 8, 8) * 3 + 2
    recalibrate_batchnorm(model, images, batch_size=16)
    with torch.no_grad():
        feats = model[0](images)
    assert torch.allclose(model[1].running_mean, feats.mean(dim=(0, 2, 3)), atol=1e-4)
    assert not model[1].training and model[1].momentum == 0.1


def test_magnitude_pruning_zeroes_the_smallest_weights():
    torch.manual_seed(0)
    model = randomize_bn(TINY_MODELS["vgg"]())
    x = torch.randn(INPUT)
    pruner = MagnitudePruner(model, x)
    kept = [u.candidates[len(u.candidates) // 2] for u in pruner.units]
    pruned = pruner.apply(kept)
    modules = dict(pruned.model.named_modules())
    for unit, k in zip(pruner.units, kept):
        w = modules[unit.name].weight
        assert int((w != 0).sum()) == k
        original = dict(model.named_modules())[unit.name].weight
        threshold = original.abs().flatten().sort(descending=True).values[k - 1]
        assert (w[w != 0].abs() >= threshold - 1e-12).all()
    cost = pruner.cost_model.cost(kept)
    assert cost.params == count_nonzero_params(pruned.model)  # no weight of the random model is exactly 0
    assert pruned.model(x).shape == (1, 10)
