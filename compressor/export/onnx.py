"""ONNX export (TorchScript exporter, opset 17) validated with ONNX Runtime against PyTorch."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.export.common import ExportResult, Runner, export_file, validate_file

log = logging.getLogger(__name__)

FORMAT = "onnx"
OPSET = 17


def convert(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """Write `model` as ONNX to `path` (input "input", output "output", fixed shapes)."""
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter(
                "ignore"
            )  # tracer warnings about Python control flow are checked numerically
            torch.onnx.export(
                model,
                (example_input,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["output"],
                do_constant_folding=True,
            )
    except Exception as e:
        raise ExportError(f"ONNX conversion failed: {type(e).__name__}: {e}") from e


def runner(path: Path) -> Runner:
    """Run the ONNX file with ONNX Runtime on the CPU."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ExportError(f"ONNX Runtime cannot load {path}: {e}") from e
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x.astype(np.float32)})[0]

    return run


def validate(model: nn.Module, path: str | Path, example_input: torch.Tensor, *, atol: float = 1e-4) -> float:
    """Max |ONNX Runtime - PyTorch| on the example and random inputs; ExportError above tolerance
    (`atol`, scaled by the output magnitude when that exceeds 1)."""
    return validate_file(model, path, example_input, runner=runner, fmt=FORMAT, atol=atol)


def export(model: nn.Module, example_input: torch.Tensor, path: str | Path, *, atol: float = 1e-4) -> ExportResult:
    """Export, check it against PyTorch, then move it into place (nothing written on failure)."""
    return export_file(model, example_input, path, convert=convert, runner=runner, fmt=FORMAT, atol=atol)
