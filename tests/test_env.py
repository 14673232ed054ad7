"""The AMC environment: state features, and the action wall that keeps every episode within budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.config import Target
from compressor.cost import measure
from compressor.env import STATE_DIM, PruningEnv, make_budget
from compressor.errors import BudgetInfeasible
from compressor.pruning import ChannelPruner, MagnitudePruner
from compressor.strategies import uniform_ratio
from compressor.zoo import load_model

ZOO = ["demo-cnn", "resnet56", "mobilenet-v2", "vgg11"]


@pytest.fixture(scope="module", params=ZOO)
def zoo_pruner(request):
    loaded = load_model(request.param)
    x = torch.randn(1, *loaded.entry.input_shape)
    return request.param, loaded.model, x, ChannelPruner(loaded.model, x)


def _episode(env: PruningEnv, actions) -> list[int]:
    state = env.reset()
    while not env.done:
        assert state.shape == (STATE_DIM,) and np.isfinite(state).all()
        assert (state[:8] >= 0).all() and (state[:8] <= 1).all()
        state, _, _ = env.step(next(actions))
    return env.kept


@pytest.mark.parametrize("kind", ["flops", "params"])
@pytest.mark.parametrize("where", [0.02, 0.3, 0.7])
def test_every_episode_meets_the_budget(zoo_pruner, kind, where):
    """Random, greedy-max and greedy-min policies all end within budget by construction, for targets
    spread over each model's reachable range (`where` = 0 is the smallest reachable budget)."""
    name, model, x, pruner = zoo_pruner
    full = pruner.cost_model.cost(pruner.cost_model.full)
    low = pruner.cost_model.cost([u.candidates[0] for u in pruner.units])
    smallest = low.macs / full.macs if kind == "flops" else low.params / full.params
    target = f"{kind}={smallest + where * (1 - smallest):.4f}"
    budget = make_budget(Target.parse(target), pruner)
    env = PruningEnv(pruner, budget=budget, a_min=0.2)
    rng = np.random.default_rng(0)
    policies = [iter(lambda: 1.0, None), iter(lambda: 0.2, None)] + [
        iter(lambda: float(rng.uniform(0.2, 1.0)), None) for _ in range(6)]
    for actions in policies:
        kept = _episode(env, actions)
        assert budget.cost(kept) <= budget.limit, f"{name} {target}: {kept}"
    # the last policy, really pruned: its traced cost obeys the budget too
    real = measure(pruner.apply(kept).model, x)
    value = real.macs if budget.kind == "flops" else real.params
    assert value <= budget.limit


def test_wall_does_not_clamp_when_the_budget_is_loose(zoo_pruner):
    _, _, _, pruner = zoo_pruner
    env = PruningEnv(pruner, budget=make_budget(Target.parse("flops=1.0"), pruner), a_min=0.2)
    assert _episode(env, iter(lambda: 1.0, None)) == [u.channels for u in pruner.units]


def test_impossible_budget_names_the_smallest_reachable_one():
    loaded = load_model("resnet56")
    pruner = ChannelPruner(loaded.model, torch.randn(1, 3, 32, 32))
    budget = make_budget(Target.parse("flops=0.01"), pruner)
    with pytest.raises(BudgetInfeasible) as info:
        PruningEnv(pruner, budget=budget, a_min=0.2)
    smallest = info.value.smallest
    assert 0.01 < smallest < 1
    assert f"flops={np.ceil(smallest * 1000) / 1000:g}" in str(info.value)
    # and that smallest budget is indeed reachable
    PruningEnv(pruner, budget=make_budget(Target.parse(f"flops={np.ceil(smallest * 1000) / 1000}"), pruner),
               a_min=0.2)


def test_uniform_ratio_is_the_largest_that_fits(zoo_pruner):
    _, _, _, pruner = zoo_pruner
    budget = make_budget(Target.parse("flops=0.5"), pruner)
    r = uniform_ratio(pruner, budget, a_min=0.2)
    assert budget.cost([u.kept_for(r) for u in pruner.units]) <= budget.limit
    assert budget.cost([u.kept_for(min(1.0, r + 0.02)) for u in pruner.units]) > budget.limit or r > 0.98


def test_state_tracks_reduced_flops_and_previous_action():
    loaded = load_model("vgg11")
    pruner = ChannelPruner(loaded.model, torch.randn(1, 3, 32, 32))
    env = PruningEnv(pruner, budget=None, a_min=0.2)
    s0 = env.reset()
    assert s0[8] == 0 and s0[10] == 1.0
    s1, action, kept = env.step(0.5)
    assert kept == pruner.units[0].kept_for(0.5)
    assert s1[8] > 0 and s1[10] == pytest.approx(0.5)
    assert s1[9] < s0[9]  # less FLOPs remain after t


def test_weight_granularity_budget_on_params():
    loaded = load_model("demo-cnn")
    x = torch.randn(1, *loaded.entry.input_shape)
    pruner = MagnitudePruner(loaded.model, x)
    budget = make_budget(Target.parse("params=0.3"), pruner)
    env = PruningEnv(pruner, budget=budget, a_min=0.05)
    rng = np.random.default_rng(1)
    kept = _episode(env, iter(lambda: float(rng.uniform(0.05, 1)), None))
    assert budget.cost(kept) <= budget.limit
