"""The kernel space (compressor.kernel_space): the kernels a model can run as once pruned, owned by the
compressor and used by the profiler's lookup tables. Every variant the search can produce — with
residual pruning, with whole blocks removed — is made of kernels the space lists."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import INPUT, TINY_MODELS, randomize_bn

from compressor import kernel_space as ks
from compressor.latency import KernelSpec
from compressor.pruning import candidate_counts
from profiler.lut import kernel_grid, model_kernels, shape_key


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_bn(TINY_MODELS[name]()).eval()


def _comparable(k: KernelSpec) -> tuple:
    # A depthwise kernel is one channel count (its input is its output); the table keys it so.
    return (shape_key(k), k.cout, k.cin if k.op != "dwconv" else 0)


def test_the_candidate_counts_are_the_pruners():
    assert ks.candidate_counts is candidate_counts


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_variants_are_built_as_their_kernels_say_and_the_space_covers_them(name):
    """Including a layer after a concatenation, whose input width is any sum of its units' counts."""
    model, x = _model(name), torch.randn(*INPUT)
    space = ks.kernel_space(model, x, a_min=0.2, round_to=4, prune_residual=True)
    assert space.kernels == ks.network_kernels(model, x)
    rng = random.Random(0)
    for variant in [space.narrowest()] + [space.sample(rng) for _ in range(4)]:
        assert len(variant.kernels) == len(space.kernels)  # no block removed without prune_blocks
        built = ks.network_kernels(variant.build(), x)
        assert [_comparable(k) for k in variant.kernels] == [_comparable(k) for k in built]
        for k, cins, couts in zip(variant.kernels, space.cin_options, space.cout_options, strict=True):
            assert k.cout in couts and (k.op == "dwconv" or k.cin in cins)


@pytest.mark.parametrize("arch", ["resnet", "mobilenetv2"])
def test_removed_blocks_produce_no_kernels(arch):
    model, x = _model(arch), torch.randn(*INPUT)
    space = ks.kernel_space(model, x, a_min=0.2, round_to=8, prune_blocks=True)
    removable = [u for u, c in enumerate(space.candidates) if c[0] == 0]
    assert removable and all(c[0] > 0 for u, c in enumerate(space.candidates) if u not in removable)
    assert len(space.narrowest().kernels) == len(space.kernels)  # the narrowest keeps every block
    rng = random.Random(1)
    removed_some = False
    for _ in range(12):
        variant = space.sample(rng)
        dropped = sum(1 for u in removable if variant.kept[u] == 0)
        removed_some |= dropped > 0
        built = variant.build()
        assert [_comparable(k) for k in variant.kernels] == [_comparable(k) for k in ks.network_kernels(built, x)]
        assert (len(variant.kernels) < len(space.kernels)) == (dropped > 0)
        # Every remaining kernel is one the space lists, at counts it lists for that kernel.
        slots = space.pruner.cost_model.kernel_slots(variant.kept)
        assert [k for k in slots if k is not None] == variant.kernels
        for k, full, cins, couts in zip(slots, space.kernels, space.cin_options, space.cout_options, strict=True):
            if k is not None:
                assert shape_key(k) == shape_key(full) and k.cout in couts and (k.op == "dwconv" or k.cin in cins)
    assert removed_some


def test_the_profiler_tables_cover_the_search_settings():
    """`model_kernels` (what a lookup table times) is the kernel space with the same settings: with
    residual pruning, the widths of residual stages become prunable and the grid grows."""
    model, x = _model("mobilenetv2"), torch.randn(*INPUT)
    plain = model_kernels(model, x, round_to=8, a_min=0.2)
    residual = model_kernels(model, x, round_to=8, a_min=0.2, prune_residual=True)
    space = ks.kernel_space(model, x, a_min=0.2, round_to=8, prune_residual=True)
    assert (residual.kernels, residual.cin_options, residual.cout_options) == \
        (space.kernels, space.cin_options, space.cout_options)
    assert len(kernel_grid(residual)) > len(kernel_grid(plain))


def test_assumed_space_for_kernels_without_a_pruner():
    kernels = [KernelSpec("conv", 3, 32, k=3, h=8, w=8), KernelSpec("linear", 32, 10)]
    space = ks.KernelSpace.assumed(kernels, a_min=0.25, round_to=8)
    assert space.cin_options == [[3], [8, 16, 24, 32]] and space.cout_options == [[8, 16, 24, 32], [10]]
    free = ks.KernelSpace.assumed(kernels, a_min=0.25, round_to=8, fixed_ends=False)
    assert free.cin_options[0] == [3] and free.cout_options[-1] == [8, 10]
    with pytest.raises(ValueError, match="no variants"):
        space.narrowest()
