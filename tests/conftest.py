"""Shared fixtures. Tests use tiny models; those that need ../shared/data skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AMC_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (CIFAR-10 test set and pretrained ResNets); skips the test when absent."""
    if not (SHARED_DATA / "cifar10_test.npz").is_file():
        pytest.skip(f"{SHARED_DATA} is absent (CIFAR-10 and pretrained weights live there)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # CI has 2 cores; keep torch from oversubscribing them when tests start subprocesses.
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield
