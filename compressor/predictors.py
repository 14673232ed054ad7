"""Predictors of a pruned candidate's accuracy *after recovery*, and how to judge them.

The search ranks candidates before recovery, but what the user gets is the recovered network. The
search's reward today is the candidate's accuracy after BatchNorm re-estimation. Cheaper or better
predictors measured against it (`benchmarks/bench_reward.py`, issue 7 part 5):

- **mimicking steps**: a few SGD steps of the recovery's own loss (the teacher's softened outputs and
  pooled features, as `compressor.finetune` distils), then the accuracy on the reward images;
- **recoverability** (PRACTISE, Wang & Wu, CVPR 2023): how close the student's pooled features come to
  the teacher's after those steps — the feature-mimicking loss, lower is better.

`mimic_scores` produces all of them from one mimicking run (its checkpoint at 0 steps is the reward of
today), and `spearman` says how well a predictor ranks candidates by their recovered accuracy.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compressor.data import Split
from compressor.finetune import augment, distillation_loss

TEMPERATURE = 4.0  # recovery's default (compressor.finetune.RecoveryConfig)
# A low rate: 0.01 (recovery's default before it was lowered to 0.003) at full momentum first *raises* a damaged
# ResNet-20's loss for tens of steps (pooled-feature MSE 0.55 -> 22 after 5 steps, reward accuracy
# 31% -> 12%), so a few steps at that rate rank candidates by how they survive the jolt; at 0.001 the
# loss falls from the first step (accuracy 31% -> 37% -> 59% after 5 and 30 steps).
MIMIC_LR = 0.001


# ------------------------------------------------------------------------------------ rank correlation
def ranks(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """1-based ranks of `values` (smallest first); tied values share the mean of their ranks."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="mergesort")
    out = np.empty(len(v), dtype=np.float64)
    out[order] = np.arange(1, len(v) + 1, dtype=np.float64)
    for value in np.unique(v):
        tied = v == value
        if tied.sum() > 1:
            out[tied] = out[tied].mean()
    return out


def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation of `x` and `y` (Pearson's correlation of their ranks, ties averaged);
    nan when either is constant."""
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values, y {len(y)}")
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


# --------------------------------------------------------------------------------- teacher and student
@contextlib.contextmanager
def pooled_features(model: nn.Module) -> Iterator[list[torch.Tensor | None]]:
    """Captures the input of the model's last Linear layer (the pooled features before the classifier)
    on every forward pass, in `box[0]` (None when the model has no Linear layer)."""
    box: list[torch.Tensor | None] = [None]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    handle = None
    if linears:
        def hook(_module, inputs, _output) -> None:
            box[0] = inputs[0]

        handle = linears[-1].register_forward_hook(hook)
    try:
        yield box
    finally:
        if handle is not None:
            handle.remove()


@dataclass
class Answers:
    """A network's logits and pooled features on a split, in order."""

    logits: torch.Tensor
    features: torch.Tensor | None


def answers(model: nn.Module, split: Split, *, batch_size: int = 256) -> Answers:
    """`model`'s logits and pooled features on `split` (eval mode, no gradients)."""
    model.eval()
    logits, feats = [], []
    with pooled_features(model) as box, torch.inference_mode():
        for x, _ in split.batches(batch_size):
            logits.append(model(x))
            feats.append(box[0])
    features = torch.cat(feats) if all(f is not None for f in feats) else None  # type: ignore[arg-type]
    return Answers(torch.cat(logits), features)


@dataclass
class Agreement:
    """How a student compares with its teacher on a split."""

    accuracy: float  # top-1 against the labels
    agreement: float  # fraction of images where student and teacher agree on the top class
    kl: float  # distillation loss: KL(teacher ‖ student) at `TEMPERATURE`, times T²
    feature_mse: float | None  # pooled-feature mean squared error (None: shapes differ or no Linear)


def compare(student: nn.Module, split: Split, teacher: Answers) -> Agreement:
    """The student's accuracy on `split` and its distance from the teacher's answers there."""
    mine = answers(student, split)
    top = mine.logits.argmax(1)
    mse = None
    if mine.features is not None and teacher.features is not None and mine.features.shape == teacher.features.shape:
        mse = float(F.mse_loss(mine.features, teacher.features))
    return Agreement(accuracy=float((top == split.y).float().mean()),
                     agreement=float((top == teacher.logits.argmax(1)).float().mean()),
                     kl=float(distillation_loss(mine.logits, teacher.logits, temperature=TEMPERATURE)),
                     feature_mse=mse)


# ------------------------------------------------------------------------------------------ mimicking
TeacherBatches = dict[int, tuple[torch.Tensor, torch.Tensor | None]]


def mimic(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    steps: int,
    lr: float = MIMIC_LR,
    batch_size: int = 64,
    feature_weight: float = 1.0,
    seed: int = 0,
    cache: TeacherBatches | None = None,
) -> list[float]:
    """Train `student` in place for `steps` steps of the recovery's loss (the softened outputs and
    pooled features of `teacher` on augmented `images`, SGD with Nesterov momentum at a constant `lr`,
    by default `MIMIC_LR`, a tenth of recovery's).
    Step i's batch depends only on `images`, `seed` and i, so `cache` (one per teacher, images and
    seed) keeps the teacher's answers for the next candidate. Returns each step's loss."""
    return [loss for _, loss in _mimic_steps(student, teacher, images, steps=steps, lr=lr, batch_size=batch_size,
                                             feature_weight=feature_weight, seed=seed, cache=cache)]


def _mimic_steps(student: nn.Module, teacher: nn.Module, images: torch.Tensor, *, steps: int, lr: float,
                 batch_size: int, feature_weight: float, seed: int,
                 cache: TeacherBatches | None) -> Iterator[tuple[int, float]]:
    """`mimic`, yielding (steps done, loss) after each step; the student is back in train mode when
    the caller resumes the iteration."""
    n = len(images)
    gen = torch.Generator().manual_seed(seed)
    per_epoch = max(1, n // batch_size)
    flip = images.shape[1] == 3  # as recovery: mirror images of photos are photos; of digits, not
    opt = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=lr, momentum=0.9,
                          nesterov=True, weight_decay=5e-4)
    teacher.eval()
    order = torch.randperm(n, generator=gen)
    with pooled_features(student) as s_box, pooled_features(teacher) as t_box:
        for step in range(steps):
            if step and step % per_epoch == 0:
                order = torch.randperm(n, generator=gen)
            i = step % per_epoch
            x = augment(images[order[i * batch_size:(i + 1) * batch_size]], gen, flip=flip)
            if cache is not None and step in cache:
                target, t_feat = cache[step]
            else:
                with torch.no_grad():
                    target = teacher(x)
                t_feat = t_box[0]
                if cache is not None:
                    cache[step] = (target, t_feat)
            student.train()
            out = student(x)
            loss = distillation_loss(out, target, temperature=TEMPERATURE)
            s_feat = s_box[0]
            if feature_weight > 0 and s_feat is not None and t_feat is not None and s_feat.shape == t_feat.shape:
                loss = loss + feature_weight * F.mse_loss(s_feat, t_feat)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            yield step + 1, float(loss.detach())
    student.eval()


@dataclass
class MimicScore:
    """The student after `steps` mimicking steps, against the teacher on the scoring split."""

    steps: int
    agreement: Agreement
    seconds: float  # since the scoring began (mimicking and every evaluation so far)
    eval_seconds: float  # of which this comparison with the teacher


def mimic_scores(
    student: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    split: Split,
    *,
    checkpoints: Sequence[int],
    teacher_answers: Answers | None = None,
    lr: float = MIMIC_LR,
    batch_size: int = 64,
    feature_weight: float = 1.0,
    seed: int = 0,
    cache: TeacherBatches | None = None,
) -> list[MimicScore]:
    """Mimic the teacher on `images` (in place) and compare the student with the teacher on `split`
    after each number of steps in `checkpoints` (ascending; 0 scores the student as it came: today's
    reward). `teacher_answers` on `split` may be passed to share them across candidates."""
    if list(checkpoints) != sorted(checkpoints) or (checkpoints and checkpoints[0] < 0):
        raise ValueError(f"checkpoints must be ascending step counts >= 0, got {list(checkpoints)}")
    t0 = time.perf_counter()
    reference = teacher_answers if teacher_answers is not None else answers(teacher, split)
    wanted = list(checkpoints)
    out = []

    def score(steps: int) -> None:
        t1 = time.perf_counter()
        agreement = compare(student, split, reference)
        t2 = time.perf_counter()
        out.append(MimicScore(steps=steps, agreement=agreement, seconds=t2 - t0, eval_seconds=t2 - t1))

    if 0 in wanted:
        score(0)
    last = wanted[-1] if wanted else 0
    for steps, _ in _mimic_steps(student, teacher, images, steps=last, lr=lr, batch_size=batch_size,
                                 feature_weight=feature_weight, seed=seed, cache=cache):
        if steps in wanted:
            score(steps)
    return out
