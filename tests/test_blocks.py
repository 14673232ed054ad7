"""Removing whole residual blocks (`prune_blocks`): a block whose inner channels are all removed
becomes its shortcut, and the cost model, kernel list, action wall, reconstruction and exporters
all agree with the network that is really built."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tiny_models import INPUT, TinyMobileNetV2, TinyResNet, randomize_bn

from compressor.config import Target
from compressor.cost import measure, trace_layers
from compressor.env import STATE_DIM, Budget, PruningEnv, make_budget
from compressor.export import AVAILABLE, export_model
from compressor.pruning import ChannelPruner
from compressor.reconstruct import Reconstructor, recalibrate_batchnorm
from compressor.strategies import make_strategy


@pytest.fixture(params=["resnet", "mobilenetv2"])
def tiny(request):
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet() if request.param == "resnet" else TinyMobileNetV2()).eval()
    x = torch.randn(*INPUT)
    return model, x, ChannelPruner(model, x, prune_blocks=True)


def _dropping(pruner: ChannelPruner, seed: int) -> list[int]:
    """A random policy that removes at least one block."""
    rng = random.Random(seed)
    kept = [rng.choice(u.candidates) for u in pruner.units]
    removable = [i for i, u in enumerate(pruner.units) if u.removable]
    kept[rng.choice(removable)] = 0
    return kept


def test_removable_units_are_the_insides_of_residual_blocks(tiny):
    model, _, pruner = tiny
    blocks = {u.block for u in pruner.units if u.removable}
    expected = {n for n, m in model.named_modules() if hasattr(m, "can_drop") and m.can_drop()}
    assert blocks == expected and blocks
    for u in pruner.units:
        assert (u.candidates[0] == 0) == u.removable
        assert u.kept_for(0.1) == (0 if u.removable else u.candidates[0])
        assert u.kept_for(0.2) > 0  # a_min itself keeps channels


def test_without_prune_blocks_nothing_is_removable(tiny):
    model, x, _ = tiny
    assert not any(u.removable for u in ChannelPruner(model, x).units)


@pytest.mark.parametrize("seed", range(4))
def test_removed_blocks_keep_shape_and_the_analytic_cost_is_exact(tiny, seed):
    model, x, pruner = tiny
    kept = _dropping(pruner, seed)
    pruned = pruner.apply(kept)
    assert pruned.dropped and all(not hasattr(dict(pruned.model.named_modules())[b], "conv1")
                                  or dict(pruned.model.named_modules())[b].dropped for b in pruned.dropped)
    with torch.inference_mode():
        assert pruned.model(x).shape == model(x).shape
    traced = measure(pruned.model, x)
    cost = pruner.cost_model.cost(kept)
    assert (cost.macs, cost.params) == (traced.macs, traced.params)
    layers, _ = trace_layers(pruned.model, x)
    kernels = pruner.cost_model.kernels(kept)
    # (a depthwise kernel is costed by its channels alone)
    assert [(k.op, k.cout, k.cin if k.op != "dwconv" else 0) for k in kernels] == \
        [(lay.kind, lay.cout, lay.cin if lay.kind != "dwconv" else 0) for lay in layers if lay.kind != "bn"]
    assert measure(model, x).macs > traced.macs
    # The original network is untouched.
    assert not any(getattr(m, "dropped", False) for m in model.modules())


def test_a_removed_identity_block_is_exactly_its_shortcut():
    torch.manual_seed(0)
    model = randomize_bn(TinyResNet()).eval()
    x = torch.randn(*INPUT)
    pruner = ChannelPruner(model, x, prune_blocks=True)
    kept = [0 if u.block == "layer1.1" else u.channels for u in pruner.units]
    pruned = pruner.apply(kept).model
    with torch.inference_mode():
        after_block0 = model.layer1[0](torch.relu(model.bn1(model.conv1(x))))
        want = model.linear(torch.nn.functional.adaptive_avg_pool2d(model.layer2(after_block0), 1).flatten(1))
        assert torch.allclose(pruned(x), want, atol=1e-6)


def test_reconstruction_and_bn_reestimation_skip_removed_blocks(tiny):
    model, x, pruner = tiny
    calib = torch.randn(16, *INPUT[1:])
    consumers = {name for u in pruner.units for name in u.in_layers}
    rec = Reconstructor(model, consumers, calib)
    pruned = pruner.apply(_dropping(pruner, 1))
    rec.apply(pruned)  # does not reach for a deleted layer
    assert not any(name.startswith(b + ".") for b in pruned.dropped for name in pruned.removed_in)
    recalibrate_batchnorm(pruned.model, calib)
    with torch.inference_mode():
        assert torch.isfinite(pruned.model(x)).all()


@pytest.mark.parametrize("fmt", sorted(AVAILABLE))
def test_exports_validate_with_removed_blocks(tiny, fmt, tmp_path):
    _, x, pruner = tiny
    pruned = pruner.apply(_dropping(pruner, 2)).model.eval()
    result = export_model(fmt, pruned, x, tmp_path / f"m.{fmt}")
    assert result.max_abs_diff < 1e-3 and result.path.is_file()


def _episode(env: PruningEnv, rng: np.random.Generator) -> list[int]:
    state = env.reset()
    while not env.done:
        assert state.shape == (STATE_DIM + 1,) and np.isfinite(state).all()
        unit = env.units[env.t]
        assert state[-1] == (1.0 if unit.removable else 0.0)
        state, _, _ = env.step(float(rng.uniform(0, 1)))
    return env.kept


@pytest.mark.parametrize("where", [0.05, 0.4, 0.8])
def test_action_wall_holds_with_removable_blocks(tiny, where):
    _, _, pruner = tiny
    cm = pruner.cost_model
    smallest = cm.cost([u.candidates[0] for u in pruner.units]).macs / cm.full_cost.macs
    budget = make_budget(Target("flops", smallest + where * (1 - smallest)), pruner)
    env = PruningEnv(pruner, budget=budget, a_min=0.2)
    rng = np.random.default_rng(0)
    removed = 0
    for _ in range(30):
        kept = _episode(env, rng)
        assert budget.cost(kept) <= budget.limit
        removed += sum(1 for k, u in zip(kept, pruner.units) if u.removable and k == 0)
    assert removed > 0  # actions below a_min do remove blocks


def test_action_wall_holds_with_a_non_monotone_latency_table(tiny):
    """A table whose prediction rises as some counts fall (as a measured table can): the wall checks
    each smaller count instead of bisecting, so every episode still meets the budget."""
    _, _, pruner = tiny
    cm = pruner.cost_model
    rng_bumps = np.random.default_rng(3)
    bumps = {(u, c): float(rng_bumps.uniform(0, 0.4)) for u, unit in enumerate(pruner.units) for c in unit.candidates}

    def latency(kept) -> float:  # FLOPs-like, plus a bump that is not monotone in the counts
        base = cm.cost(kept).macs / cm.full_cost.macs
        return base + sum(bumps[(u, int(k))] for u, k in enumerate(kept)) / len(kept)

    full = latency([u.channels for u in pruner.units])
    smallest = latency([u.candidates[0] for u in pruner.units])
    budget = Budget("latency-ms", smallest + 0.3 * (full - smallest), full, latency)
    env = PruningEnv(pruner, budget=budget, a_min=0.2)
    rng = np.random.default_rng(0)
    for _ in range(40):
        kept = _episode(env, rng)
        assert latency(kept) <= budget.limit


def test_strategies_act_below_a_min_only_where_blocks_are_removable(tiny):
    _, _, pruner = tiny
    cm = pruner.cost_model
    budget = make_budget(Target("flops", 0.6), pruner)
    for name in ("ddpg", "random"):
        strategy = make_strategy(name, pruner=pruner, budget=budget, a_min=0.2, warmup=5, seed=0)
        env = PruningEnv(pruner, budget=budget, a_min=0.2)
        state = env.reset()
        actions = []
        while not env.done:
            a = strategy.act(state, episode=0, step=env.t)
            actions.append(a)
            state, taken, kept = env.step(a)
            if not env.units[env.t - 1].removable:
                assert taken >= 0.2 - 1e-9
        assert all(0.0 <= a <= 1.0 for a in actions)
    assert cm.cost([u.candidates[-1] for u in pruner.units]).macs == cm.full_cost.macs


def test_search_with_removable_blocks_end_to_end(tmp_path):
    """A tight budget makes the search remove blocks; the outputs agree with each other: the report's
    kept counts, model.pt rebuilt, model.onnx, and the report's removed-block list."""
    import json

    import onnxruntime as ort

    from compressor.config import SearchConfig
    from compressor.search import load_pruned, run_search

    rng = np.random.default_rng(0)  # a small CIFAR-shaped set: the pipeline, not the accuracy, is under test
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=rng.integers(0, 256, (200, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 200))
    config = SearchConfig(model="tiny_models:TinyResNet", data=f"cifar10:{npz}", target="flops=0.25", episodes=6, warmup=2,
                          prune_blocks=True, strategy="random", finetune_epochs=1, seed=3)
    out = tmp_path / "out"
    report = run_search(config, out)
    assert report["budget"]["met"] and report["prune_blocks"]
    removed = [u["block"] for u in report["units"] if report["result"]["channels"][u["name"]] == 0]
    assert removed, "flops=0.25 is out of reach without removing a block"
    assert all(f"`{b}`" in (out / "report.md").read_text() for b in removed)
    policy = json.loads((out / "policy.json").read_text())
    assert sorted(p["block"] for p in policy if p.get("removed")) == sorted(removed)
    model = load_pruned(out / "model.pt")
    assert sum(p.numel() for p in model.parameters()) == report["result"]["params"]
    x = torch.randn(1, 3, 32, 32)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        want = model(x).numpy()
    assert np.abs(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0] - want).max() < 1e-4
    assert report["recovery"]["method"] == "distill" and report["recovery"]["epochs"] == 1


def test_uniform_policy_removes_the_fewest_blocks_evenly_and_seeds_the_searches():
    from compressor.strategies import uniform_policy

    model = load_model_resnet20()
    x = torch.zeros(1, 3, 32, 32)
    pruner = ChannelPruner(model, x, prune_blocks=True)
    cm = pruner.cost_model
    # A budget no single ratio reaches: even every unit at a_min keeps too many FLOPs.
    at_min = cm.cost([u.kept_for(0.2) for u in pruner.units]).macs / cm.full_cost.macs
    budget = make_budget(Target("flops", 0.8 * at_min), pruner)
    actions = uniform_policy(pruner, budget, a_min=0.2)
    env = PruningEnv(pruner, budget=budget, a_min=0.2)
    env.reset()
    for a in actions:
        env.step(a)
    assert budget.cost(env.kept) <= budget.limit
    removed = [i for i, k in enumerate(env.kept) if k == 0]
    assert removed and len(removed) < len(pruner.units) - 1
    assert not any(b - a == 1 for a, b in zip(removed, removed[1:])), f"not spread out: {removed}"
    ratio = max(actions)
    assert all(a in (0.0, ratio) for a in actions) and ratio >= 0.2
    for name in ("ddpg", "random"):
        strategy = make_strategy(name, pruner=pruner, budget=budget, a_min=0.2, warmup=5, seed=0)
        state = env.reset()
        played = []
        while not env.done:
            played.append(strategy.act(state, episode=0, step=env.t))
            state, _, _ = env.step(played[-1])
        assert played == actions
    # Without removals needed, no seeded first episode: AMC's own search (plus local moves unless turned off).
    loose = make_budget(Target("flops", 0.9), pruner)
    assert uniform_policy(pruner, loose, a_min=0.2) == [uniform_policy(pruner, loose, a_min=0.2)[0]] * len(pruner.units)
    assert type(make_strategy("ddpg", pruner=pruner, budget=loose, a_min=0.2, warmup=5, seed=0,
                              local_moves=False)).__name__ == "DDPGStrategy"
    assert type(make_strategy("ddpg", pruner=pruner, budget=loose, a_min=0.2, warmup=5, seed=0)).__name__ == "LocalSearch"


def load_model_resnet20():
    from compressor.zoo import load_model

    torch.manual_seed(0)
    return load_model("resnet20").model.eval()
