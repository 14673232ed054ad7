"""Recovery after pruning: a short training run that brings the pruned network's accuracy back.

Two methods (`SearchConfig.finetune_method`):

- `distill` (default): the unpruned network is always at hand, so the pruned one learns to imitate
  it — the teacher's temperature-softened outputs (Hinton et al. 2015) and its pooled features before
  the classifier (MiR-style mimicking) — on augmented images (padded random crops, flips for RGB
  input). With only a few thousand images the teacher's answers on each new augmented view are worth
  far more than the labels.
  With `mix` (`SearchConfig.finetune_mix`), pairs of images are blended too (mixup or cutmix) and the
  student matches the teacher on the blend: the teacher labels any image, so each batch is new data.
- `plain`: cross-entropy on the labels, the same augmentation (no blending: the labels of a blend are
  not known).

Both train on the bundle's training split (its search split when the dataset has none; never the
report split), hold out a seeded slice of it to pick the best epoch, and use SGD with Nesterov
momentum and a per-step cosine schedule. The defaults come from measurements written down in
docs/BENCHMARKS.md ("Recovery").
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from compressor.data import DataBundle, Split
from compressor.training import _threads, evaluate

log = logging.getLogger(__name__)

Method = Literal["distill", "plain"]
Mix = Literal["none", "mixup", "cutmix"]
MIXES: tuple[str, ...] = ("none", "mixup", "cutmix")


@dataclass(frozen=True)
class RecoveryConfig:
    """How a pruned network is trained back. `lr` None picks the method's default."""

    epochs: int
    method: Method = "distill"
    lr: float | None = None
    batch_size: int | None = None  # None: 64, or 128 above LARGE_TRAINING_SET images
    weight_decay: float = 5e-4
    temperature: float = 4.0
    feature_weight: float = 1.0  # distill: weight of the pooled-feature mimicking term
    label_weight: float = 0.0  # distill: weight of cross-entropy on the labels
    # distill: weight of mimicking the outputs of the model's top-level stages (its direct children
    # with weights, the classifier excepted) wherever the student's output has the teacher's shape
    # (FitNets-style hints; a residual stage keeps its output width however its blocks are pruned).
    # Off: on the thinned ResNet-56 it changed nothing measurable (docs/BENCHMARKS.md, "Recovery").
    stage_weight: float = 0.0
    holdout: float = 0.1  # fraction of the training split held out to pick the best epoch
    augment: bool = True
    # distill: blend pairs of images (`mixup`: a weighted average; `cutmix`: a box of one pasted into
    # the other) and match the teacher on the blend — the teacher labels any image, so every batch is
    # new data ("function matching", Beyer et al. 2022).
    mix: Mix = "none"
    # epochs over which the learning rate rises linearly from zero before the cosine decay (tried against
    # the first epoch's drop in held-out accuracy at lr 0.01; it did not help, a lower rate did)
    warmup_epochs: float = 0.0
    seed: int = 0
    device: str = "cpu"  # where the student and teacher train (the search itself stays on the CPU)
    channels_last: bool = True
    # BatchNorm layers keep their running statistics while training (quantization-aware recovery: the
    # int8 file folds them into the convolutions, so training sees what the file computes)
    freeze_bn: bool = False

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if self.method not in ("distill", "plain"):
            raise ValueError(f"method must be distill or plain, got {self.method!r}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.mix not in MIXES:
            raise ValueError(f"mix must be one of {', '.join(MIXES)}, got {self.mix!r}")
        if self.mix != "none" and self.method != "distill":
            raise ValueError("mixing images needs the teacher to label the blend: use method 'distill'")
        if not 0 <= self.warmup_epochs <= max(self.epochs, 0):
            raise ValueError(f"warmup_epochs must be between 0 and epochs ({self.epochs}), got {self.warmup_epochs}")
        if self.temperature <= 0 or (self.batch_size is not None and self.batch_size < 2):
            raise ValueError("temperature must be positive and batch_size at least 2")

    def batch_for(self, images: int) -> int:
        """The batch size for a training split of `images` images."""
        if self.batch_size is not None:
            return self.batch_size
        return 128 if images > LARGE_TRAINING_SET else 64

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return DEFAULT_LR[self.method]


# Chosen by measurement (docs/BENCHMARKS.md, "Recovery"): the pruned weights start close to a good
# solution, and a large rate throws that away on a few thousand images. Distillation at 0.003 beat 0.01
# on a lightly thinned ResNet-56 (92.76% vs 92.34%, 8 epochs, 5,000 report images; at 0.01 the first
# epoch drops the held-out accuracy from 0.87 to 0.76, a warm-up does not prevent it) and on a heavily
# damaged ResNet-20 (84.95% vs 84.75%, 5 epochs).
DEFAULT_LR: dict[str, float] = {"distill": 0.003, "plain": 0.01}


@dataclass
class EpochStats:
    """One finished epoch, as the progress callback and the report see it."""

    epoch: int  # from 1
    epochs: int
    loss: float
    holdout_accuracy: float | None
    seconds: float
    eta_seconds: float | None = None  # the rest of the recovery at this run's mean epoch time


@dataclass
class RecoveryResult:
    """What recovery did: the chosen epoch, its held-out accuracy, and every epoch's numbers."""

    method: str
    epochs: int
    best_epoch: int  # 0: the starting point was best
    holdout_accuracy_before: float | None
    holdout_accuracy: float | None
    holdout: str | None
    train: str
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    batch_size: int | None = None
    device: str = "cpu"
    resumed_after: int = 0  # epochs a checkpoint already held when this run started

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "epochs": self.epochs, "best_epoch": self.best_epoch,
                "holdout_accuracy_before": self.holdout_accuracy_before,
                "holdout_accuracy": self.holdout_accuracy, "holdout": self.holdout, "train": self.train,
                "seconds": self.seconds, "history": self.history, "batch_size": self.batch_size,
                "device": self.device, "resumed_after": self.resumed_after}


ProgressFn = Callable[[EpochStats], None]


def _classifier(model: nn.Module) -> nn.Linear | None:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


class _StageOutputs:
    """Captures the outputs of a model's top-level stages: its direct children that hold weights,
    the classifier excepted (for a CIFAR ResNet: conv1, bn1, layer1, layer2, layer3)."""

    def __init__(self, model: nn.Module):
        self.values: dict[str, torch.Tensor] = {}
        head = _classifier(model)
        self._handles = []
        for name, child in model.named_children():
            if child is head or not any(True for _ in child.parameters()):
                continue
            self._handles.append(child.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output) -> None:
            if isinstance(output, torch.Tensor):
                self.values[name] = output
        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def stage_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Mean over the stages both models have, with outputs of one shape, of the MSE between them."""
    terms = [F.mse_loss(s, teacher[k]) for k, s in student.items() if k in teacher and s.shape == teacher[k].shape]
    return torch.stack(terms).mean() if terms else None


class _Features:
    """Captures the input of a model's last Linear layer (the pooled features before the classifier)."""

    def __init__(self, model: nn.Module):
        self.value: torch.Tensor | None = None
        head = _classifier(model)
        self._handle = head.register_forward_hook(self._hook) if head is not None else None

    def _hook(self, _module, inputs, _output) -> None:
        self.value = inputs[0]

    def close(self) -> None:
        if self._handle is not None:
            self._handle.remove()


def augment(x: torch.Tensor, gen: torch.Generator, *, flip: bool) -> torch.Tensor:
    """Padded random crops (an eighth of the side, zero padding = the mean colour after
    normalisation) and, when `flip`, random horizontal flips; one draw per image."""
    n, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h))  # n × h
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w))  # n × w
    out = padded[torch.arange(n).view(n, 1, 1, 1), torch.arange(x.shape[1]).view(1, -1, 1, 1),
                 rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        out[mask] = out[mask].flip(3)
    return out


def mix_images(x: torch.Tensor, gen: torch.Generator, how: Mix) -> torch.Tensor:
    """Blend each image with another of the batch (a seeded pairing), one Beta(1, 1) weight per batch."""
    if how == "none" or len(x) < 2:
        return x
    perm = torch.randperm(len(x), generator=gen)
    lam = float(torch.rand(1, generator=gen))
    if how == "mixup":
        return lam * x + (1 - lam) * x[perm]
    _, _, h, w = x.shape
    bh, bw = int(round(h * math.sqrt(1 - lam))), int(round(w * math.sqrt(1 - lam)))
    top = int(torch.randint(0, h - bh + 1, (1,), generator=gen))
    left = int(torch.randint(0, w - bw + 1, (1,), generator=gen))
    out = x.clone()
    out[:, :, top:top + bh, left:left + bw] = x[perm, :, top:top + bh, left:left + bw]
    return out


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """The learning rate's multiplier at `step` of `steps`: linear from 0 over the first `warmup` steps
    (reaching 1 at step `warmup`), then a cosine down to 0 at `steps`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    rest = max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(step - warmup, rest) / rest))


def split_holdout(split: Split, fraction: float, seed: int) -> tuple[Split, Split | None]:
    """(train part, held-out part) of `split`; the held-out part is a seeded random `fraction`."""
    n = len(split)
    k = int(round(fraction * n))
    if k < 1 or n - k < 2:
        return split, None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
    held, kept = order[:k].sort().values, order[k:].sort().values
    return (split.subset(kept, f"{split.description}, {n - k} of them (held out: {k})"),
            split.subset(held, f"{k} held-out images of {split.description}"))


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened outputs, times T² (Hinton et al. 2015)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


CHECKPOINT_VERSION = 1
LARGE_TRAINING_SET = 10_000  # above this many images, batches of 128 (fewer, cheaper optimizer steps)


def _fingerprint(model: nn.Module, split: Split, config: RecoveryConfig) -> dict[str, Any]:
    """What a recovery checkpoint must match to be resumed: the config, the (pruned) architecture and
    the training images."""
    shapes = [[name, list(t.shape)] for name, t in model.state_dict().items()]
    settings = {k: v for k, v in asdict(config).items() if k != "device"}  # a CPU checkpoint resumes on a GPU
    return {"version": CHECKPOINT_VERSION, "config": settings, "shapes": shapes,
            "train": split.description, "images": len(split)}


def _load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a torn or foreign file: start over, say why
        log.warning("recovery checkpoint %s is unreadable (%s: %s); recovery starts from epoch 1", path,
                    type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.warning("recovery checkpoint %s belongs to another recovery (config, architecture or training "
                    "images differ); recovery starts from epoch 1", path)
        return None
    return state


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write-then-rename: a kill mid-write leaves the previous epoch's checkpoint intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def recover(
    model: nn.Module,
    bundle: DataBundle,
    config: RecoveryConfig,
    *,
    teacher: nn.Module | None = None,
    progress: ProgressFn | None = None,
    num_threads: int | None = None,
    teacher_cache: TeacherCache | None = None,
    checkpoint: str | Path | None = None,
    step_progress: StepFn | None = None,
    refresh: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, RecoveryResult]:
    """Train `model` (in place) back towards the accuracy it had before pruning; returns it in eval
    mode on the CPU with the weights of its best held-out epoch, and what happened. `teacher` is
    required for `distill` (the unpruned network). `teacher_cache` (one per teacher) keeps the
    teacher's answers: the augmented batches depend only on the data and the config, so a second
    recovery with the same config (another budget of a frontier) does not run the teacher again.
    `checkpoint`: a file written after every epoch; a recovery started again with the same config,
    architecture and training images resumes after the last epoch it holds (and gives the same
    weights as one that was never interrupted). `step_progress` is called every few batches.
    `refresh(model)` is called whenever the weights are about to be used after they changed (before each
    epoch and each held-out evaluation): quantization-aware recovery re-measures its ranges there."""
    if config.method == "distill" and teacher is None:
        raise ValueError("distill needs the unpruned network as teacher")
    source = bundle.train if bundle.train is not None else bundle.search
    train_split, held = split_holdout(source, config.holdout, config.seed)
    t_start = time.perf_counter()
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(model, train_split, config)
    saved = _load_checkpoint(ckpt_path, fingerprint) if ckpt_path is not None else None
    device = torch.device(config.device)
    trainer = _Trainer(model, train_split, config, teacher=teacher, cache=teacher_cache, device=device)
    try:
        if saved is not None:
            model.load_state_dict(saved["model"])
            trainer.load_state_dict(saved["trainer"])
            before, best_acc, best_epoch = saved["before"], saved["best_acc"], int(saved["best_epoch"])
            best_state = saved["best_state"]
            history: list[dict[str, Any]] = list(saved["history"])
            done, elapsed = int(saved["epoch"]), float(saved["seconds"])
            log.info("recovery resumed from %s after epoch %d of %d", ckpt_path, done, config.epochs)
        else:
            if refresh is not None and held is not None:
                refresh(model)
            before = evaluate(model, held, num_threads=num_threads) if held is not None else None
            best_acc, best_epoch = before, 0
            best_state = _cpu_state(model)
            history, done, elapsed = [], 0, 0.0
        log.info("recovery (%s) for %d epochs, lr %g, batch %d, on %s (%s)", config.method, config.epochs,
                 config.learning_rate, trainer.batch_size, train_split.description, device)
        with _threads(model, num_threads):
            for epoch in range(done, config.epochs):
                if refresh is not None:
                    refresh(model)
                stats = trainer.run_epoch(epoch, step_progress)
                if held is not None:
                    if refresh is not None:
                        refresh(model)
                    stats.holdout_accuracy = evaluate(model, held, num_threads=num_threads)
                    if best_acc is None or stats.holdout_accuracy >= best_acc:  # later wins ties: more trained
                        best_acc, best_epoch = stats.holdout_accuracy, stats.epoch
                        best_state = _cpu_state(model)
                else:
                    best_epoch, best_state = stats.epoch, None
                history.append({"epoch": stats.epoch, "loss": stats.loss, "holdout_accuracy": stats.holdout_accuracy,
                                "seconds": stats.seconds})
                per_epoch = sum(h["seconds"] for h in history) / len(history)
                stats.eta_seconds = per_epoch * (config.epochs - stats.epoch)
                if ckpt_path is not None:
                    _save_checkpoint(ckpt_path, {
                        "fingerprint": fingerprint, "epoch": stats.epoch, "model": _cpu_state(model),
                        "trainer": trainer.state_dict(), "before": before, "best_acc": best_acc,
                        "best_epoch": best_epoch, "best_state": best_state, "history": history,
                        "seconds": elapsed + time.perf_counter() - t_start})
                if progress is not None:
                    progress(stats)
    finally:
        trainer.close()
        model.to("cpu")
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result = RecoveryResult(method=config.method, epochs=config.epochs, best_epoch=best_epoch,
                            holdout_accuracy_before=before, holdout_accuracy=best_acc,
                            holdout=held.description if held is not None else None,
                            train=train_split.description, seconds=elapsed + time.perf_counter() - t_start,
                            history=history, batch_size=trainer.batch_size, device=str(device),
                            resumed_after=done)
    return model, result


TeacherCache = dict[tuple, tuple[torch.Tensor, torch.Tensor | None]]
StepFn = Callable[[int, int, int, float], None]  # (epoch from 1, images done, images in the epoch, seconds)
STEP_EVERY = 50  # batches between step_progress calls


def _move(module: nn.Module, device: torch.device, memory_format: torch.memory_format) -> None:
    # Module.to takes memory_format (4-d parameters and buffers only); torch's stubs do not say so.
    module.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]


class _Trainer:
    """One recovery's optimizer, schedule and random streams, epoch by epoch; its state is what a
    checkpoint needs to continue exactly where it stopped."""

    def __init__(self, model: nn.Module, split: Split, config: RecoveryConfig, *, teacher: nn.Module | None,
                 cache: TeacherCache | None, device: torch.device):
        self.model, self.split, self.config, self.teacher, self.cache = model, split, config, teacher, cache
        self.device = device
        n = len(split)
        self.batch_size = config.batch_for(n)
        torch.manual_seed(config.seed)
        self.gen = torch.Generator().manual_seed(config.seed)
        lr = config.learning_rate
        # Channels-last suits convolutions on CPUs and GPUs alike (measured: ResNet training ~7% faster on
        # 2 cores); models without 4-d weights are left as they are.
        self.memory_format = (torch.channels_last if split.x.dim() == 4 and config.channels_last
                              else torch.contiguous_format)
        _move(model, device, self.memory_format)
        if teacher is not None:
            _move(teacher, device, self.memory_format)
            teacher.eval()
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
        per_epoch = math.ceil(n / self.batch_size)
        steps = max(1, config.epochs * per_epoch)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: lr_factor(step, steps, int(config.warmup_epochs * per_epoch)))
        self.flip = split.x.shape[1] == 3  # mirror images of photos are photos; of digits, not
        distill = config.method == "distill"
        self.s_feat = _Features(model) if distill and config.feature_weight > 0 else None
        self.t_feat = _Features(teacher) if self.s_feat is not None and teacher is not None else None
        self.s_stage = _StageOutputs(model) if distill and config.stage_weight > 0 else None
        self.t_stage = _StageOutputs(teacher) if self.s_stage is not None and teacher is not None else None

    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def _teacher_answers(self, x: torch.Tensor, key: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
        cache, usable = self.cache, self.cache is not None and self.t_stage is None
        if usable and key in cache:  # type: ignore[operator]
            return cache[key]  # type: ignore[index]
        # the stages' outputs are too large to keep: with them, the teacher runs each time
        with torch.no_grad():
            target = self.teacher(x)  # type: ignore[misc]
        t_value = self.t_feat.value if self.t_feat is not None else None
        if usable:
            cache[key] = (target, t_value)  # type: ignore[index]
        return target, t_value

    def run_epoch(self, epoch: int, step_progress: StepFn | None = None) -> EpochStats:
        """Train epoch `epoch` (from 0) and return its stats (the caller evaluates)."""
        config, split, model = self.config, self.split, self.model
        n, bs = len(split), self.batch_size
        t0 = time.perf_counter()
        model.train()
        if config.freeze_bn:
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        order = torch.randperm(n, generator=self.gen)
        loss_sum, seen = 0.0, 0
        for b, i in enumerate(range(0, n, bs)):
            idx = order[i:i + bs]
            if len(idx) < 2:
                continue  # a batch of one breaks BatchNorm's statistics
            x, y = split.x[idx], split.y[idx]
            if config.augment:
                x = augment(x, self.gen, flip=self.flip)
            x = mix_images(x, self.gen, config.mix)
            x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            out = model(x)
            if config.method == "distill":
                key = (split.description, n, config.seed, bs, config.augment, config.mix, epoch, i)
                target, t_value = self._teacher_answers(x, key)
                loss = distillation_loss(out, target, temperature=config.temperature)
                s_feat = self.s_feat
                if s_feat is not None and t_value is not None and s_feat.value is not None \
                        and s_feat.value.shape == t_value.shape:
                    loss = loss + config.feature_weight * F.mse_loss(s_feat.value, t_value)
                if self.s_stage is not None and self.t_stage is not None:
                    hint = stage_loss(self.s_stage.values, self.t_stage.values)
                    if hint is not None:
                        loss = loss + config.stage_weight * hint
                if config.label_weight > 0:
                    loss = loss + config.label_weight * F.cross_entropy(out, y)
            else:
                loss = F.cross_entropy(out, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            seen += len(idx)
            if step_progress is not None and (b + 1) % STEP_EVERY == 0:
                step_progress(epoch + 1, seen, n, time.perf_counter() - t0)
        return EpochStats(epoch=epoch + 1, epochs=config.epochs, loss=loss_sum / max(seen, 1),
                          holdout_accuracy=None, seconds=time.perf_counter() - t0)

    def close(self) -> None:
        for f in (self.s_feat, self.t_feat, self.s_stage, self.t_stage):
            if f is not None:
                f.close()
        if self.teacher is not None:
            _move(self.teacher, torch.device("cpu"), torch.contiguous_format)
        _move(self.model, self.device, torch.contiguous_format)


def finetune(model: nn.Module, bundle: DataBundle, *, epochs: int, lr: float = 0.01, seed: int = 0,
             batch_size: int = 64, weight_decay: float = 5e-4, teacher: nn.Module | None = None,
             method: Method = "plain", num_threads: int | None = None) -> nn.Module:
    """Shorthand for `recover` that returns only the model."""
    config = RecoveryConfig(epochs=epochs, method=method, lr=lr, batch_size=batch_size,
                            weight_decay=weight_decay, seed=seed)
    return recover(model, bundle, config, teacher=teacher, num_threads=num_threads)[0]
