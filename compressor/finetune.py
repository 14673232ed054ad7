"""Fine-tuning a pruned model to recover accuracy: a short SGD + cosine run on the bundle's train
split (or its search split when the dataset has no training set; never on the report split)."""

from __future__ import annotations

import logging

from torch import nn

from compressor.data import DataBundle
from compressor.training import ProgressFn, train

log = logging.getLogger(__name__)


def finetune(
    model: nn.Module,
    bundle: DataBundle,
    *,
    epochs: int,
    lr: float = 0.01,
    seed: int = 0,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    progress: ProgressFn | None = None,
    num_threads: int | None = None,
) -> nn.Module:
    """Fine-tune `model` in place for `epochs` epochs and return it (eval mode).

    The learning rate is small by default (0.01, cosine to zero): the weights already sit close to
    a good solution and only have to adapt to the removed channels.
    """
    split = bundle.train if bundle.train is not None else bundle.search
    log.info("fine-tuning for %d epochs (lr %g) on %s", epochs, lr, split.description)
    return train(
        model,
        split,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        weight_decay=weight_decay,
        progress=progress,
        num_threads=num_threads,
    )
