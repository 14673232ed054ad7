"""TFLite export with litert-torch, validated with the LiteRT interpreter against PyTorch.

The converter keeps PyTorch's NCHW input signature (it inserts the NHWC transposes inside the
graph), so the file takes the same N x C x H x W float32 input as the PyTorch model.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.export.common import ExportResult, Runner, export_file, validate_file

log = logging.getLogger(__name__)

FORMAT = "tflite"
INSTALL_HINT = "pip install 'amc-service[tflite]' (litert-torch, ~0.9 GB)"


def available() -> bool:
    """Whether litert-torch (the converter) can be imported."""
    return importlib.util.find_spec("litert_torch") is not None


def convert(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """Write `model` as a float32 TFLite flatbuffer to `path`."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info lines on import
    try:
        import litert_torch
    except Exception as e:
        raise ExportError(
            f"TFLite export needs litert-torch, which is not importable ({e}): {INSTALL_HINT}"
        ) from e
    if "LITERT_TORCH_SHOW_PROGRESS" not in os.environ:
        litert_torch.config.show_progress = False  # it prints to the terminal; we log instead
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch pytree deprecations inside the converter
            edge_model = litert_torch.convert(model, (example_input.detach().to(torch.float32),))
            edge_model.export(str(path))
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"TFLite conversion failed: {type(e).__name__}: {e}") from e


def runner(path: Path) -> Runner:
    """Run the TFLite file with the LiteRT interpreter (one thread)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as e:
        raise ExportError(f"validating TFLite needs ai-edge-litert: pip install ai-edge-litert ({e})") from e
    try:
        interp = Interpreter(model_path=str(path), num_threads=1)
        interp.allocate_tensors()
    except Exception as e:
        raise ExportError(f"LiteRT cannot load {path}: {e}") from e
    inp = interp.get_input_details()
    out = interp.get_output_details()
    if len(inp) != 1 or len(out) != 1:
        raise ExportError(f"{path} has {len(inp)} inputs and {len(out)} outputs; expected one of each")

    def run(x: np.ndarray) -> np.ndarray:
        if tuple(inp[0]["shape"]) != x.shape:
            raise ExportError(f"{path} expects input shape {tuple(inp[0]['shape'])}, got {x.shape} (NCHW)")
        interp.set_tensor(inp[0]["index"], x.astype(np.float32))
        interp.invoke()
        return interp.get_tensor(out[0]["index"]).copy()

    return run


def validate(model: nn.Module, path: str | Path, example_input: torch.Tensor, *, atol: float = 1e-4) -> float:
    """Max |LiteRT - PyTorch| on the example and random inputs; ExportError above tolerance
    (`atol`, scaled by the output magnitude when that exceeds 1)."""
    return validate_file(model, path, example_input, runner=runner, fmt=FORMAT, atol=atol)


def export(model: nn.Module, example_input: torch.Tensor, path: str | Path, *, atol: float = 1e-4) -> ExportResult:
    """Export, check it against PyTorch, then move it into place (nothing written on failure)."""
    return export_file(model, example_input, path, convert=convert, runner=runner, fmt=FORMAT, atol=atol)
