"""Turning a PyTorch module into a file a device can time. Uses the project's ONNX exporter
(`compressor.export.onnx`, which validates outputs) when present, plain torch.onnx otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def export_onnx(model, example_input, path: Path | str, *, atol: float = 1e-3) -> Path:
    """Export `model` (eval mode, BN folded by the exporter) to ONNX at `path`; return the path."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    try:
        from compressor.export.onnx import export as project_export
    except ImportError:
        project_export = None
    if project_export is not None:
        result = project_export(model, example_input, path, atol=atol)
        return Path(getattr(result, "path", path))
    with torch.no_grad():
        torch.onnx.export(model, (example_input,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    return path
