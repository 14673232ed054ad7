"""The greedy block-removal order and the depth seeds it gives the search (`compressor.depth`)."""

from __future__ import annotations

import csv

import numpy as np
import torch
from tiny_models import INPUT

from compressor.config import SearchConfig, Target
from compressor.depth import RemovalOrder, depth_seeds
from compressor.env import PruningEnv, make_budget
from compressor.pruning import ChannelPruner
from compressor.strategies import make_strategy, uniform_policy
from compressor.zoo import load_model


def _resnet20_pruner() -> ChannelPruner:
    torch.manual_seed(0)
    model = load_model("resnet20").model.eval()
    return ChannelPruner(model, torch.zeros(1, 3, 32, 32), prune_blocks=True)


def _additive_score(pruner: ChannelPruner, damage: dict[int, float]):
    """Accuracy that loses `damage[i]` when block unit i is removed, and a little for thinner units."""
    calls: list[list[int]] = []

    def score(kept: list[int]) -> float:
        calls.append(list(kept))
        lost = sum(damage[i] for i, k in enumerate(kept) if k == 0)
        thin = sum(1 - k / u.channels for k, u in zip(kept, pruner.units) if k > 0)
        return 0.9 - lost - 0.01 * thin

    return score, calls


def test_the_order_removes_the_cheapest_accuracy_per_cost_saved_first():
    pruner = _resnet20_pruner()
    removable = [i for i, u in enumerate(pruner.units) if u.removable]
    assert len(removable) >= 6
    rng = np.random.default_rng(1)
    damage = {i: float(rng.uniform(0.001, 0.05)) for i in removable}
    score, calls = _additive_score(pruner, damage)
    budget = make_budget(Target("flops", 0.6), pruner)
    order = RemovalOrder(pruner, score, shortlist=len(removable))
    removals = order.extend(budget.cost, budget.limit)
    # Enough to meet the budget with blocks alone, and no more.
    assert budget.cost(order.without(removals)) <= budget.limit < budget.cost(order.without(removals[:-1]))
    # With additive damage, each step takes the block with the least damage per MAC saved.
    full = budget.cost(order.full)
    merit = {i: damage[i] / (full - budget.cost(order.without([i]))) for i in removable}
    assert removals == sorted(removable, key=lambda i: merit[i])[:len(removals)]
    # A looser budget afterwards reuses the order, only as far as it needs: nothing is scored again.
    n = len(calls)
    looser = make_budget(Target("flops", 0.8), pruner)
    fewer = order.extend(looser.cost, looser.limit)
    assert fewer == removals[:len(fewer)] and len(fewer) < len(removals)
    assert budget.cost(order.without(fewer)) <= looser.limit < budget.cost(order.without(fewer[:-1]))
    assert len(calls) == n and order.order == removals


def test_seeds_meet_the_budget_through_the_environment_and_mix_depth_with_width():
    pruner = _resnet20_pruner()
    removable = [i for i, u in enumerate(pruner.units) if u.removable]
    score, _ = _additive_score(pruner, {i: 0.01 * (1 + i % 3) for i in removable})
    budget = make_budget(Target("flops", 0.5), pruner)
    order = RemovalOrder(pruner, score)
    seeds = depth_seeds(order, budget, a_min=0.2, count=3)
    assert 2 <= len(seeds) <= 3
    env = PruningEnv(pruner, budget=budget, a_min=0.2)
    removed_counts = []
    for actions in seeds:
        env.reset()
        for a in actions:
            env.step(a)
        assert budget.cost(env.kept) <= budget.limit
        gone = [i for i, k in enumerate(env.kept) if k == 0]
        assert gone == sorted(order.order[:len(gone)])  # a prefix of the greedy order
        # What is not removed is at one ratio, the largest that fits: the played policy is the seed.
        assert [k / u.channels if k else 0.0 for k, u in zip(env.kept, pruner.units)] == actions
        removed_counts.append(len(gone))
    assert removed_counts == sorted(removed_counts, reverse=True) and len(set(removed_counts)) == len(seeds)
    assert all(a in (0.0, 1.0) for a in seeds[0])  # the deepest cut: blocks alone meet the budget
    assert any(0.0 < a < 1.0 for a in seeds[-1])  # the shallowest: the rest thinned to fit
    # The searches play the uniform policy, then the seeds, then explore.
    for name in ("ddpg", "random"):
        strategy = make_strategy(name, pruner=pruner, budget=budget, a_min=0.2, warmup=5, seed=0, seeds=seeds)
        for episode, want in enumerate([uniform_policy(pruner, budget, a_min=0.2), *seeds]):
            state = env.reset()
            played = []
            while not env.done:
                played.append(strategy.act(state, episode=episode, step=env.t))
                state, _, _ = env.step(played[-1])
            assert played == want


def test_a_search_plays_the_depth_seeds(tmp_path):
    from compressor.search import run_search

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 120))
    assert INPUT[1] == 3
    config = SearchConfig(model="tiny_models:TinyResNet", data=f"cifar10:{npz}", target="flops=0.35", episodes=5,
                          warmup=2, prune_blocks=True, depth_seeds=2, strategy="ddpg", seed=0)
    out = tmp_path / "out"
    report = run_search(config, out)
    assert report["budget"]["met"]
    with open(out / "episodes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    played = [[int(k) for k in r["kept"].strip("[]").split(",")] for r in rows]
    seeded = played[1:3]
    assert all(0 in kept for kept in seeded)  # each seed removes at least one block
    assert sum(k == 0 for k in seeded[0]) > sum(k == 0 for k in seeded[1])  # the deeper cut first
    # No depth seeds: the same search explores from the second episode on.
    run_search(SearchConfig.from_dict({**config.to_dict(), "depth_seeds": 0}), tmp_path / "plain")
    with open(tmp_path / "plain" / "episodes.csv") as fh:
        assert [[int(k) for k in r["kept"].strip("[]").split(",")] for r in csv.DictReader(fh)][1:3] != seeded
