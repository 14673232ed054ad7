"""Exporters: ONNX and TFLite, the same shape (`export(model, example_input, path, *, atol)` returning
an `ExportResult`), each validating the written file against PyTorch before it is used."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from compressor.errors import ExportError
from compressor.export import onnx, tflite
from compressor.export.common import ExportResult


class Exporter(Protocol):
    def __call__(
        self, model: nn.Module, example_input: torch.Tensor, path: str | Path, *, atol: float = ...
    ) -> ExportResult: ...


EXPORTERS: dict[str, Exporter] = {
    onnx.FORMAT: onnx.export,
    tflite.FORMAT: tflite.export,
}

# Which exporters can run here (TFLite needs the optional litert-torch).
AVAILABLE: dict[str, Callable[[], bool]] = {onnx.FORMAT: lambda: True, tflite.FORMAT: tflite.available}


def export_model(
    format: str, model: nn.Module, example_input: torch.Tensor, path: str | Path, **kw: Any
) -> ExportResult:
    """Export with the exporter registered under `format` ("onnx" or "tflite")."""
    exporter = EXPORTERS.get(format)
    if exporter is None:
        raise ExportError(f"unknown export format {format!r}; use one of {', '.join(sorted(EXPORTERS))}")
    return exporter(model, example_input, path, **kw)


__all__ = ["EXPORTERS", "AVAILABLE", "ExportResult", "Exporter", "export_model", "onnx", "tflite"]
