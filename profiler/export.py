"""Turning a PyTorch module into a file a device can time. Uses the project's ONNX exporter
(`compressor.export.onnx`, which validates outputs against PyTorch) when present, plain
`torch.onnx.export` otherwise. Single-kernel models for lookup tables skip validation (`validate=False`):
they are built from random weights and timed, never used for their outputs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)


def _torch_export(model, example_input, path: Path) -> None:
    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example_input,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"], do_constant_folding=True)


def export_onnx(model, example_input, path: Path | str, *, validate: bool = True, atol: float = 1e-3) -> Path:
    """Export `model` (eval mode; BatchNorm folded by constant folding) to ONNX at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    project: ModuleType | None
    try:
        from compressor.export import onnx as project
    except ImportError:
        project = None
    if project is not None and validate and example_input.dim() == 4:
        return Path(project.export(model, example_input, path, atol=atol).path)
    if project is not None and hasattr(project, "convert"):
        project.convert(model, example_input, path)
    else:
        _torch_export(model, example_input, path)
    return path


def export_for_timing(model, example_input, path: Path | str, *, precision: str = "float32",
                      validate: bool = True) -> Path:
    """`model` as the file a device times in `precision`: float32 ONNX (`export_onnx`), or that file
    quantized to int8 the way shipped models are (`compressor.export.quantize.quantize_for_timing`:
    ranges from random inputs, since only its latency is used; the float file it starts from is
    written beside it and removed)."""
    path = Path(path)
    if precision == "float32":
        return export_onnx(model, example_input, path, validate=validate)
    if precision != "int8":
        raise ValueError(f"unknown precision {precision!r}")
    from compressor.export.quantize import quantize_for_timing

    float_path = export_onnx(model, example_input, path.with_suffix(".float.onnx"), validate=False)
    try:
        return quantize_for_timing(float_path, path)
    finally:
        float_path.unlink(missing_ok=True)
