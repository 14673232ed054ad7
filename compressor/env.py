"""The AMC environment: one episode walks the prunable units in forward order; at each the agent
sees an 11-feature state and answers a preserve ratio, which the action wall clamps so that the
budget still holds even if every later unit were pruned to the minimum.

State (as in AMC): (t, n, c, h, w, stride, k, FLOPs[t], reduced, rest, a_{t-1}) of the unit's root
layer. The static features are min-max scaled across units; `reduced` and `rest` are fractions of the
unpruned network's FLOPs. When some units are whole residual blocks that may be removed
(`prune_blocks`), a 12th feature says whether unit t is one (1) or not (0); for such a unit a preserve
ratio below a_min removes the block, so the agent's actions then span [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from compressor.config import Target
from compressor.errors import BudgetInfeasible
from compressor.pruning import Pruner

STATE_DIM = 11  # AMC's features; +1 (removable) when blocks may be removed


def state_dim(pruner: Pruner) -> int:
    return STATE_DIM + (1 if any(u.removable for u in pruner.units) else 0)


def action_floor(pruner: Pruner, a_min: float) -> float:
    """The smallest action a strategy proposes: 0 where a block may be removed, else a_min."""
    return 0.0 if any(u.removable for u in pruner.units) else a_min

CostFn = Callable[[Sequence[float]], float]


@dataclass(frozen=True)
class Budget:
    """A limit on one cost of the pruned network (MACs, parameters or predicted milliseconds)."""

    kind: str
    limit: float
    full: float  # the unpruned network's cost
    cost: CostFn
    # latency-ms: the device's milliseconds per table millisecond (the calibration), so that a refusal
    # names targets in the milliseconds the user asked in
    scale: float = 1.0

    def describe(self, value: float) -> str:
        if self.kind == "latency-ms":
            return f"{value:.3f} ms"
        return f"{value / self.full:.4f} of the {self.kind.upper() if self.kind == 'flops' else self.kind}"


def make_budget(target: Target, pruner: Pruner, *, latency_fn: CostFn | None = None) -> Budget:
    """Turn `flops=0.5` / `params=0.3` / `latency-ms=4` into a limit with its cost function."""
    cm = pruner.cost_model
    full = cm.full
    if target.kind == "flops":
        return Budget("flops", target.value * cm.cost(full).macs, cm.cost(full).macs,
                      lambda kept: cm.cost(kept).macs)
    if target.kind == "params":
        return Budget("params", target.value * cm.cost(full).params, cm.cost(full).params,
                      lambda kept: cm.cost(kept).params)
    if latency_fn is None:
        raise BudgetInfeasible("a latency target needs a device (--device) whose latency table can answer")
    return Budget("latency-ms", target.value, latency_fn([float(c) for c in full]), latency_fn)


def _ceil_sig(x: float, digits: int = 4) -> float:
    """`x` rounded up to `digits` significant digits (a reachable budget, however small)."""
    if x <= 0:
        return x
    scale = 10 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale) / scale


def check_feasible(budget: Budget, pruner: Pruner) -> None:
    """Refuse a budget that even the smallest allowed network exceeds, saying what is reachable."""
    smallest = budget.cost([u.candidates[0] for u in pruner.units])
    if smallest <= budget.limit:
        return
    if budget.kind == "latency-ms":
        smallest *= budget.scale
        raise BudgetInfeasible(
            f"latency-ms={budget.limit * budget.scale:g} cannot be reached: with every prunable layer at its "
            f"minimum the predicted latency is {smallest:.5g} ms. Ask for at least "
            f"latency-ms={_ceil_sig(smallest):g}, or lower --a-min.", smallest=smallest)
    frac = smallest / budget.full
    raise BudgetInfeasible(
        f"{budget.kind}={budget.limit / budget.full:g} cannot be reached: with every prunable layer at the "
        f"minimum preserve ratio the network keeps {frac:.4f} of its {budget.kind} (layers that cannot be "
        f"pruned included). The smallest reachable target is {budget.kind}={math.ceil(frac * 1000) / 1000:g}; "
        "ask for at least that, or lower --a-min.", smallest=frac)


class PruningEnv:
    """Decides kept channel counts unit by unit; `kept` holds the episode's decisions so far."""

    def __init__(self, pruner: Pruner, *, budget: Budget | None, a_min: float):
        self.pruner = pruner
        self.budget = budget
        self.a_min = a_min
        self.units = pruner.units
        cm = pruner.cost_model
        layers = {layer.name: layer for layer in cm.layers}
        self.total_macs = float(cm.cost(cm.full).macs)
        # FLOPs owned by each unit (the layers whose outputs it prunes), for `rest`.
        macs, _ = cm.layer_costs(cm.full)
        self._unit_macs = np.array([macs[cm.out_unit == u].sum() for u in range(len(self.units))])
        rows = []
        for t, unit in enumerate(self.units):
            root = layers[unit.name]
            rows.append([t, root.cout, root.cin, root.in_h, root.in_w, root.stride, root.kh, root.macs])
        static = np.asarray(rows, dtype=np.float64)
        lo, hi = static.min(axis=0), static.max(axis=0)
        self._static = (static - lo) / np.where(hi > lo, hi - lo, 1.0)
        self.state_dim = state_dim(pruner)
        if self.state_dim > STATE_DIM:
            flags = np.array([[1.0 if u.removable else 0.0] for u in self.units])
            self._static = np.concatenate([self._static, flags], axis=1)
        if budget is not None:
            check_feasible(budget, pruner)
        self.reset()

    def reset(self) -> np.ndarray:
        self.t = 0
        self.kept: list[int] = []
        self.prev_action = 1.0
        return self._state()

    @property
    def done(self) -> bool:
        return self.t >= len(self.units)

    def _state(self) -> np.ndarray:
        if self.done:
            return np.zeros(self.state_dim, dtype=np.float32)
        static = self._static[self.t]
        full = [u.channels for u in self.units]
        current = self.kept + full[self.t:]
        reduced = (self.total_macs - self.pruner.cost_model.cost(current).macs) / self.total_macs
        rest = self._unit_macs[self.t + 1:].sum() / self.total_macs
        return np.concatenate([static[:8], [reduced, rest, self.prev_action], static[8:]]).astype(np.float32)

    def _fits(self, count: int) -> bool:
        mins = [u.candidates[0] for u in self.units[self.t + 1:]]
        return self.budget is None or self.budget.cost(self.kept + [count] + mins) <= self.budget.limit

    def max_kept(self) -> int:
        """The action wall: the most channels unit t may keep with the budget still reachable."""
        return self.fitting(self.units[self.t].candidates[-1])

    def fitting(self, wanted: int) -> int:
        """The largest candidate count <= `wanted` that keeps the budget reachable, checking each one
        (a latency table need not be monotone in channel counts, so no bisection). The smallest
        candidate always fits: the previous steps chose counts that fit with every later unit at its
        smallest, and check_feasible made sure the first step can."""
        cands = [c for c in self.units[self.t].candidates if c <= wanted] or self.units[self.t].candidates[:1]
        for c in reversed(cands):
            if self._fits(c):
                return c
        return cands[0]

    def step(self, action: float) -> tuple[np.ndarray, float, int]:
        """Apply the preserve ratio `action` to unit t. Returns (next state, clamped action, kept)."""
        if self.done:
            raise RuntimeError("episode is over; call reset()")
        unit = self.units[self.t]
        action = float(min(max(action, 0.0 if unit.removable else self.a_min), 1.0))
        kept = self.fitting(unit.kept_for(action))
        if kept < unit.kept_for(action):  # clamped by the wall: report the ratio actually taken
            action = min(action, kept / unit.channels)
        self.kept.append(kept)
        self.prev_action = action
        self.t += 1
        return self._state(), action, kept
