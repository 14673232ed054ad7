"""How thin each stage should be: a greedy thinning order over stages, and the policies it gives.

The depth seeds (`compressor.depth`) remove blocks and give every other unit one uniform ratio. Near a
loose latency budget that is rarely the best network: the frontier's fifth run found that ResNet-56 with
every block kept and its stages thinned *unevenly* (inner channels 8/24/40 of 16/32/64) recovers to
93.36% at ResNet-44's latency, where the search's best (seven blocks removed, the rest uniform) reached
91.66% — and the agent, exploring per-unit ratios around the uniform one, never proposed it. So the
search is also seeded with per-stage widths:

1. a *stage* is a run of consecutive units of the same width (ResNet-56: three stages of nine blocks);
   every unit of a stage keeps the same channel count;
2. from the full network, step by step, each stage is tried thinner by as few eighths of its width as
   save a sixteenth of the full network's cost (a latency table is a staircase: 64 channels cost what 56
   do) and scored (the search's own reward: accuracy after BatchNorm re-estimation); the stage that loses
   the least accuracy per unit of cost saved goes down (NetAdapt's greedy step with its fixed cost
   reduction, over stages instead of layers). With many stages only the few best by their last known
   merit are re-scored at each step;
3. for a budget, the seed is the first point of that path that meets it — with every block kept, and
   with each depth seed's blocks removed (its other units then follow the path, not one ratio).

Like the removal order, the path is built lazily and shared by every budget of a frontier; scores go
through the search's cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from compressor.env import Budget
from compressor.pruning import Pruner, Unit

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[int]], float]  # accuracy of a policy (kept channels per unit)
CostFn = Callable[[list[int]], float]
ProgressFn = Callable[[str], None]
STEPS = 8  # widths per stage: full, 7/8, ..., 1/8 of it (as near as the allowed counts get)
DELTA = 1 / 16  # each step saves at least this share of the full network's cost (NetAdapt's fixed reduction)
SHORTLIST = 3  # stages re-scored at each step (the best by their last known merit)


def stages(pruner: Pruner) -> list[list[int]]:
    """Runs of consecutive units with the same width and the same allowed counts (unit indices)."""
    groups: list[list[int]] = []
    for i, unit in enumerate(pruner.units):
        if groups:
            last = pruner.units[groups[-1][-1]]
            if last.channels == unit.channels and _widths(last.candidates) == _widths(unit.candidates):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def _widths(candidates: Iterable[int]) -> list[int]:
    """Allowed counts that keep the unit (0 removes a block), widest first."""
    return sorted({int(c) for c in candidates if c > 0}, reverse=True)


def _levels(unit: Unit, steps: int) -> list[int]:
    """The widths a stage steps through, widest first: the allowed counts nearest to `steps` even
    fractions of the unit's width, and its narrowest (a wide layer allows a hundred counts; one step
    each would cost a hundred scores)."""
    widths = _widths(unit.candidates)
    picked = {min(widths, key=lambda c: (abs(c - unit.channels * j / steps), -c)) for j in range(1, steps + 1)}
    return sorted(picked | {widths[0], widths[-1]}, reverse=True)


class ThinningOrder:
    """The greedy path from the full network down to every stage at its thinnest, extended as far as a
    budget needs. A point of the path is one level per stage (0: full width)."""

    def __init__(self, pruner: Pruner, score: ScoreFn, *, steps: int = STEPS, shortlist: int = SHORTLIST,
                 delta: float = DELTA):
        self.pruner = pruner
        self.delta = delta
        self.score = score
        self.shortlist = max(1, shortlist)
        self.stages = stages(pruner)
        self.levels = [_levels(pruner.units[g[0]], max(1, steps)) for g in self.stages]
        self.path: list[list[int]] = [[0] * len(self.stages)]
        self._merit: dict[int, float] = {}  # each stage's last known merit (accuracy lost per cost saved)

    def kept(self, point: Sequence[int], gone: Iterable[int] = ()) -> list[int]:
        """Kept channels per unit at a point of the path, with the units in `gone` removed."""
        out = [0] * len(self.pruner.units)
        for group, levels, level in zip(self.stages, self.levels, point):
            for i in group:
                out[i] = levels[level]
        for i in gone:
            out[i] = 0
        return out

    def _step(self, here: list[int], s: int, cost: CostFn, c: float, want: float) -> tuple[list[int], float]:
        """Stage `s` thinned by the fewest levels that save `want` of the cost (all the way down when no
        level does: a latency table saves nothing for some widths, then much at once), and what it saved."""
        step = list(here)
        saved = 0.0
        while step[s] + 1 < len(self.levels[s]):
            step[s] += 1
            saved = c - cost(self.kept(step))
            if saved >= want:
                break
        return step, saved

    def extend(self, cost: CostFn, limit: float, *, gone: Iterable[int] = (),
               progress: ProgressFn | None = None) -> list[int] | None:
        """Kept channels at the first point of the path that meets `cost <= limit` with the units in
        `gone` removed, extending the path as far as that needs; None when even every stage at its
        thinnest does not (nothing is scored then)."""
        gone = sorted(set(gone))
        floor = [len(levels) - 1 for levels in self.levels]
        if len(self.stages) < 2 or cost(self.kept(floor, gone)) > limit:
            return None  # one stage: that is the uniform policy, already played
        for point in self.path:
            if cost(self.kept(point, gone)) <= limit:
                return self.kept(point, gone)
        full = cost(self.kept(self.path[0]))
        while True:
            here = self.path[-1]
            acc, c = self.score(self.kept(here)), cost(self.kept(here))
            best: tuple[float, float, int, list[int]] | None = None  # (merit, -saved, stage, point)
            movable = [s for s, levels in enumerate(self.levels) if here[s] + 1 < len(levels)]
            # Stages never scored first, then the best by their last known merit.
            movable.sort(key=lambda s: (self._merit.get(s, -float("inf")), s))
            for s in movable[:self.shortlist]:
                step, saved = self._step(here, s, cost, c, self.delta * full)
                merit = (acc - self.score(self.kept(step))) / saved if saved > 0 else float("inf")
                self._merit[s] = merit
                if best is None or (merit, -saved, s) < best[:3]:
                    best = (merit, -saved, s, step)
            assert best is not None  # the floor meets the limit, so the path has not reached it
            point = best[3] if best[0] < float("inf") else floor  # nothing saves: the floor fits
            self.path.append(point)
            widths = "/".join(str(levels[lv]) for levels, lv in zip(self.levels, point))
            if progress is not None:
                progress(f"stage widths step {len(self.path) - 1}: {widths}")
            log.info("stages: step %d thins stage %d (widths %s; accuracy lost per unit of cost saved %.4g)",
                     len(self.path) - 1, best[2] + 1, widths, best[0])
            if cost(self.kept(point, gone)) <= limit:
                return self.kept(point, gone)


def width_seeds(order: ThinningOrder, budget: Budget, *, removals: Sequence[Iterable[int]] = (),
                progress: ProgressFn | None = None) -> list[list[float]]:
    """Policies (per-unit actions) with each stage at one width from the thinning path, meeting
    `budget`: every block kept, then each set of removed blocks in `removals` (the depth seeds'); the
    same policy twice is given once."""
    seeds: list[list[float]] = []
    seen: set[tuple[int, ...]] = set()
    units = order.pruner.units
    for gone in [(), *removals]:
        kept = order.extend(budget.cost, budget.limit, gone=gone, progress=progress)
        if kept is None or tuple(kept) in seen:
            continue
        seen.add(tuple(kept))
        seeds.append([k / u.channels for k, u in zip(kept, units)])
    return seeds
