"""What the ONNX and TFLite exporters share: the result record, atomic writing, and the numeric check
of an exported file against PyTorch on the example input plus a few random inputs."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor import fileio
from compressor.errors import ExportError

log = logging.getLogger(__name__)

Runner = Callable[[np.ndarray], np.ndarray]  # runs the exported file on one NCHW float32 input


@dataclass(frozen=True)
class ExportResult:
    """An exported, validated model file."""

    path: Path
    format: str
    max_abs_diff: float  # largest |exported - PyTorch| over the validation inputs
    seconds: float  # conversion + validation wall time
    size_bytes: int


def validation_inputs(example_input: torch.Tensor, *, n_random: int = 3, seed: int = 0) -> list[torch.Tensor]:
    """The example input and `n_random` standard-normal inputs of the same shape (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    x = example_input.detach().to(torch.float32).cpu()
    return [x] + [torch.randn(x.shape, generator=gen) for _ in range(n_random)]


def compare(
    model: nn.Module,
    run: Runner,
    example_input: torch.Tensor,
    *,
    atol: float,
    fmt: str,
    path: Path,
    n_random: int = 3,
) -> float:
    """Max |exported - PyTorch| over the validation inputs; ExportError when above the tolerance.

    The tolerance is `atol` for outputs up to 1 in magnitude and `atol * max|output|` beyond: float32
    rounding grows with the values (an untrained ResNet-56 gives logits in the thousands).
    """
    model.eval()
    worst = 0.0
    scale = 0.0
    for i, x in enumerate(validation_inputs(example_input, n_random=n_random)):
        with torch.inference_mode():
            want = model(x).detach().cpu().numpy()
        try:
            got = np.asarray(run(x.numpy()))
        except Exception as e:
            raise ExportError(f"{fmt} model {path} could not be run: {type(e).__name__}: {e}") from e
        if got.shape != want.shape:
            raise ExportError(
                f"{fmt} model {path} returns shape {got.shape}, PyTorch returns {want.shape} "
                f"(validation input {i})"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
        if not np.isfinite(diff):
            diff = float("inf")
        worst = max(worst, diff)
        scale = max(scale, float(np.max(np.abs(want))) if want.size else 0.0)
    tolerance = atol * max(1.0, scale)
    if not worst <= tolerance:
        raise ExportError(
            f"{fmt} model {path} disagrees with PyTorch: max abs difference {worst:.3g} > tolerance "
            f"{tolerance:.3g} (atol {atol:g}, outputs up to {scale:.3g}) over the example input and "
            f"{n_random} random inputs. The model may have data-dependent control flow or an operator "
            "the converter mishandles"
        )
    if scale < 1e-3:
        log.warning("%s check of %s is weak: the model's outputs are tiny (max %.2g)", fmt, path, scale)
    return worst


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """A temp path next to `path`; renamed onto `path` when the block succeeds, removed when not."""
    with fileio.atomic_target(path, mode=None) as tmp:  # ordinary permissions: what the umask gives
        try:
            yield tmp
        finally:
            for extra in tmp.parent.glob(tmp.name + ".*"):  # e.g. external-data side files
                extra.unlink(missing_ok=True)


def check_inputs(model: nn.Module, example_input: torch.Tensor, fmt: str) -> None:
    if not isinstance(model, nn.Module):
        raise ExportError(f"{fmt} export needs a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input)
        raise ExportError(f"{fmt} export needs an N x C x H x W example input tensor, got {shape}")


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start


Converter = Callable[[nn.Module, torch.Tensor, Path], None]


def validate_file(model: nn.Module, path: str | Path, example_input: torch.Tensor, *, runner: Callable[[Path], Runner],
                  fmt: str, atol: float) -> float:
    """Max |exported - PyTorch| on the example and random inputs; ExportError above tolerance."""
    path = Path(path)
    return compare(model, runner(path), example_input, atol=atol, fmt=fmt, path=path)


def export_file(model: nn.Module, example_input: torch.Tensor, path: str | Path, *, convert: Converter,
                runner: Callable[[Path], Runner], fmt: str, atol: float) -> ExportResult:
    """Convert, check against PyTorch, then move into place (nothing is written on failure)."""
    check_inputs(model, example_input, fmt)
    path = Path(path)
    timer = Timer()
    with atomic_target(path) as tmp:
        convert(model, example_input, tmp)
        diff = compare(model, runner(tmp), example_input, atol=atol, fmt=fmt, path=path)
    result = ExportResult(path, fmt, diff, timer.seconds, path.stat().st_size)
    log.info("exported %s (%d bytes, max abs diff %.2g, %.1f s)", path, result.size_bytes, diff, result.seconds)
    return result
