"""The published CIFAR-10 ResNets load into our zoo models with strict=True and reproduce their
accuracy exactly on the 10,000 CIFAR-10 test images (ImageNet normalisation, as they were trained)."""

from __future__ import annotations

import pytest
import torch

from compressor.data import Split, load_dataset
from compressor.training import evaluate
from compressor.zoo import MODELS, load_model, pretrained_path

pytestmark = pytest.mark.shared_data

# akamaster/pytorch_resnet_cifar10's README: ResNet-20 91.73%, ResNet-56 93.39% test accuracy.
PUBLISHED = {"resnet20": 0.9173, "resnet56": 0.9339}


@pytest.fixture(scope="module")
def cifar_test(shared_data) -> tuple[Split, object]:
    entry = MODELS["resnet20"]
    bundle = load_dataset(
        f"cifar10:{shared_data / 'cifar10_test.npz'}",
        input_shape=entry.input_shape,
        mean=entry.mean,
        std=entry.std,
    )
    full = Split(
        torch.cat([bundle.search.x, bundle.report.x]),
        torch.cat([bundle.search.y, bundle.report.y]),
        "cifar10 test images 0-9999",
    )
    return full, bundle


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_pretrained_resnet_accuracy(name, shared_data, cifar_test):
    full, _ = cifar_test
    assert len(full) == 10_000
    weights = pretrained_path(MODELS[name], shared_data)
    assert weights is not None, f"{MODELS[name].pretrained} missing from {shared_data / 'weights'}"
    model = load_model(name, weights=weights).model
    # strict loading: every parameter and buffer of ours came from the file
    file_keys = set(torch.load(weights, map_location="cpu", weights_only=True)["state_dict"])
    assert {f"module.{k}" for k in model.state_dict() if not k.endswith("num_batches_tracked")} == file_keys
    # What is checked is the architecture and the weights, not how they are run: channels-last on both cores
    # is the fastest way here (ResNet-56 on 10,000 images: 40 s on one thread, ~17 s so).
    acc = evaluate(model.to(memory_format=torch.channels_last), full, num_threads=2)
    assert acc == pytest.approx(PUBLISHED[name], abs=0.0005)


def test_search_and_report_halves(cifar_test):
    _, bundle = cifar_test
    assert len(bundle.search) == len(bundle.report) == 5000
    assert bundle.search.indices[0] == 0 and bundle.report.indices[0] == 5000
    assert bundle.train is bundle.search
    # the file keeps the shuffled test order, so each half holds about 500 images per class
    counts = torch.bincount(bundle.report.y, minlength=10)
    assert counts.min() > 430 and counts.max() < 570
