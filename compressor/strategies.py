"""Search strategies behind one interface: `ddpg` (AMC), `random` (same episode count, actions
uniform in [a_min, 1]) and `uniform` (one preserve ratio for every unit).

A strategy proposes an action per step and learns (or not) from each finished episode. Its whole
state goes into the search checkpoint, so a resumed search proposes exactly what an uninterrupted one
would have.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from compressor.agent import AgentConfig, DDPGAgent, sample_truncated_normal
from compressor.env import STATE_DIM, Budget, action_floor, state_dim
from compressor.pruning import Pruner

Transition = tuple[np.ndarray, float, np.ndarray, bool]


class Strategy(Protocol):
    name: str

    def act(self, state: np.ndarray, *, episode: int, step: int) -> float: ...

    def learn(self, transitions: list[Transition], reward: float, *, episode: int) -> dict[str, float]: ...

    def episodes(self, requested: int) -> int: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """The agent's networks are tiny: with several intra-op threads they spend their time waiting for
    each other (20x slower on a busy 2-core machine), so they run on one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class DDPGStrategy:
    name = "ddpg"

    def __init__(self, *, n_layers: int, a_min: float, warmup: int, seed: int, prior: float | None = None,
                 state_dim: int = STATE_DIM, delta_decay: float = AgentConfig.delta_decay):
        self.n_layers = n_layers
        self.warmup = warmup
        config = AgentConfig(warmup=warmup, a_min=a_min, memory_size=100 * n_layers, prior=prior,
                             delta_decay=delta_decay)
        self.agent = DDPGAgent(state_dim=state_dim, config=config, n_layers=n_layers, seed=seed)

    def act(self, state, *, episode, step):
        with _one_thread():
            return self.agent.select_action(state, episode=episode)

    def learn(self, transitions, reward, *, episode):
        self.agent.observe(transitions, reward)
        if episode < self.warmup:
            return {}
        with _one_thread():
            updates = [self.agent.update() for _ in range(self.n_layers)]
        losses = [x for x in updates if x is not None]
        if not losses:
            return {}
        return {"critic_loss": float(np.mean([c for c, _ in losses])),
                "actor_loss": float(np.mean([a for _, a in losses]))}

    def episodes(self, requested):
        return requested

    def state_dict(self):
        return {"agent": self.agent.state_dict()}

    def load_state_dict(self, state):
        self.agent.load_state_dict(state["agent"])


class RandomStrategy:
    """Random search. With a prior, actions are drawn around it exactly as DDPG's warm-up draws them,
    so DDPG and random search explore from the same distribution and differ only by learning."""

    name = "random"

    def __init__(self, *, a_min: float, seed: int, prior: float | None = None, prior_sigma: float = 0.15):
        self.a_min = a_min
        self.prior = prior
        self.prior_sigma = prior_sigma
        self.rng = np.random.default_rng(seed)

    def act(self, state, *, episode, step):
        if self.prior is not None:
            return sample_truncated_normal(self.rng, mean=self.prior, sigma=self.prior_sigma, low=self.a_min,
                                           high=1.0)
        return float(self.rng.uniform(self.a_min, 1.0))

    def learn(self, transitions, reward, *, episode):
        return {}

    def episodes(self, requested):
        return requested

    def state_dict(self):
        return {"rng": _rng_state(self.rng)}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = _rng_restore(state["rng"])


class UniformStrategy:
    """One ratio for every unit. Under a budget: the largest ratio that meets it (bisection), one
    episode — with removable blocks, when no ratio alone meets the budget, the fewest blocks removed
    evenly along the network (`uniform_policy`) and the largest ratio for the rest. Without a budget
    (accuracy-guaranteed rewards): an even sweep of ratios in [a_min, 1]."""

    name = "uniform"

    def __init__(self, *, pruner: Pruner, budget: Budget | None, a_min: float):
        self.a_min = a_min
        self.budget = budget
        self.ratio = 1.0
        self.actions: list[float] = []
        self._sweep: list[float] = []
        if budget is not None:
            self.actions = uniform_policy(pruner, budget, a_min=a_min)
            self.ratio = max(self.actions)

    def act(self, state, *, episode, step):
        if self.budget is None:
            return self._sweep[episode]
        return self.actions[step] if self.actions else self.ratio

    def learn(self, transitions, reward, *, episode):
        return {}

    def episodes(self, requested):
        if self.budget is not None:
            return 1
        self._sweep = list(np.linspace(self.a_min, 1.0, max(1, requested)))
        return len(self._sweep)

    def state_dict(self):
        return {"ratio": self.ratio, "actions": list(self.actions)}

    def load_state_dict(self, state):
        self.ratio = float(state["ratio"])
        self.actions = [float(a) for a in state.get("actions", [])]


class SeededStrategy:
    """Another strategy whose first episodes (from `start`) play given policies — the block-aware
    uniform one, the greedy depth seeds — so a search that may remove blocks always scores them and
    the agent learns from them."""

    def __init__(self, inner: Strategy, seeds: Sequence[Sequence[float]], *, start: int = 0):
        self.inner = inner
        self.name = inner.name
        self.seeds = [list(a) for a in seeds]
        self.start = start

    def act(self, state, *, episode, step):
        if 0 <= episode - self.start < len(self.seeds):
            return self.seeds[episode - self.start][step]
        return self.inner.act(state, episode=episode, step=step)

    def learn(self, transitions, reward, *, episode):
        return self.inner.learn(transitions, reward, episode=episode)

    def episodes(self, requested):
        return self.inner.episodes(requested)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


class LocalSearch:
    """Another strategy, plus moves around the best policy found so far: from episode `start` on, every
    `every`-th episode replays the best episode's actions (as the action wall clamped them) with a few
    random pairs of units moved one allowed channel count apart, one up and one down (a removable
    block's step down from its smallest count removes it, and back). Under a `budget`, a move is drawn
    again (up to `tries` times) until the moved policy fits it and was not played before: a move that
    does not fit would have the action wall cut the units after the one moved up, not the one chosen
    to go down. The inner strategy plays the other episodes and learns from all of them.

    Why: with the few dozen episodes a search here affords, DDPG's actor tends to settle on one
    proposal (every unit at the top of its range, the wall then taking the last units down to their
    minimum) and replays it for the rest of the search; these moves keep part of every search
    improving on its best candidate instead."""

    def __init__(self, inner: Strategy, pruner: Pruner, *, start: int, budget: Budget | None = None,
                 every: int = 2, pairs: int = 2, tries: int = 64, seed: int = 0):
        if every < 1 or pairs < 1 or tries < 1:
            raise ValueError("every, pairs and tries must be at least 1")
        self.inner = inner
        self.name = inner.name
        self.start = start
        self.budget = budget
        self.every = every
        self.pairs = pairs
        self.tries = tries
        self.rng = np.random.default_rng([seed, 7])
        self._units = pruner.units
        self._levels = [sorted({*u.candidates, *((0,) if u.removable else ())}) for u in pruner.units]
        self.best: list[float] | None = None
        self.best_reward = -math.inf
        self._played: set[tuple[int, ...]] = set()
        self._plan: list[float] = []

    def is_local(self, episode: int) -> bool:
        return self.best is not None and episode >= self.start and (episode - self.start) % self.every == self.every - 1

    def act(self, state, *, episode, step):
        if not self.is_local(episode):
            return self.inner.act(state, episode=episode, step=step)
        if step == 0 or not self._plan:
            self._plan = self.neighbour()
        return self._plan[step]

    def neighbour(self) -> list[float]:
        """The best episode's actions with `pairs` units one count up and as many others one down: the
        first draw that fits the budget and was not played yet (else the last draw)."""
        assert self.best is not None
        base = [self._levels[i].index(c) if c in self._levels[i] else 0
                for i, c in enumerate(u.kept_for(a) for u, a in zip(self._units, self.best))]
        counts: list[int] = []
        for _ in range(self.tries):
            level = self._move(list(base))
            counts = [self._levels[i][lv] for i, lv in enumerate(level)]
            fits = self.budget is None or self.budget.cost([float(c) for c in counts]) <= self.budget.limit
            if fits and tuple(counts) not in self._played:
                break
        return [c / u.channels for u, c in zip(self._units, counts)]

    def _move(self, level: list[int]) -> list[int]:
        for _ in range(self.pairs):
            # One unit up and another down; only one of them where no unit can move the other way (every
            # unit at its smallest count: the move spends slack the best candidate left).
            ups = [i for i in range(len(level)) if level[i] + 1 < len(self._levels[i])]
            up = int(self.rng.choice(ups)) if ups else None
            if up is not None:
                level[up] += 1
            downs = [i for i in range(len(level)) if level[i] > 0 and i != up]
            if downs:
                level[int(self.rng.choice(downs))] -= 1
        return level

    def learn(self, transitions, reward, *, episode):
        actions = [float(a) for _, a, _, _ in transitions]
        self._played.add(tuple(u.kept_for(a) for u, a in zip(self._units, actions)))
        if reward > self.best_reward:
            self.best_reward = float(reward)
            self.best = actions
        return self.inner.learn(transitions, reward, episode=episode)

    def forget_best(self, budget: Budget | None = None) -> None:
        """A new budget (a latency correction round): the best so far may not fit it."""
        self.best, self.best_reward = None, -math.inf
        if budget is not None:
            self.budget = budget

    def episodes(self, requested):
        return self.inner.episodes(requested)

    def state_dict(self):
        return {"inner": self.inner.state_dict(), "local": {
            "best": self.best, "best_reward": self.best_reward if self.best is not None else None,
            "played": [list(p) for p in sorted(self._played)], "rng": _rng_state(self.rng)}}

    def load_state_dict(self, state):
        if "local" not in state:  # a checkpoint written before local moves existed
            self.inner.load_state_dict(state)
            return
        self.inner.load_state_dict(state["inner"])
        local = state["local"]
        self.best = None if local["best"] is None else [float(a) for a in local["best"]]
        self.best_reward = -math.inf if local["best_reward"] is None else float(local["best_reward"])
        self._played = {tuple(int(c) for c in p) for p in local.get("played", [])}
        self.rng.bit_generator.state = _rng_restore(local["rng"])


def forget_best(strategy: Strategy, budget: Budget | None = None) -> None:
    """Tell a strategy (through its wrappers) that the budget changed."""
    current: Any = strategy
    while current is not None:
        if isinstance(current, LocalSearch):
            current.forget_best(budget)
        current = getattr(current, "inner", None)


def uniform_ratio(pruner: Pruner, budget: Budget, *, a_min: float, iterations: int = 40) -> float:
    """The largest single preserve ratio whose rounded channel counts meet the budget."""
    def kept(r: float) -> list[int]:
        return [u.kept_for(r) for u in pruner.units]

    if budget.cost(kept(1.0)) <= budget.limit:
        return 1.0
    lo, hi = a_min, 1.0
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if budget.cost(kept(mid)) <= budget.limit:
            lo = mid
        else:
            hi = mid
    return lo


def uniform_policy(pruner: Pruner, budget: Budget, *, a_min: float) -> list[float]:
    """Per-unit actions of the uniform policy. The largest single ratio that meets the budget when one
    does; otherwise, where blocks may be removed, the fewest removable blocks taken out evenly along
    the network (every other one, every third, ...: the PRACTISE and issue-7 probes found that spreading
    the removals keeps far more accuracy than cutting a stage short) with the largest ratio for the rest."""
    n = len(pruner.units)
    ratio = uniform_ratio(pruner, budget, a_min=a_min)
    removable = [i for i, u in enumerate(pruner.units) if u.removable]
    if budget.cost([u.kept_for(ratio) for u in pruner.units]) <= budget.limit or not removable:
        return [ratio] * n
    m = len(removable)
    for k in range(1, m + 1):
        gone = {removable[min(m - 1, int((j + 0.5) * m / k))] for j in range(k)}
        rest = largest_ratio(pruner, budget, gone, a_min=a_min)
        if rest is not None:
            return [0.0 if i in gone else rest for i in range(n)]
    return [ratio] * n


def largest_ratio(pruner: Pruner, budget: Budget, gone: set[int], *, a_min: float) -> float | None:
    """The largest single preserve ratio for the units not in `gone` (removed blocks) that meets the
    budget; None when even a_min does not."""
    def kept(r: float) -> list[int]:
        return [0 if i in gone else u.kept_for(r) for i, u in enumerate(pruner.units)]

    if budget.cost(kept(a_min)) > budget.limit:
        return None
    if budget.cost(kept(1.0)) <= budget.limit:
        return 1.0
    lo, hi = a_min, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if budget.cost(kept(mid)) <= budget.limit else (lo, mid)
    return lo


def _rng_state(rng: np.random.Generator) -> dict[str, Any]:
    s = rng.bit_generator.state
    return {"bit_generator": s["bit_generator"], "state": str(s["state"]["state"]), "inc": str(s["state"]["inc"]),
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _rng_restore(d: dict[str, Any]) -> dict[str, Any]:
    return {"bit_generator": d["bit_generator"], "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": d["has_uint32"], "uinteger": d["uinteger"]}


StrategyFactory = Callable[..., Strategy]

NOISE_END = 0.1  # where a budget-fitted schedule leaves DDPG's exploration noise, as a fraction of its start


def fitted_noise_decay(episodes: int, warmup: int, *, end: float = NOISE_END) -> float:
    """The per-episode decay that takes DDPG's exploration sigma from its start to `end` times it over
    the episodes after the warm-up. AMC's fixed 0.95 is 0.05 of the start 60 episodes after warm-up
    and 2e-7 after 300: past the first few dozen episodes its actor replays one proposal."""
    return float(end ** (1.0 / max(episodes - warmup, 1)))


def make_strategy(name: str, *, pruner: Pruner, budget: Budget | None, a_min: float, warmup: int,
                  seed: int, uniform_prior: bool = False, seeds: Sequence[Sequence[float]] = (),
                  local_moves: bool = True, episodes: int | None = None,
                  noise_decay: float | None = None) -> Strategy:
    """`uniform_prior`: DDPG and random search explore around the uniform policy's ratio (under a
    budget) instead of uniformly over [a_min, 1]. `seeds`: policies (per-unit actions) DDPG and random
    search play first, after the uniform policy (`compressor.depth.depth_seeds`). `local_moves`: under
    a budget, after the warm-up every other episode moves a few units of the best policy so far
    (`LocalSearch`). `noise_decay`: DDPG's per-episode noise decay; None fits it to `episodes`
    (`fitted_noise_decay`), or AMC's 0.95 where `episodes` is not given either."""
    seed_actions = uniform_policy(pruner, budget, a_min=a_min) if budget is not None else None
    prior = max(seed_actions) if uniform_prior and seed_actions is not None else None
    # Where blocks may be removed, actions reach down to 0 (below a_min removes a block; the
    # environment lifts other units to a_min).
    floor = action_floor(pruner, a_min)
    decay = (noise_decay if noise_decay is not None else fitted_noise_decay(episodes, warmup)
             if episodes is not None else AgentConfig.delta_decay)
    factories: dict[str, Callable[[], Strategy]] = {
        "ddpg": lambda: DDPGStrategy(n_layers=len(pruner.units), a_min=floor, warmup=warmup, seed=seed,
                                     prior=prior, state_dim=state_dim(pruner), delta_decay=decay),
        "random": lambda: RandomStrategy(a_min=floor, seed=seed, prior=prior),
        "uniform": lambda: UniformStrategy(pruner=pruner, budget=budget, a_min=a_min),
    }
    strategy = factories[name]()
    if name != "uniform" and budget is not None and local_moves:
        strategy = LocalSearch(strategy, pruner, start=max(warmup, 1 + len(seeds)), budget=budget, seed=seed)
    if name != "uniform" and seed_actions is not None and (0.0 in seed_actions or seeds):
        # Only where blocks may go (the even-depth policy removes some, or depth seeds were given):
        # other searches stay exactly AMC's.
        strategy = SeededStrategy(strategy, [seed_actions, *seeds])
    return strategy


STRATEGY_NAMES: Sequence[str] = ("ddpg", "random", "uniform")
