"""Full-integer int8 TFLite export (compressor/export/tflite_int8.py): every weighted kernel of the file is
int8 and so are its input and output; it agrees with its float model within what quantization error allows
(the same check as the ONNX int8 export); its accuracy, scored from the file with LiteRT, is the PyTorch
model's within a point or two; calibration reads search images only; a model that cannot be quantized gets
an error naming the layer; the file runs through the device agent over ADB with LiteRT; and `--quantize int8
--tflite` puts it in the search's report beside the ONNX int8 model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from test_quantize import Float64Head, Overflow, _images

from compressor.data import load_dataset
from compressor.errors import ExportError
from compressor.export import quantize
from compressor.export import tflite as tflite_export
from compressor.training import evaluate, train_demo_cnn
from compressor.zoo import load_model

pytestmark = pytest.mark.tflite
pytest.importorskip("litert_torch")
pytest.importorskip("ai_edge_litert.interpreter")

from compressor.export import tflite_int8  # noqa: E402 - after the skips: it needs both


@pytest.fixture(scope="module")
def demo():
    loaded = load_model("demo-cnn", weights=str(train_demo_cnn()))
    e = loaded.entry
    bundle = load_dataset("digits", input_shape=e.input_shape, mean=e.mean, std=e.std)
    return loaded.model.eval(), torch.zeros(1, *e.input_shape), bundle


@pytest.fixture(scope="module")
def exported(demo, tmp_path_factory):
    model, example, bundle = demo
    out = tmp_path_factory.mktemp("tfl-int8")
    return tflite_int8.export(model, example, out / "m.int8.tflite", calibration=bundle.search), out


def _hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(xi.numpy()).tobytes()).hexdigest() for xi in x}


def test_the_file_is_full_integer_and_agrees_with_the_float_model(demo, exported):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    model, example, bundle = demo
    result, out = exported
    assert result.path.is_file() and result.format == tflite_int8.FORMAT
    assert result.top1_agreement >= quantize.MIN_AGREEMENT
    assert 0 < result.p99_abs_diff <= quantize.MAX_RELATIVE_P99 * result.output_range
    interp = Interpreter(model_path=str(result.path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    assert interp.get_input_details()[0]["dtype"] == np.int8 and interp.get_output_details()[0]["dtype"] == np.int8
    weighted = [op for op in interp._get_ops_details() if op["op_name"] in tflite_int8.WEIGHTED_OPS]
    assert len(weighted) >= 3  # demo-cnn: two convolutions and a linear layer
    for op in weighted:
        assert interp._get_tensor_details(op["inputs"][1], 0)["dtype"] == np.int8, op
    assert tflite_int8.float_layers(result.path) == []
    float_size = tflite_export.export(model, example, out / "m.tflite").size_bytes
    assert result.size_bytes < 0.5 * float_size


def test_accuracy_from_the_file_is_the_float_model_s_within_two_points(demo, exported):
    model, _, bundle = demo
    result, _ = exported
    acc = quantize.evaluate_file(result.path, bundle.report)
    assert abs(acc - evaluate(model, bundle.report)) <= 0.02, acc


def test_calibration_reads_the_search_split_and_never_the_report_split(demo, tmp_path, monkeypatch):
    model, example, bundle = demo
    fed: list[torch.Tensor] = []
    original = tflite_int8._convert

    def spy(model, example, images, out, *, name):
        fed.append(images.clone())
        return original(model, example, images, out, name=name)

    monkeypatch.setattr(tflite_int8, "_convert", spy)
    result = tflite_int8.export(model, example, tmp_path / "m.int8.tflite", calibration=bundle.search)
    seen = _hashes(fed[0])
    assert len(fed[0]) == result.calibration_images > 0
    assert seen <= _hashes(bundle.search.x) and not seen & _hashes(bundle.report.x)
    assert set(result.calibration_indices) <= set(bundle.search.indices.tolist())
    assert not set(result.calibration_indices) & set(bundle.report.indices.tolist())


def test_a_disagreeing_int8_file_raises_and_writes_nothing(demo, tmp_path, monkeypatch):
    model, example, bundle = demo
    real = tflite_int8.runner

    def negated(path):
        run = real(path)
        return lambda x: -run(x)

    monkeypatch.setattr(tflite_int8, "runner", negated)
    target = tmp_path / "bad.int8.tflite"
    with pytest.raises(ExportError, match="disagrees with the float model: top-1 agreement"):
        tflite_int8.export(model, example, target, calibration=bundle.search)
    assert list(tmp_path.iterdir()) == []


def test_a_layer_that_is_not_float32_is_named(tmp_path):
    torch.manual_seed(0)
    target = tmp_path / "m.int8.tflite"
    with pytest.raises(ExportError, match=r"needs float32 layers: module head\.1 \(Linear\) has float64 weights"):
        tflite_int8.export(Float64Head().eval(), torch.zeros(1, 3, 8, 8), target, calibration=_images())
    assert not target.exists()


def test_an_operation_without_a_finite_range_is_named(tmp_path):
    torch.manual_seed(0)
    target = tmp_path / "m.int8.tflite"
    with pytest.raises(ExportError, match=r"exp\.default node 'exp' outputs inf or NaN on calibration image \d+"):
        tflite_int8.export(Overflow().eval(), torch.zeros(1, 3, 8, 8), target, calibration=_images(30.0))
    assert not target.exists()


def test_the_int8_file_runs_through_the_device_agent_over_adb_with_litert(exported, tmp_path, monkeypatch):
    from device_agent.phone_sim.server import PhoneSimulator
    from profiler.devices import open_device
    from profiler.devices.keys import ensure_adb_key
    from profiler.protocol import MeasureConfig

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    result, _ = exported
    key = ensure_adb_key(tmp_path / "config" / "adbkey")
    sim = PhoneSimulator(port=0, root=tmp_path / "phone", serial="SIMT", auth_keys=str(key) + ".pub").start()
    try:
        device = open_device(f"adb:127.0.0.1:{sim.port}", key_path=key)
        m = device.measure(result.path, MeasureConfig(threads=1, warmup=2, runs=10), runtime="litert")
        assert m.runtime == "litert" and 0 < m.min_ms <= m.median_ms <= m.max_ms
        assert m.raw["inputs"][0]["dtype"] == "int8"
        pushed = list((tmp_path / "phone").rglob("*.tflite"))
        assert any(p.read_bytes() == result.path.read_bytes() for p in pushed)
        device.close()
    finally:
        sim.stop()


def test_compress_with_quantize_and_tflite_reports_both_int8_files(tmp_path):
    from compressor.config import SearchConfig
    from compressor.search import run_search

    config = SearchConfig(model="demo-cnn", data="digits", target="flops=0.5", strategy="random", episodes=3,
                          quantize="int8", tflite=True)
    report = run_search(config, tmp_path)
    t = report["quantized_tflite"]
    assert (tmp_path / "model.int8.tflite").is_file() and (tmp_path / "model.int8.onnx").is_file()
    assert t["file"] == "model.int8.tflite" and t["format"] == tflite_int8.FORMAT
    assert t["top1_agreement"] >= quantize.MIN_AGREEMENT and t["macs"] == report["result"]["macs"]
    assert abs(t["accuracy"] - report["result"]["accuracy"]) <= 0.03
    assert report["exports"]["tflite-int8"]["size_bytes"] == (tmp_path / "model.int8.tflite").stat().st_size
    text = (tmp_path / "report.md").read_text()
    assert "| random int8 TFLite |" in text and "Int8 TFLite (`model.int8.tflite`" in text
