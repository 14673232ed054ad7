"""Which residual blocks to remove first: a greedy order, and the policies it gives under a budget.

On a CPU or a phone a block's fixed cost (two convolutions, their activations, the addition) is a
large share of a small network's latency, and a deep residual network survives losing a block far
better than losing the same latency in channels (issue 7: ResNet-56 with six blocks removed keeps
more of its accuracy after distillation than with every block thinned). An agent exploring per-layer
ratios around the uniform one rarely proposes removing exactly the right blocks, so the search is
*seeded* with policies built from a greedy order:

1. each removable block is removed alone and scored (the search's own reward: accuracy after
   BatchNorm re-estimation) — its *merit* is the accuracy lost per unit of cost saved;
2. block by block, the few best by merit are re-scored with the blocks already removed, and the best
   of them goes next (NetAdapt's greedy step, with PRACTISE's observation that which blocks go matters
   more than how many);
3. for a budget, the seeds are "the first k blocks of the order removed, the largest uniform ratio
   for the rest that meets the budget" for a few k between none and the fewest that meet it alone.

The order is computed lazily and shared by every budget of a frontier (it does not depend on the
budget, only how far it is needed does); scores go through the search's cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from compressor.env import Budget
from compressor.pruning import Pruner
from compressor.strategies import largest_ratio

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[int]], float]  # accuracy of a policy (kept channels per unit)
ProgressFn = Callable[[str], None]
SHORTLIST = 4  # blocks re-scored at each greedy step (the best by their last known merit)


class RemovalOrder:
    """The greedy order in which removable blocks go, extended as far as a budget needs."""

    def __init__(self, pruner: Pruner, score: ScoreFn, *, shortlist: int = SHORTLIST):
        self.pruner = pruner
        self.score = score
        self.shortlist = max(1, shortlist)
        self.full = [u.channels for u in pruner.units]
        self.removable = [i for i, u in enumerate(pruner.units) if u.removable]
        self.order: list[int] = []
        self._merit: dict[int, float] | None = None

    def without(self, gone: Sequence[int]) -> list[int]:
        out = set(gone)
        return [0 if i in out else c for i, c in enumerate(self.full)]

    def _ranked(self, cost: Callable[[list[int]], float], progress: ProgressFn | None) -> dict[int, float]:
        if self._merit is None:
            base_acc, base_cost = self.score(self.full), cost(self.full)
            merit = {}
            for n, i in enumerate(self.removable):
                if progress is not None:
                    progress(f"scoring each block removed alone ({n + 1}/{len(self.removable)})")
                kept = self.without([i])
                merit[i] = (base_acc - self.score(kept)) / max(base_cost - cost(kept), 1e-12)
            self._merit = merit
        return self._merit

    def extend(self, cost: Callable[[list[int]], float], limit: float, *,
               progress: ProgressFn | None = None) -> list[int]:
        """The shortest prefix of the order whose removal meets `cost <= limit` (the whole order, every
        removable block, when none does), extending the order as far as that needs."""
        if not self.removable:
            return []
        merit = self._ranked(cost, progress)
        while len(self.order) < len(self.removable) and cost(self.without(self.order)) > limit:
            here = self.without(self.order)
            acc, c = self.score(here), cost(here)
            left = sorted((i for i in self.removable if i not in self.order), key=lambda i: (merit[i], i))
            for i in left[:self.shortlist]:
                kept = self.without([*self.order, i])
                merit[i] = (acc - self.score(kept)) / max(c - cost(kept), 1e-12)
            best = min(left[:self.shortlist], key=lambda i: (merit[i], i))
            self.order.append(best)
            if progress is not None:
                progress(f"block {len(self.order)} to remove is {self.pruner.units[best].block}")
            log.info("depth: removal %d is %s (accuracy lost per unit of cost saved %.4g)", len(self.order),
                     self.pruner.units[best].block, merit[best])
        for k in range(len(self.order) + 1):  # a looser budget than the one the order was built for
            if cost(self.without(self.order[:k])) <= limit:
                return self.order[:k]
        return list(self.order)


def depth_seeds(order: RemovalOrder, budget: Budget, *, a_min: float, count: int,
                progress: ProgressFn | None = None) -> list[list[float]]:
    """Up to `count` policies (per-unit actions: 0 removes a block) mixing depth and width under
    `budget`: the first k blocks of the greedy order removed and the largest uniform ratio for the
    rest, for k spread from the fewest blocks that meet the budget alone down towards none."""
    if count <= 0 or not order.removable:
        return []
    removals = order.extend(budget.cost, budget.limit, progress=progress)
    deepest = len(removals)
    if deepest == 0:
        return []
    ks = sorted({round(deepest * (count - j) / count) for j in range(count)}, reverse=True)
    units = order.pruner.units
    seeds = []
    for k in ks:
        if k <= 0:
            continue
        gone = set(removals[:k])
        ratio = largest_ratio(order.pruner, budget, gone, a_min=a_min)
        if ratio is None:
            continue
        seeds.append([0.0 if i in gone else units[i].kept_for(ratio) / units[i].channels
                      for i in range(len(units))])
    return seeds
