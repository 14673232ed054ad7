"""Train and evaluate helpers: top-1 accuracy, a deterministic SGD + cosine training loop, and the
cached demo model (demo-cnn on scikit-learn digits) that `make demo` starts from."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from compressor.data import Split
from compressor.fileio import atomic_target

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, float, float], None]  # (epoch, mean loss, train accuracy)

DEMO_WEIGHTS_NAME = "demo-cnn-digits.pt"
# Below this many parameters one intra-op thread is as fast as several, and on a busy machine
# (2 cores shared by many processes) spinning OpenMP threads make tiny models ~10x slower.
SMALL_MODEL_PARAMS = 200_000
DEFAULT_CACHE_DIR = Path("~/.cache/amc")


@contextlib.contextmanager
def _threads(model: nn.Module, num_threads: int | None) -> Iterator[None]:
    """Run with `num_threads` torch threads (None: 1 for small models, else unchanged), then restore."""
    if num_threads is None:
        small = sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMS
        num_threads = 1 if small else torch.get_num_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(
    model: nn.Module, split: Split, *, batch_size: int = 256, num_threads: int | None = None
) -> float:
    """Top-1 accuracy of `model` on `split`, as a fraction in [0, 1] (model left in eval mode)."""
    if len(split) == 0:
        raise ValueError(f"cannot evaluate on an empty split ({split.description})")
    model.eval()
    correct = 0
    device = next(model.parameters(), torch.empty(0)).device  # recovery may train on a GPU
    with _threads(model, num_threads), torch.inference_mode():
        for x, y in split.batches(batch_size):
            correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / len(split)


def train(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    progress: ProgressFn | None = None,
    num_threads: int | None = None,
) -> nn.Module:
    """Train in place with SGD (Nesterov momentum) and a per-step cosine learning-rate schedule.

    Deterministic for a given seed on one machine: the shuffling order and dropout draw from
    generators seeded here. `num_threads` None uses one torch thread for small models (see
    SMALL_MODEL_PARAMS) and leaves the setting alone otherwise. Returns the model in eval mode.
    """
    with _threads(model, num_threads):
        return _train(model, split, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                      weight_decay=weight_decay, momentum=momentum, progress=progress)  # fmt: skip


def _train(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float,
    momentum: float,
    progress: ProgressFn | None,
) -> nn.Module:
    if epochs < 0 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}")
    n = len(split)
    if n == 0:
        raise ValueError(f"cannot train on an empty split ({split.description})")
    torch.manual_seed(seed)  # dropout and any other global-RNG use inside the model
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n, generator=gen)
        loss_sum, correct, seen = 0.0, 0, 0
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            if len(idx) < 2 and n >= 2:
                continue  # a batch of one breaks BatchNorm's statistics
            x, y = split.x[idx], split.y[idx]
            out = model(x)
            loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((out.argmax(1) == y).sum())
            seen += len(idx)
        mean_loss, acc = loss_sum / max(seen, 1), correct / max(seen, 1)
        log.debug("epoch %d/%d: loss %.4f, train accuracy %.4f", epoch + 1, epochs, mean_loss, acc)
        if progress is not None:
            progress(epoch, mean_loss, acc)
    model.eval()
    return model


def save_state_dict(model: nn.Module, path: Path) -> None:
    """torch.save the state dict atomically (temp file in the same folder, then rename)."""
    with atomic_target(path) as tmp:
        torch.save(model.state_dict(), tmp)


def train_demo_cnn(
    cache_dir: str | Path | None = None,
    *,
    epochs: int = 20,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> Path:
    """Weights of demo-cnn trained on the digits train split, trained once and cached.

    Returns `cache_dir/demo-cnn-digits.pt` (default cache dir `~/.cache/amc`), a plain state dict.
    """
    from compressor.data import load_dataset
    from compressor.zoo import load_model

    path = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / DEMO_WEIGHTS_NAME
    if path.is_file():
        log.info("demo-cnn weights already cached at %s", path)
        return path
    loaded = load_model("demo-cnn")
    bundle = load_dataset("digits", input_shape=loaded.entry.input_shape, mean=loaded.entry.mean,
                          std=loaded.entry.std, seed=seed)  # fmt: skip
    assert bundle.train is not None
    log.info("training demo-cnn on %s (%d epochs)", bundle.train.description, epochs)

    def report(epoch: int, loss: float, acc: float) -> None:
        log.info("demo-cnn epoch %d/%d: loss %.3f, train accuracy %.1f%%", epoch + 1, epochs, loss, 100 * acc)
        if progress is not None:
            progress(epoch, loss, acc)

    train(loaded.model, bundle.train, epochs=epochs, lr=0.05, batch_size=64, seed=seed,
          weight_decay=5e-4, progress=report)  # fmt: skip
    acc = evaluate(loaded.model, bundle.report)
    log.info("demo-cnn report accuracy %.2f%% on %s", 100 * acc, bundle.report.description)
    save_state_dict(loaded.model, path)
    log.info("saved demo-cnn weights to %s", path)
    return path
