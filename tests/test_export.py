"""Exporters: the ONNX and TFLite files agree with PyTorch (checked by running them), keep the NCHW
signature, are written atomically, and a disagreement raises ExportError with the difference."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.export import AVAILABLE, EXPORTERS, ExportResult, export_model
from compressor.export import onnx as onnx_export
from compressor.export import tflite as tflite_export
from compressor.zoo import load_model

needs_tflite = pytest.mark.skipif(
    not tflite_export.available(), reason="litert-torch is not installed: pip install 'amc-service[tflite]'"
)

# One module per exporter; the registry test below fails when an exporter has none.
BACKENDS = {"onnx": onnx_export, "tflite": tflite_export}
MARKS = {"onnx": [], "tflite": [pytest.mark.tflite, needs_tflite]}


def test_every_exporter_has_a_test_entry():
    assert set(EXPORTERS) == set(BACKENDS) == set(MARKS) == set(AVAILABLE)
    for fmt, module in BACKENDS.items():
        assert EXPORTERS[fmt] is module.export


@pytest.fixture(scope="module")
def demo() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = load_model("demo-cnn").model
    with torch.no_grad():  # non-trivial BN statistics, so folding them is exercised
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval(), torch.randn(1, 1, 8, 8)


def _formats():
    return [pytest.param(fmt, marks=MARKS[fmt]) for fmt in sorted(EXPORTERS)]


def _run(fmt: str, path, x: torch.Tensor) -> np.ndarray:
    return BACKENDS[fmt].runner(path)(x.numpy())


@pytest.mark.parametrize("fmt", _formats())
def test_export_matches_pytorch(fmt, demo, tmp_path):
    model, x = demo
    path = tmp_path / "out" / f"demo.{fmt}"
    result = export_model(fmt, model, x, path, atol=1e-4)
    assert isinstance(result, ExportResult)
    assert result.path == path and result.format == fmt
    assert path.is_file() and result.size_bytes == path.stat().st_size > 10_000  # ~61k float weights
    assert 0.0 <= result.max_abs_diff < 1e-4 and result.seconds > 0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left
    # The file takes the PyTorch NCHW input and gives the same scores on a new input.
    x2 = torch.randn(1, 1, 8, 8)
    with torch.inference_mode():
        want = model(x2).numpy()
    got = _run(fmt, path, x2)
    assert got.shape == (1, 10)
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("fmt", _formats())
def test_model_changed_after_export_is_caught(fmt, demo, tmp_path):
    model, x = demo
    path = tmp_path / f"demo.{fmt}"
    EXPORTERS[fmt](model, x, path)
    changed = load_model("demo-cnn").model
    changed.load_state_dict(model.state_dict())
    with torch.no_grad():
        changed.classifier.bias.add_(0.01)  # a small, real change the file does not have
    with pytest.raises(ExportError, match=r"max abs difference 0\.01"):
        BACKENDS[fmt].validate(changed, path, x, atol=1e-4)
    assert BACKENDS[fmt].validate(changed, path, x, atol=0.02) == pytest.approx(0.01, abs=1e-4)


class BranchyNet(nn.Module):
    """Python control flow on the data: tracing bakes in the branch taken by the example input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).mean((2, 3))
        return y * 2 if x.mean() > 10 else -y


def test_onnx_export_refuses_a_file_that_disagrees(tmp_path):
    path = tmp_path / "branchy.onnx"
    example = torch.full((1, 1, 8, 8), 20.0)  # large: the traced graph keeps the `* 2` branch
    with pytest.raises(ExportError, match="max abs difference"):
        onnx_export.export(BranchyNet().eval(), example, path)
    assert list(tmp_path.iterdir()) == []  # nothing written, temp file removed


def test_bad_arguments(demo, tmp_path):
    model, x = demo
    with pytest.raises(ExportError, match="unknown export format 'coreml'; use one of onnx, tflite"):
        export_model("coreml", model, x, tmp_path / "m.mlmodel")
    with pytest.raises(ExportError, match="N x C x H x W"):
        onnx_export.export(model, torch.randn(8, 8), tmp_path / "m.onnx")


def test_tflite_without_litert_torch_says_what_to_install(demo, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # makes `import litert_torch` fail
    model, x = demo
    with pytest.raises(ExportError, match=r"pip install 'amc-service\[tflite\]'"):
        tflite_export.export(model, x, tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tflite
@needs_tflite
def test_tflite_keeps_nchw_signature(demo, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    model, x = demo
    path = tmp_path / "demo.tflite"
    tflite_export.export(model, x, path)
    interp = Interpreter(model_path=str(path))
    assert list(interp.get_input_details()[0]["shape"]) == [1, 1, 8, 8]
    assert list(interp.get_output_details()[0]["shape"]) == [1, 10]


def test_onnx_names_and_opset(demo, tmp_path):
    import onnx

    model, x = demo
    path = tmp_path / "demo.onnx"
    onnx_export.export(model, x, path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 8, 8]
    assert proto.opset_import[0].version == 17
    # eval-mode BatchNorm is folded into the convolutions
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}


def test_tolerance_scales_with_large_outputs(tmp_path):
    # An untrained ResNet-56 gives logits in the thousands; float32 rounding differs by more than
    # 1e-4 in absolute terms, but not relative to the outputs.
    torch.manual_seed(0)
    model = load_model("resnet56").model
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        assert model(x).abs().max() > 100
    result = onnx_export.export(model, x, tmp_path / "r56.onnx", atol=1e-4)
    assert result.max_abs_diff < 1e-4 * model(x).abs().max().item()
