"""The greedy per-stage thinning path and the width seeds it gives the search (`compressor.stages`)."""

from __future__ import annotations

import csv

import numpy as np
import torch
from tiny_models import INPUT

from compressor.config import SearchConfig, Target
from compressor.env import PruningEnv, make_budget
from compressor.pruning import ChannelPruner
from compressor.stages import ThinningOrder, stages, width_seeds
from compressor.zoo import load_model


def _resnet20_pruner(**kwargs) -> ChannelPruner:
    torch.manual_seed(0)
    model = load_model("resnet20").model.eval()
    return ChannelPruner(model, torch.zeros(1, 3, 32, 32), **kwargs)


def _stage_score(pruner: ChannelPruner, loss_per_step: list[float]):
    """Accuracy that loses `loss_per_step[s]` for every unit of stage s one allowed count below full
    width, and 0.2 for every removed block."""
    calls: list[list[int]] = []
    groups = stages(pruner)

    def score(kept: list[int]) -> float:
        calls.append(list(kept))
        lost = 0.0
        for s, group in enumerate(groups):
            for i in group:
                unit = pruner.units[i]
                widths = sorted((c for c in unit.candidates if c > 0), reverse=True)
                lost += 0.2 if kept[i] == 0 else loss_per_step[s] * widths.index(kept[i]) / len(group)
        return 0.9 - lost

    return score, calls


def test_stages_are_runs_of_one_width():
    pruner = _resnet20_pruner(prune_blocks=True)
    groups = stages(pruner)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert [pruner.units[g[0]].channels for g in groups] == [16, 32, 64]
    assert sum(groups, []) == list(range(len(pruner.units)))


def test_the_path_thins_the_stage_that_costs_least_per_unit_saved_and_is_shared_by_budgets():
    pruner = _resnet20_pruner(prune_blocks=True)
    # Thinning the last stage costs little accuracy and saves the most MACs per step: it goes first,
    # and the first stage (expensive in accuracy, cheap in MACs) last.
    score, calls = _stage_score(pruner, [0.05, 0.01, 0.002])
    order = ThinningOrder(pruner, score)
    budget = make_budget(Target("flops", 0.7), pruner)
    kept = order.extend(budget.cost, budget.limit)
    assert kept is not None and budget.cost(kept) <= budget.limit
    assert budget.cost(order.kept(order.path[-2])) > budget.limit  # the first point that fits, no further
    for group in stages(pruner):
        assert len({kept[i] for i in group}) == 1 and 0 not in kept  # one width per stage, every block kept
    thinned = [[p[s] for p in order.path] for s in range(3)]
    assert thinned[2][-1] > 0 and thinned[0][-1] == 0  # the last stage thinned, the first untouched
    # A looser budget reuses the path: nothing is scored again.
    n = len(calls)
    looser = make_budget(Target("flops", 0.85), pruner)
    again = order.extend(looser.cost, looser.limit)
    assert again is not None and looser.cost(again) <= looser.limit and len(calls) == n
    # Out of reach with every stage at its thinnest: no seed, and nothing scored for it.
    tight = make_budget(Target("flops", 0.05), pruner)
    assert order.extend(tight.cost, tight.limit) is None and len(calls) == n


def test_width_seeds_fit_the_budget_through_the_environment_with_and_without_blocks():
    pruner = _resnet20_pruner(prune_blocks=True)
    score, _ = _stage_score(pruner, [0.02, 0.01, 0.01])
    order = ThinningOrder(pruner, score)
    budget = make_budget(Target("flops", 0.4), pruner)
    gone = [1, 4]
    seeds = width_seeds(order, budget, removals=[gone, gone])
    assert len(seeds) == 2  # every block kept; the two blocks removed (given twice, played once)
    env = PruningEnv(pruner, budget=budget, a_min=0.2)
    for actions, removed in zip(seeds, [[], gone]):
        env.reset()
        for a in actions:
            env.step(a)
        assert budget.cost(env.kept) <= budget.limit
        assert [i for i, k in enumerate(env.kept) if k == 0] == removed
        assert [k / u.channels for k, u in zip(env.kept, pruner.units)] == actions  # played as given
    # Fewer blocks kept need less thinning.
    kept = [[u.kept_for(a) for u, a in zip(pruner.units, s)] for s in seeds]
    assert sum(kept[1][i] for i in range(len(pruner.units)) if i not in gone) >= \
        sum(kept[0][i] for i in range(len(pruner.units)) if i not in gone)


def test_a_search_plays_the_width_seed_and_can_go_without(tmp_path):
    from compressor.search import run_search

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, x=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8), y=rng.integers(0, 10, 120))
    assert INPUT[1] == 3
    config = SearchConfig(model="resnet20", data=f"cifar10:{npz}", target="flops=0.6", episodes=4, warmup=2,
                          strategy="random", seed=0, reward_samples=60, prune_blocks=True, depth_seeds=0)

    def played(out) -> list[list[int]]:
        with open(out / "episodes.csv") as fh:
            return [[int(k) for k in r["kept"].strip("[]").split(",")] for r in csv.DictReader(fh)]

    report = run_search(config, tmp_path / "seeded")
    assert report["budget"]["met"]
    second = played(tmp_path / "seeded")[1]  # after the uniform policy (no depth seeds asked for)
    assert [len(set(second[i * 3:i * 3 + 3])) for i in range(3)] == [1, 1, 1]  # one width per stage
    assert len(set(second)) > 1 or second[0] < 16  # not the full network
    run_search(SearchConfig.from_dict({**config.to_dict(), "width_seeds": False}), tmp_path / "plain")
    assert played(tmp_path / "plain")[1] != second
