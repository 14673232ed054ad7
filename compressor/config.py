"""Typed configuration of a search. The same strings are used on the command line and in the
REST job spec (`flops=0.5`, `latency-ms=4.0`, `demo-cnn`, `digits`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

from compressor.errors import ConfigError

TargetKind = Literal["flops", "params", "latency-ms"]
RewardKind = Literal["err", "flops", "params", "latency"]
StrategyName = Literal["ddpg", "random", "uniform"]
Granularity = Literal["channel", "weight"]
FinetuneMethod = Literal["distill", "plain"]

TARGET_KINDS: tuple[str, ...] = ("flops", "params", "latency-ms")
REWARD_KINDS: tuple[str, ...] = ("err", "flops", "params", "latency")
STRATEGIES: tuple[str, ...] = ("ddpg", "random", "uniform")
FINETUNE_METHODS: tuple[str, ...] = ("distill", "plain")


@dataclass(frozen=True)
class Target:
    """A resource budget: `flops`/`params` are fractions of the unpruned model to keep,
    `latency-ms` is an absolute latency on the search's device."""

    kind: TargetKind
    value: float

    @classmethod
    def parse(cls, text: str) -> Target:
        kind, sep, raw = text.partition("=")
        kind = kind.strip().lower()
        if not sep or kind not in TARGET_KINDS:
            raise ConfigError("target", f"{text!r} is not KIND=VALUE with KIND one of {', '.join(TARGET_KINDS)} "
                              "(e.g. flops=0.5, params=0.3, latency-ms=4.0)")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError("target", f"{raw!r} is not a number (e.g. flops=0.5)") from None
        if not math.isfinite(value) or value <= 0:
            raise ConfigError("target", f"the value must be a positive number, got {raw!r}")
        if kind in ("flops", "params") and value > 1:
            raise ConfigError("target", f"{kind}={raw} keeps more than the whole model; give a fraction in (0, 1]")
        return cls(kind, value)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


@dataclass(frozen=True)
class SearchConfig:
    """Everything that defines a search; two searches with equal configs give equal results."""

    model: str
    data: str
    target: str = "flops=0.5"
    strategy: StrategyName = "ddpg"
    episodes: int = 100
    seed: int = 0
    reward: RewardKind | None = None  # None: resource-constrained search (reward -error, action wall)
    device: str = "local"
    weights: str | None = None
    granularity: Granularity = "channel"
    a_min: float = 0.2
    round_to: int = 8
    reconstruct: bool = True
    bn_recalibration: bool = True
    warmup: int | None = None  # DDPG warm-up episodes; None: 100, capped at a quarter of the episodes
    # Explore around the uniform policy's ratio (DDPG warm-up, actor start, random search) instead of
    # uniformly over [a_min, 1] as AMC does. Only under a budget.
    uniform_prior: bool = True
    reward_samples: int | None = None  # images of the search split used for the reward; None: all
    finetune_epochs: int = 0
    # distill: learn the unpruned network's outputs and pooled features (few images suffice);
    # plain: cross-entropy on the labels alone.
    finetune_method: FinetuneMethod = "distill"
    compare: bool = False
    measure_top: int = 3  # latency targets: best candidates measured on the real device
    prune_residual: bool = False  # also prune channels coupled through residual additions
    # Residual blocks may be removed whole (a preserve ratio below a_min on a block's inner channels
    # turns the block into its shortcut). Depth is what costs time on a CPU or phone.
    prune_blocks: bool = False
    tflite: bool = False  # also export model.tflite (needs the `tflite` extra)

    def __post_init__(self) -> None:
        Target.parse(self.target)
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"{self.strategy!r} is unknown; choose one of {', '.join(STRATEGIES)}")
        if self.reward is not None and self.reward not in REWARD_KINDS:
            raise ConfigError("reward", f"{self.reward!r} is unknown; choose one of {', '.join(REWARD_KINDS)}")
        if self.granularity not in ("channel", "weight"):
            raise ConfigError("granularity", f"{self.granularity!r} is unknown; choose channel or weight")
        if not (1 <= self.episodes <= 100_000):
            raise ConfigError("episodes", f"must be between 1 and 100000, got {self.episodes}")
        if not (0.0 < self.a_min <= 1.0):
            raise ConfigError("a_min", f"must be in (0, 1], got {self.a_min}")
        if self.round_to < 1:
            raise ConfigError("round_to", f"must be >= 1, got {self.round_to}")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError("warmup", f"must be >= 0, got {self.warmup}")
        if self.finetune_epochs < 0:
            raise ConfigError("finetune_epochs", f"must be >= 0, got {self.finetune_epochs}")
        if self.finetune_method not in FINETUNE_METHODS:
            raise ConfigError("finetune_method", f"{self.finetune_method!r} is unknown; choose one of "
                                                 f"{', '.join(FINETUNE_METHODS)}")
        if self.prune_blocks and self.granularity != "channel":
            raise ConfigError("prune_blocks", "removing blocks needs granularity 'channel'")
        if self.measure_top < 1:
            raise ConfigError("measure_top", f"must be >= 1, got {self.measure_top}")
        if self.reward_samples is not None and self.reward_samples < 1:
            raise ConfigError("reward_samples", f"must be >= 1, got {self.reward_samples}")

    @property
    def parsed_target(self) -> Target:
        return Target.parse(self.target)

    @property
    def warmup_episodes(self) -> int:
        if self.warmup is not None:
            return min(self.warmup, self.episodes)
        return min(100, self.episodes // 4)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SearchConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(sorted(unknown)[0], f"unknown field; allowed: {', '.join(sorted(known))}")
        return cls(**data)


