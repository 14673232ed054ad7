"""Rewards: every registered one is tested; each prefers accurate and, where it prices cost, cheap models."""

from __future__ import annotations

import math

import pytest

from compressor.config import REWARD_KINDS
from compressor.errors import ConfigError
from compressor.rewards import REWARDS, RewardInputError, get_reward

BASE = dict(accuracy=0.9, macs=40_000_000, params=270_000, latency_ms=4.0)

# name -> (expected value at BASE, the keyword that carries its cost or None)
CASES = {
    "err": (-0.1, None),
    "flops": (-0.1 * math.log(40_000_000), "macs"),
    "params": (-0.1 * math.log(270_000), "params"),
    "latency": (-0.1 * math.log(4000.0), "latency_ms"),
}


def test_every_registered_reward_has_a_test_and_matches_the_config_choices():
    assert set(CASES) == set(REWARDS), "add a CASES entry for each registered reward"
    assert set(REWARDS) == set(REWARD_KINDS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reward_value_at_a_known_point(name):
    expected, _ = CASES[name]
    assert get_reward(name)(**BASE) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reward_prefers_accuracy(name):
    fn = REWARDS[name]
    assert fn(**{**BASE, "accuracy": 0.95}) > fn(**BASE) > fn(**{**BASE, "accuracy": 0.5})
    assert fn(**{**BASE, "accuracy": 1.0}) == 0.0


@pytest.mark.parametrize("name", sorted(n for n, (_, cost) in CASES.items() if cost))
def test_cost_rewards_prefer_cheaper_models_at_equal_error(name):
    cost = CASES[name][1]
    fn = REWARDS[name]
    assert fn(**{**BASE, cost: BASE[cost] / 2}) > fn(**BASE) > fn(**{**BASE, cost: BASE[cost] * 2})


def test_err_ignores_cost():
    assert REWARDS["err"](**BASE) == REWARDS["err"](accuracy=0.9, macs=1, params=1, latency_ms=None)


def test_latency_reward_penalises_error_below_one_millisecond():
    # log(ms) < 0 here would reward *less* accurate models; the reward works in microseconds.
    fn = REWARDS["latency"]
    fast = {**BASE, "latency_ms": 0.05}
    assert fn(**{**fast, "accuracy": 0.95}) > fn(**fast) > fn(**{**fast, "accuracy": 0.5})
    assert fn(**{**BASE, "latency_ms": 1.0}) < fn(**{**BASE, "latency_ms": 1.0, "accuracy": 0.99})


def test_latency_reward_without_latency_says_what_to_do():
    with pytest.raises(ConfigError) as info:
        REWARDS["latency"](**{**BASE, "latency_ms": None})
    assert info.value.field == "reward"
    assert "--device" in str(info.value)


@pytest.mark.parametrize(
    ("name", "override", "match"),
    [("err", {"accuracy": 92.5}, "fraction"), ("flops", {"macs": 0}, "macs"),
     ("params", {"params": -3}, "params"), ("latency", {"latency_ms": 0.0}, "latency_ms"),
     ("latency", {"latency_ms": float("nan")}, "latency_ms")],
)
def test_out_of_domain_inputs_are_rejected(name, override, match):
    with pytest.raises(RewardInputError, match=match):
        REWARDS[name](**{**BASE, **override})


def test_unknown_reward_names_the_choices():
    with pytest.raises(ConfigError, match="err, flops, params, latency"):
        get_reward("accuracy")
