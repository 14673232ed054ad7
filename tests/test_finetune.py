"""Training, evaluation and fine-tuning on the embedded digits set: demo-cnn learns digits, training
is deterministic, and fine-tuning brings a damaged model back."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from compressor.data import DataBundle, load_dataset
from compressor.finetune import finetune
from compressor.training import DEMO_WEIGHTS_NAME, evaluate, train, train_demo_cnn
from compressor.zoo import load_model


@pytest.fixture(scope="module")
def digits() -> DataBundle:
    entry = load_model("demo-cnn").entry
    return load_dataset("digits", input_shape=entry.input_shape, mean=entry.mean, std=entry.std)


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    return train_demo_cnn(tmp_path_factory.mktemp("cache"))


def test_demo_cnn_learns_digits(demo_weights, digits):
    assert demo_weights.name == DEMO_WEIGHTS_NAME and demo_weights.is_file()
    model = load_model("demo-cnn", weights=demo_weights).model
    assert evaluate(model, digits.report) >= 0.95
    assert evaluate(model, digits.search) >= 0.95


def test_demo_weights_are_cached(demo_weights):
    before = demo_weights.stat().st_mtime_ns
    assert train_demo_cnn(demo_weights.parent) == demo_weights
    assert demo_weights.stat().st_mtime_ns == before  # not retrained


def test_untrained_model_is_near_chance(digits):
    torch.manual_seed(0)
    acc = evaluate(load_model("demo-cnn").model, digits.report)
    assert 0.0 <= acc < 0.4


def test_training_is_deterministic(digits):
    small = digits.train.subset(range(200))
    threads = torch.get_num_threads()
    states = []
    for _ in range(2):
        torch.manual_seed(123)  # same initial weights
        model = load_model("demo-cnn").model
        epochs_seen = []
        train(
            model,
            small,
            epochs=2,
            lr=0.05,
            batch_size=32,
            seed=7,
            progress=lambda e, _loss, _acc, seen=epochs_seen: seen.append(e),
        )
        assert epochs_seen == [0, 1]
        assert torch.get_num_threads() == threads  # the one-thread setting for tiny models is undone
        assert not model.training
        states.append(model.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def _magnitude_prune(model: nn.Module, fraction: float) -> None:
    """Zero the smallest `fraction` of every conv layer's weights (fine-grained pruning damage)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                w = m.weight
                threshold = w.abs().flatten().kthvalue(int(fraction * w.numel())).values
                w[w.abs() <= threshold] = 0.0


def test_finetune_recovers_a_damaged_model(demo_weights, digits):
    model = load_model("demo-cnn", weights=demo_weights).model
    _magnitude_prune(model, 0.8)
    damaged = evaluate(model, digits.report)
    assert damaged < 0.5
    out = finetune(model, digits, epochs=2, lr=0.01, seed=0)
    assert out is model and not model.training
    assert evaluate(model, digits.report) >= 0.9


def test_finetune_without_train_split_uses_search_split(demo_weights, digits):
    model = load_model("demo-cnn", weights=demo_weights).model
    report_before = digits.report.x.clone()
    bundle = dataclasses.replace(digits, train=None)
    model_before = copy.deepcopy(model)
    calls = []
    finetune(model, bundle, epochs=1, lr=0.01, seed=0, progress=lambda e, loss, acc: calls.append((e, acc)))
    assert len(calls) == 1 and calls[0][1] > 0.9  # it trained on the (learnable) search images
    assert any(
        not torch.equal(a, b) for a, b in zip(model.parameters(), model_before.parameters(), strict=True)
    )
    assert torch.equal(digits.report.x, report_before)
