"""The latency oracle interface the search asks. `profiler` implements it (lookup tables, real
devices); the search never imports device code."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    import torch

KernelOp = Literal["conv", "dwconv", "linear", "add", "pool"]


@dataclass(frozen=True)
class KernelSpec:
    """One fused kernel as the runtime executes it (conv+BN+ReLU counts as one conv kernel).

    `h`, `w` are the kernel's *input* spatial size; `cin`/`cout` are channel counts (for `add` and
    `pool`, cin == cout). `relu` says whether an activation is fused after it.
    """

    op: KernelOp
    cin: int
    cout: int
    k: int = 1
    stride: int = 1
    h: int = 1
    w: int = 1
    relu: bool = False


@runtime_checkable
class LatencyOracle(Protocol):
    """Answers how long a network takes on one device with one runtime."""

    name: str

    def predict_ms(self, kernels: Sequence[KernelSpec]) -> float:
        """Fast prediction (lookup table) for a network given as its kernel list, in milliseconds."""
        ...

    def measure_ms(self, model: torch.nn.Module, example_input: torch.Tensor, *, fresh: bool = False) -> float | None:
        """Real measurement (median ms) of a PyTorch model, or None when no device could answer.
        `fresh`: time it now, not from a cache of earlier measurements (a device's speed drifts)."""
        ...


@runtime_checkable
class FileTimer(Protocol):
    """An oracle that can also time a model file as it is (an int8 ONNX or TFLite file, which has no PyTorch
    form)."""

    def measure_file_ms(self, path: Path, *, fresh: bool = False) -> float | None:
        """Real measurement (ms, the oracle's statistic) of a model file, or None when no device could answer
        (or none runs that kind of file)."""
        ...


def precision_of(oracle: object) -> str:
    """Which form of a candidate an oracle times: "float32", or "int8" (an oracle of int8 tables, which
    predicts and measures every candidate as its post-training int8 form)."""
    return str(getattr(oracle, "precision", "float32"))
