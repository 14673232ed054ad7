"""Typed configuration of a search. The same strings are used on the command line and in the
REST job spec (`flops=0.5`, `latency-ms=4.0`, `demo-cnn`, `digits`).

Each SearchConfig field carries an `Option` (help text, choices, bounds, spelling): `amc compress`'s
flags, the REST job spec and the job worker are generated from them (`server/options.py`), so a new
field with its Option needs nothing else to reach the command line and the API."""

from __future__ import annotations

import math
import re
from dataclasses import Field, asdict, dataclass, field, fields
from typing import Any, Literal

from compressor.errors import ConfigError

TargetKind = Literal["flops", "params", "latency-ms"]
RewardKind = Literal["err", "flops", "params", "latency"]
StrategyName = Literal["ddpg", "random", "uniform"]
Granularity = Literal["channel", "weight"]
FinetuneMethod = Literal["distill", "plain"]
FinetuneMix = Literal["none", "mixup", "cutmix"]
QuantizeScheme = Literal["none", "int8"]

TARGET_KINDS: tuple[str, ...] = ("flops", "params", "latency-ms")
REWARD_KINDS: tuple[str, ...] = ("err", "flops", "params", "latency")
STRATEGIES: tuple[str, ...] = ("ddpg", "random", "uniform")
FINETUNE_METHODS: tuple[str, ...] = ("distill", "plain")
FINETUNE_MIXES: tuple[str, ...] = ("none", "mixup", "cutmix")
GRANULARITIES: tuple[str, ...] = ("channel", "weight")
QUANTIZE_SCHEMES: tuple[str, ...] = ("none", "int8")
_TRAIN_DEVICE = re.compile(r"cpu|cuda(:\d{1,2})?")


class _FieldDefault:
    def __repr__(self) -> str:
        return "FIELD_DEFAULT"


FIELD_DEFAULT: Any = _FieldDefault()  # Option.spec_default: the job spec uses the field's own default


@dataclass(frozen=True)
class Option:
    """How a SearchConfig field is offered to users, on the command line and in the REST job spec.

    `choices`: a closed set (the names the search validates against). `ge`/`gt`/`le` and
    `min_length`/`max_length`: what the REST job spec accepts and the OpenAPI document shows;
    SearchConfig checks its own ranges in `__post_init__`, and the CLI relies on that. `flag`: the CLI
    spelling when it is not `--field-name` (`--no-field-name` for a bool that defaults to True, with
    `flag_help` saying what turning it off does). `spec_help`/`spec_default`: the job spec's description
    and default where they differ from the CLI's; a `spec_default` of None means "the search's default"."""

    help: str
    choices: tuple[str, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    flag: str | None = None
    flag_help: str | None = None
    spec_help: str | None = None
    spec_default: Any = FIELD_DEFAULT


def option(help: str, **kwargs: Any) -> dict[str, Option]:
    """`dataclasses.field` metadata holding a field's Option."""
    return {"option": Option(help, **kwargs)}


def search_options() -> tuple[tuple[Field[Any], Option], ...]:
    """SearchConfig's fields with their Option, in declaration order."""
    missing = [f.name for f in fields(SearchConfig) if "option" not in f.metadata]
    if missing:
        raise TypeError(f"SearchConfig fields without an Option (metadata=option(...)): {', '.join(missing)}")
    return tuple((f, f.metadata["option"]) for f in fields(SearchConfig))


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

    model: str = field(metadata=option(
        "zoo name (demo-cnn, resnet56, mobilenet-v2, ...) or package.module:factory",
        min_length=1, max_length=300))
    data: str = field(metadata=option(
        "digits | cifar10:PATH | imagefolder:PATH", min_length=1, max_length=1000, spec_default="digits"))
    target: str = field(default="flops=0.5", metadata=option(
        "flops=F | params=F (fractions to keep) | latency-ms=MS"))
    strategy: StrategyName = field(default="ddpg", metadata=option(
        "ddpg (AMC), random (same episodes, random actions) or uniform (one preserve ratio for all layers)",
        choices=STRATEGIES))
    episodes: int = field(default=100, metadata=option("search episodes", ge=1, le=100_000))
    seed: int = field(default=0, metadata=option("random seed; equal configs give equal results"))
    # None: resource-constrained search (reward -error, action wall)
    reward: RewardKind | None = field(default=None, metadata=option(
        "accuracy-guaranteed mode: trade error against cost instead of clamping to the target; "
        "omit for a resource-constrained search", choices=REWARD_KINDS))
    device: str = field(default="local", metadata=option(
        "local | adb:SERIAL | adb:HOST:PORT (latency targets)",
        spec_help="local | adb:SERIAL | adb:HOST:PORT (registered with POST /devices)"))
    weights: str | None = field(default=None, metadata=option(
        "weights file (state dict; loaded with weights_only=True) or .safetensors",
        spec_help="id of PyTorch weights uploaded with POST /uploads"))
    granularity: Granularity = field(default="channel", metadata=option(
        "channel pruning shrinks the network; weight is fine-grained magnitude pruning (size only)",
        choices=GRANULARITIES, spec_default=None))
    a_min: float = field(default=0.2, metadata=option(
        "smallest preserve ratio of a layer", gt=0, le=1, spec_default=None))
    round_to: int = field(default=8, metadata=option(
        "kept channels are multiples of this", ge=1, spec_default=None))
    reconstruct: bool = field(default=True, metadata=option(
        "least-squares reconstruction of each pruned layer from the search images",
        flag_help="skip least-squares reconstruction"))
    bn_recalibration: bool = field(default=True, metadata=option(
        "re-estimate BatchNorm statistics on search images after pruning",
        flag_help="skip BatchNorm re-estimation"))
    warmup: int | None = field(default=None, metadata=option(
        "DDPG warm-up episodes (default: 100, at most a quarter of the episodes)", ge=0))
    noise_decay: float | None = field(default=None, metadata=option(
        "DDPG's exploration noise is multiplied by this every episode after the warm-up (AMC: 0.95, which "
        "leaves no noise 60 episodes later); default: fitted to the episode budget, so the noise ends at a "
        "tenth of where it started", gt=0, le=1))
    # Explore around the uniform policy's ratio (DDPG warm-up, actor start, random search) instead of
    # uniformly over [a_min, 1] as AMC does. Only under a budget.
    uniform_prior: bool = field(default=True, metadata=option(
        "under a budget, explore around the uniform policy's preserve ratio instead of uniformly over "
        "[a_min, 1]",
        flag_help="explore uniformly over [a-min, 1] as AMC does, instead of around the uniform policy"))
    local_moves: bool = field(default=True, metadata=option(
        "under a budget, after the warm-up every other episode of DDPG or random search replays the best "
        "candidate so far with a few pairs of layers moved one channel step apart (one up, one down)",
        flag_help="let DDPG or random search propose every episode, as AMC does"))
    reward_samples: int | None = field(default=None, metadata=option(
        "images of the search split used for the reward (default: all)", ge=1))
    finetune_epochs: int = field(default=0, metadata=option(
        "fine-tuning epochs after the search", ge=0, le=1000))
    finetune_method: FinetuneMethod = field(default="distill", metadata=option(
        "distill: learn the unpruned network's outputs and pooled features (few images suffice); "
        "plain: cross-entropy on the labels alone",
        choices=FINETUNE_METHODS))
    finetune_mix: FinetuneMix = field(default="none", metadata=option(
        "distill: blend pairs of training images (mixup: weighted average; cutmix: a pasted box) and "
        "match the teacher on the blend, so every batch is new data",
        choices=FINETUNE_MIXES))
    train_data: str | None = field(default=None, metadata=option(
        "recovery's training images, apart from --data (which the reward, reconstruction and the report use): "
        "digits | cifar10:PATH (an .npz of images, or cifar-10-batches-py: its data_batch_*) | "
        "imagefolder:PATH; refused if any image is also a report image. Default: --data's own training "
        "split, or its search split", min_length=1, max_length=1000, spec_default=None))
    train_with_search: bool = field(default=False, metadata=option(
        "with --train-data: recovery also trains on --data's search split (the images the reward and the "
        "reconstruction read; never the report split). Where the training images are of another kind than "
        "the validation images, such as JPEG copies of lossless photographs, this adds images of the kind "
        "the model is scored on"))
    finetune_lr: float | None = field(default=None, metadata=option(
        "recovery's learning rate (default: 0.003 for distill, 0.01 for plain; measured on a few thousand "
        "images)", gt=0, le=1, spec_default=None))
    finetune_batch_size: int | None = field(default=None, metadata=option(
        "recovery's batch size (default: 64 for up to 10,000 training images, 128 above)", ge=2, le=4096,
        spec_default=None))
    train_device: str = field(default="cpu", metadata=option(
        "where recovery trains: cpu, or cuda / cuda:N where a GPU exists (the search itself stays on the CPU)",
        min_length=1, max_length=16, spec_default=None))
    compare: bool = field(default=False, metadata=option(
        "also run uniform and random baselines at the same budget and episode count"))
    measure_top: int = field(default=3, metadata=option(
        "latency targets: how many of the best candidates are measured on the real device", ge=1))
    calibrate_latency: bool = field(default=True, metadata=option(
        "latency targets: time the unpruned network on the device before the search and scale the table's "
        "predictions by measured/predicted (a table timed on another day or another phone of the model)",
        flag_help="trust the latency table's milliseconds as they are until the correction rounds"))
    latency_rounds: int = field(default=2, metadata=option(
        "latency targets: correction rounds after the search. Each measures the best candidates, rescales "
        "the table's budget by how far its predictions were from the measurements and searches a third as "
        "many episodes again, while the best measured candidate misses the target or uses less than nine tenths "
        "of it", ge=0, le=10))
    prune_residual: bool = field(default=False, metadata=option(
        "also prune channels coupled through residual additions", spec_default=None))
    # Depth is what costs time on a CPU or phone.
    prune_blocks: bool = field(default=False, metadata=option(
        "residual blocks may be removed whole (a preserve ratio below a_min on a block's inner channels "
        "keeps only its shortcut); needs granularity channel"))
    depth_seeds: int = field(default=4, metadata=option(
        "with prune_blocks under a budget: how many policies built from a greedy block-removal order (blocks "
        "that cost the least accuracy per unit of cost saved go first; the rest of the network at the largest "
        "uniform ratio that fits) are played before the agent explores, in the search and in each latency "
        "correction round (0: none)", ge=0, le=20))
    width_seeds: bool = field(default=True, metadata=option(
        "with prune_blocks under a budget, DDPG or random search also plays policies that keep each stage "
        "(a run of layers of one width) at one width, from a greedy path that thins first the stage losing the "
        "least accuracy per unit of cost saved: with every block kept, and with each depth seed's blocks removed",
        flag_help="play only the uniform policy and the depth seeds before the agent explores"))
    tflite: bool = field(default=False, metadata=option(
        "also export model.tflite (needs the tflite extra)", spec_default=None))
    quantize: QuantizeScheme = field(default="none", metadata=option(
        "int8: also write model.int8.onnx, post-training int8 (ONNX Runtime static quantization, QDQ, int8 weights per "
        "channel, uint8 activations) calibrated on search images and checked against the float model; its "
        "accuracy on the report split (from the file) and its measured latency are reported beside the float "
        "model's. With a latency target or reward the search itself times candidates as int8 (the device's int8 "
        "lookup table; the target is the int8 model's latency)", choices=QUANTIZE_SCHEMES))
    qat_epochs: int = field(default=0, metadata=option(
        "with --quantize int8: epochs of quantization-aware recovery after the float recovery (the network "
        "trained on the same data and teacher while its weights and the tensors the int8 file "
        "quantizes are rounded as the file rounds them; the epoch is picked by the held-out accuracy of that int8 simulation)", ge=0, le=100))
    qat_lr: float = field(default=0.001, metadata=option(
        "quantization-aware recovery's learning rate (cosine-decayed like recovery's)", gt=0, le=1))

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
        if self.noise_decay is not None and not 0 < self.noise_decay <= 1:
            raise ConfigError("noise_decay", f"must be in (0, 1], got {self.noise_decay}")
        if self.finetune_epochs < 0:
            raise ConfigError("finetune_epochs", f"must be >= 0, got {self.finetune_epochs}")
        if self.finetune_mix != "none" and self.finetune_method != "distill":
            raise ConfigError("finetune_mix", "blending images needs the teacher to label the blend: use "
                                              "finetune_method 'distill'")
        if self.finetune_method not in FINETUNE_METHODS:
            raise ConfigError("finetune_method", f"{self.finetune_method!r} is unknown; choose one of "
                                                 f"{', '.join(FINETUNE_METHODS)}")
        if self.finetune_lr is not None and not 0 < self.finetune_lr <= 1:
            raise ConfigError("finetune_lr", f"must be in (0, 1], got {self.finetune_lr}")
        if self.finetune_batch_size is not None and not 2 <= self.finetune_batch_size <= 4096:
            raise ConfigError("finetune_batch_size", f"must be between 2 and 4096, got {self.finetune_batch_size}")
        if not _TRAIN_DEVICE.fullmatch(self.train_device):
            raise ConfigError("train_device", f"{self.train_device!r} is not a training device; use cpu, cuda "
                                              "or cuda:N")
        if self.prune_blocks and self.granularity != "channel":
            raise ConfigError("prune_blocks", "removing blocks needs granularity 'channel'")
        if not 0 <= self.latency_rounds <= 10:
            raise ConfigError("latency_rounds", f"must be between 0 and 10, got {self.latency_rounds}")
        if not 0 <= self.depth_seeds <= 20:
            raise ConfigError("depth_seeds", f"must be between 0 and 20, got {self.depth_seeds}")
        if self.measure_top < 1:
            raise ConfigError("measure_top", f"must be >= 1, got {self.measure_top}")
        if self.quantize not in QUANTIZE_SCHEMES:
            raise ConfigError("quantize", f"{self.quantize!r} is unknown; choose one of {', '.join(QUANTIZE_SCHEMES)}")
        if not 0 <= self.qat_epochs <= 100:
            raise ConfigError("qat_epochs", f"must be between 0 and 100, got {self.qat_epochs}")
        if self.train_with_search and self.train_data is None:
            raise ConfigError("train_with_search", "adds the search images to the training data: name the training "
                                                   "data too (--train-data)")
        if self.qat_epochs and self.quantize == "none":
            raise ConfigError("qat_epochs", "quantization-aware recovery prepares an int8 model: set quantize to int8 (--quantize int8)")
        if not 0 < self.qat_lr <= 1:
            raise ConfigError("qat_lr", f"must be in (0, 1], got {self.qat_lr}")
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


