"""Rewards of the AMC search, looked up by name (`--reward err|flops|params|latency`).

`err` is the reward of the resource-constrained search (the budget is enforced by the action wall);
the others are AMC's accuracy-guaranteed rewards, which trade error against cost:
`R_FLOPs = -error * log(FLOPs)`, `R_Param = -error * log(#Param)`, `R_lat = -error * log(latency)`.

Scales, checked against the official code (mit-han-lab/amc, `env/rewards.py`, `env/channel_pruning_env.py`):
- `error` is a fraction in [0, 1]: the official `acc_flops_reward` computes `(100 - acc) * 0.01` from a
  percentage; we take `accuracy` as a fraction and use `1 - accuracy`.
- `log` is the natural log of the *raw count*: the official environment passes its FLOPs total, a raw
  multiply-accumulate count (`lib/utils.measure_layer`, no 1e6 scaling), to `np.log`. We do the same
  with our exact MAC count, and likewise with the raw parameter count.
- The official `acc_reward` (its resource-constrained default) is `acc * 0.01`, i.e. accuracy; ours is
  `-error = accuracy - 1`. They differ by a constant, which the agent's moving baseline removes.
- Latency has no official implementation. We take `log` of the latency in **microseconds**, not
  milliseconds: `-error * log(x)` only penalises error while `log(x) > 0`, and small models run in
  well under a millisecond (the demo CNN on this machine), where `log(ms)` is negative and the reward
  would prefer *less* accurate models (at exactly 1 ms it ignores accuracy altogether).
"""

from __future__ import annotations

import math
from typing import Protocol

from compressor.errors import AmcError, ConfigError

_MS_TO_US = 1000.0


class RewardFn(Protocol):
    """Reward of one pruned network; higher is better."""

    def __call__(self, *, accuracy: float, macs: int, params: int, latency_ms: float | None) -> float: ...


class RewardInputError(AmcError, ValueError):
    """A reward was asked for with a value outside its domain (a bug in the caller, not user input)."""


def _error(accuracy: float) -> float:
    if not (isinstance(accuracy, int | float) and 0.0 <= accuracy <= 1.0):
        raise RewardInputError(f"accuracy must be a fraction in [0, 1], got {accuracy!r} "
                               "(divide a percentage by 100)")
    return 1.0 - float(accuracy)


def _log_count(name: str, value: int) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 1):
        raise RewardInputError(f"{name} must be a count >= 1, got {value!r}")
    return math.log(value)


def error_reward(*, accuracy: float, macs: int, params: int, latency_ms: float | None) -> float:
    """-error: the resource-constrained reward (the budget is enforced by the action wall)."""
    return -_error(accuracy)


def flops_reward(*, accuracy: float, macs: int, params: int, latency_ms: float | None) -> float:
    """-error * ln(MACs), MACs as a raw count (AMC's R_FLOPs)."""
    return -_error(accuracy) * _log_count("macs", macs)


def params_reward(*, accuracy: float, macs: int, params: int, latency_ms: float | None) -> float:
    """-error * ln(#params), a raw count (AMC's R_Param)."""
    return -_error(accuracy) * _log_count("params", params)


def latency_reward(*, accuracy: float, macs: int, params: int, latency_ms: float | None) -> float:
    """-error * ln(latency in microseconds) (AMC's R_lat); needs a latency measurement or prediction."""
    if latency_ms is None:
        raise ConfigError("reward", "the latency reward needs a latency for every candidate, but none was "
                                    "given; search with a device or a latency lookup table (--device), "
                                    "or choose --reward flops|params|err")
    if not (isinstance(latency_ms, int | float) and math.isfinite(latency_ms) and latency_ms > 0):
        raise RewardInputError(f"latency_ms must be a positive number, got {latency_ms!r}")
    # Latencies below 1 us do not occur on real devices; the floor keeps the log positive regardless.
    return -_error(accuracy) * max(math.log(latency_ms * _MS_TO_US), 1e-6)


REWARDS: dict[str, RewardFn] = {
    "err": error_reward,
    "flops": flops_reward,
    "params": params_reward,
    "latency": latency_reward,
}


def get_reward(name: str) -> RewardFn:
    """The reward registered as `name`; ConfigError("reward", ...) naming the choices otherwise."""
    try:
        return REWARDS[name]
    except KeyError:
        raise ConfigError("reward", f"{name!r} is unknown; choose one of {', '.join(REWARDS)}") from None
