"""Post-training int8 export: the file agrees with its float model within what quantization error
allows, calibration reads the search split and never the report split, a model that cannot be
quantized gets an error naming the layer, the int8 model runs through the device agent over ADB, and
`--quantize int8` puts the int8 model beside the float one in the report."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compressor.data import Split, load_dataset
from compressor.errors import ExportError
from compressor.export import onnx as onnx_export
from compressor.export import quantize
from compressor.training import evaluate, train_demo_cnn
from compressor.zoo import load_model


@pytest.fixture(scope="module")
def demo():
    """demo-cnn trained on digits (the search's own cached weights) and the digits splits."""
    loaded = load_model("demo-cnn", weights=str(train_demo_cnn()))
    e = loaded.entry
    bundle = load_dataset("digits", input_shape=e.input_shape, mean=e.mean, std=e.std)
    return loaded.model.eval(), torch.zeros(1, *e.input_shape), bundle


def _hashes(x: torch.Tensor) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(xi.numpy()).tobytes()).hexdigest() for xi in x}


def test_int8_export_validates_against_the_float_model(demo, tmp_path):
    model, example, bundle = demo
    result = quantize.export(model, example, tmp_path / "m.int8.onnx", calibration=bundle.search)
    assert result.path.is_file() and result.format == quantize.FORMAT
    assert result.top1_agreement >= quantize.MIN_AGREEMENT
    assert 0 < result.p99_abs_diff <= quantize.MAX_RELATIVE_P99 * result.output_range
    assert result.p99_abs_diff <= result.max_abs_diff
    assert result.calibration_images == min(quantize.CALIBRATION_IMAGES, len(bundle.search))
    # Every weighted layer is int8 in the file: its weights come through DequantizeLinear from int8.
    graph = onnx.load(str(result.path)).graph
    inits = {i.name: i for i in graph.initializer}
    dq = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    weighted = [n for n in graph.node if n.op_type in quantize.WEIGHTED_OPS]
    assert weighted
    for node in weighted:
        w = inits[dq[node.input[1]].input[0]]
        assert w.data_type == onnx.TensorProto.INT8, node.name
    float_size = onnx_export.export(model, example, tmp_path / "m.onnx").size_bytes
    assert result.size_bytes < 0.5 * float_size  # 4x smaller weights, less the scales and graph


def test_accuracy_from_the_file_matches_pytorch_for_the_float_file(demo, tmp_path):
    model, example, bundle = demo
    path = onnx_export.export(model, example, tmp_path / "m.onnx").path
    assert quantize.evaluate_file(path, bundle.report) == pytest.approx(evaluate(model, bundle.report), abs=1e-9)


def test_calibration_reads_the_search_split_and_never_the_report_split(demo, tmp_path, monkeypatch):
    model, example, bundle = demo
    fed: list[np.ndarray] = []
    original = quantize.SplitReader.get_next

    def spy(self):
        item = original(self)
        if item is not None:
            fed.extend(item.values())
        return item

    monkeypatch.setattr(quantize.SplitReader, "get_next", spy)
    out = quantize.quantize_and_score(model, example, tmp_path / "m.int8.onnx",
                                      float_path=onnx_export.export(model, example, tmp_path / "m.onnx").path,
                                      calibration=bundle.search, report=bundle.report)
    assert len(fed) == out["calibration_images"] > 0
    seen = _hashes(torch.from_numpy(np.concatenate(fed)))
    assert seen <= _hashes(bundle.search.x)
    assert not seen & _hashes(bundle.report.x)
    result = quantize.export(model, example, tmp_path / "again.int8.onnx", calibration=bundle.search)
    assert set(result.calibration_indices) <= set(bundle.search.indices.tolist())
    assert not set(result.calibration_indices) & set(bundle.report.indices.tolist())
    assert 0 <= out["accuracy"] <= 1 and out["latency_measured_ms"] is None  # nothing times files here


def test_check_images_are_search_images_apart_from_calibration():
    cal, chk = quantize.pick_rows(1000, calibration=256, check=256)
    assert len(cal) == len(chk) == 256 and not set(cal) & set(chk)
    assert set(cal) | set(chk) <= set(range(1000))
    cal, chk = quantize.pick_rows(100, calibration=256, check=256)
    assert len(cal) == 100 and chk == cal  # too few images for both: the check reuses them
    with pytest.raises(ExportError, match="empty"):
        quantize.pick_rows(0, calibration=256, check=256)


def test_a_disagreeing_int8_model_raises_and_writes_nothing(demo, tmp_path):
    model, example, bundle = demo
    float_path = onnx_export.export(model, example, tmp_path / "m.onnx").path
    sess_ref = onnx_export.runner(float_path)

    def wrong(x: np.ndarray) -> np.ndarray:  # a reference the int8 file cannot agree with
        return -np.concatenate([sess_ref(xi[None]) for xi in x])

    target = tmp_path / "bad.int8.onnx"
    with pytest.raises(ExportError, match="disagrees with the float model: top-1 agreement"):
        quantize.quantize_file(float_path, target, calibration=bundle.search, reference=wrong)
    assert not target.exists() and list(tmp_path.iterdir()) == [float_path]


class Float64Head(nn.Module):
    """A classifier head computed in float64: ONNX Runtime quantizes float32 layers only."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(8, 4).double())

    def forward(self, x):
        return self.head(self.conv(x).mean((2, 3)).double()).float()


class Overflow(nn.Module):
    """Finite on the validation inputs of the float export, infinite on large calibration images."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.exp(20 * self.conv(x)).mean((2, 3)))


def _images(scale: float = 1.0) -> Split:
    gen = torch.Generator().manual_seed(0)
    return Split(scale * torch.randn(48, 3, 8, 8, generator=gen), torch.zeros(48, dtype=torch.long), "random", None)


def test_a_layer_left_in_floating_point_is_named(tmp_path):
    torch.manual_seed(0)
    target = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportError, match=r"left 1 layer\(s\) in floating point: Gemm node .*PyTorch module head\.1"):
        quantize.export(Float64Head().eval(), torch.zeros(1, 3, 8, 8), target, calibration=_images())
    assert not target.exists()


def test_a_layer_without_a_finite_range_is_named(tmp_path):
    torch.manual_seed(0)
    target = tmp_path / "m.int8.onnx"
    with pytest.raises(ExportError, match=r"Exp node '/Exp' outputs inf or NaN on calibration image \d+"):
        quantize.export(Overflow().eval(), torch.zeros(1, 3, 8, 8), target, calibration=_images(30.0))
    assert not target.exists()


def test_layer_names_are_pytorch_module_paths():
    assert quantize.layer_name("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert quantize.layer_name("/features/features.3/Conv") == "features.3"
    assert quantize.layer_name("/fc/Gemm") == "fc"
    assert quantize.layer_name("/Exp") == "/Exp"


# ------------------------------------------------------------------------------ through the device agent

def test_an_int8_model_runs_through_the_device_agent_over_adb(demo, tmp_path, monkeypatch):
    from device_agent.phone_sim.server import PhoneSimulator
    from profiler.devices import AdbTcpDevice, open_device
    from profiler.devices.keys import ensure_adb_key
    from profiler.protocol import MeasureConfig

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    model, example, bundle = demo
    path = quantize.export(model, example, tmp_path / "demo.int8.onnx", calibration=bundle.search).path
    key = ensure_adb_key(tmp_path / "config" / "adbkey")
    sim = PhoneSimulator(port=0, root=tmp_path / "phone", serial="SIMQ", auth_keys=str(key) + ".pub").start()
    try:
        device = open_device(f"adb:127.0.0.1:{sim.port}", key_path=key)
        assert isinstance(device, AdbTcpDevice)
        m = device.measure(path, MeasureConfig(threads=1, warmup=2, runs=10))
        assert 0 < m.min_ms <= m.median_ms <= m.max_ms
        assert m.device_info["serial"] == "SIMQ"
        pushed = list((tmp_path / "phone").rglob("*.onnx"))
        assert any(p.read_bytes() == path.read_bytes() for p in pushed)  # the int8 file itself ran on the phone
        device.close()
    finally:
        sim.stop()


# ------------------------------------------------------------------------------------------- the search

def test_compress_with_quantize_reports_int8_beside_float(tmp_path, monkeypatch):
    from compressor.config import SearchConfig
    from compressor.search import run_search

    fed: list[np.ndarray] = []
    original = quantize.SplitReader.get_next

    def spy(self):
        item = original(self)
        if item is not None:
            fed.extend(item.values())
        return item

    monkeypatch.setattr(quantize.SplitReader, "get_next", spy)
    config = SearchConfig(model="demo-cnn", data="digits", target="flops=0.5", strategy="random", episodes=3,
                          quantize="int8")
    report = run_search(config, tmp_path)
    q = report["quantized"]
    assert (tmp_path / "model.int8.onnx").is_file() and (tmp_path / "model.onnx").is_file()
    assert q["file"] == "model.int8.onnx" and q["top1_agreement"] >= quantize.MIN_AGREEMENT
    assert q["macs"] == report["result"]["macs"]
    assert abs(q["accuracy"] - report["result"]["accuracy"]) <= 0.03
    assert report["exports"]["onnx-int8"]["size_bytes"] == (tmp_path / "model.int8.onnx").stat().st_size
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["quantized"]["accuracy"] == q["accuracy"]
    assert "| random int8 |" in (tmp_path / "report.md").read_text()
    # What calibration read came from the search split only.
    loaded = load_model("demo-cnn")
    e = loaded.entry
    bundle = load_dataset("digits", input_shape=e.input_shape, mean=e.mean, std=e.std)
    seen = _hashes(torch.from_numpy(np.concatenate(fed)))
    assert seen and seen <= _hashes(bundle.search.x) and not seen & _hashes(bundle.report.x)


def test_an_int8_model_that_fails_its_check_leaves_the_float_outputs_and_says_why(tmp_path, monkeypatch):
    """The check refusing the int8 file (as it does a pruned model never recovered, whose classes are near-ties)
    costs the search its int8 file only: the float model and report are written, and the report says why."""
    from compressor.config import SearchConfig
    from compressor.search import run_search

    def refused(*_a, **_k):
        raise ExportError("the int8 model model.int8.onnx disagrees with the float model: top-1 agreement 92.2%")

    monkeypatch.setattr(quantize, "quantize_and_score", refused)
    config = SearchConfig(model="demo-cnn", data="digits", target="flops=0.5", strategy="random", episodes=2,
                          quantize="int8")
    report = run_search(config, tmp_path)
    assert report["quantized"]["file"] is None and "top-1 agreement 92.2%" in report["quantized"]["error"]
    assert (tmp_path / "model.onnx").is_file() and not (tmp_path / "model.int8.onnx").exists()
    text = (tmp_path / "report.md").read_text()
    assert "no `model.int8.onnx` was written: the int8 model" in text and "| random int8 |" not in text


def test_quantize_is_a_search_option():
    from compressor.config import SearchConfig
    from compressor.errors import ConfigError
    from server.options import search_fields

    field = {f.name: f for f in search_fields()}["quantize"]
    assert field.flag == "--quantize" and field.choices == ("none", "int8") and field.default == "none"
    with pytest.raises(ConfigError, match="quantize"):
        SearchConfig(model="demo-cnn", data="digits", quantize="int4")  # type: ignore[arg-type]


def test_amc_compress_quantize_times_the_int8_file_on_an_emulated_phone(tmp_path):
    """The one command of issue 24 over ADB: the int8 file is pushed to the phone and timed by the agent there."""
    from device_agent.phone_sim import PhoneSimulator

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(repo), AMC_CONFIG_DIR=str(tmp_path / "config"),
               AMC_CACHE_DIR=str(tmp_path / "cache"))
    sim = PhoneSimulator(port=0, root=tmp_path / "phone", serial="amc-int8-phone").start()
    try:
        run = subprocess.run([sys.executable, "-m", "server.cli", "compress", "--model", "demo-cnn", "--data", "digits",
                              "--target", "flops=0.5", "--strategy", "random", "--episodes", "3", "--quantize", "int8",
                              "--device", f"adb:127.0.0.1:{sim.port}", "--out", str(tmp_path / "out"), "--json"],
                             cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    finally:
        sim.stop()
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    q = report["quantized"]
    assert q["latency_measured_ms"] > 0 and report["result"]["latency_measured_ms"] > 0
    assert q["speedup"] == pytest.approx(report["result"]["latency_measured_ms"] / q["latency_measured_ms"])
    int8 = (tmp_path / "out" / "model.int8.onnx").read_bytes()
    assert any(p.read_bytes() == int8 for p in (tmp_path / "phone").rglob("*.onnx"))  # what the phone ran


def test_a_job_with_quantize_serves_the_int8_model(tmp_path):
    """POST /jobs with `quantize: int8` on a real server: the job's report has the int8 row and the
    int8 file is an artifact."""
    from test_server_harness import SMALL_JOB, ServerProcess, wait_for

    srv = ServerProcess(tmp_path / "data", env={"AMC_CACHE_DIR": str(tmp_path / "cache")}).start()
    try:
        with srv.client() as c:
            r = c.post("/jobs", json={**SMALL_JOB, "strategy": "random", "episodes": 3, "quantize": "int8"})
            assert r.status_code == 201, r.text
            job = wait_for(c, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
            assert job["state"] == "succeeded", job
            report = c.get(f"/jobs/{job['id']}/artifacts/report.json").json()
            model = c.get(f"/jobs/{job['id']}/artifacts/model.int8.onnx")
            assert c.post("/jobs", json={**SMALL_JOB, "quantize": "int4"}).status_code == 422
    finally:
        srv.stop()
    assert report["config"]["quantize"] == "int8"
    q = report["quantized"]
    assert model.status_code == 200 and len(model.content) == q["size_bytes"]
    assert q["latency_measured_ms"] > 0 and q["accuracy"] > 0.9
    onnx.checker.check_model(onnx.load_from_string(model.content))


def test_layers_kept_in_float_stay_float32_and_the_rest_is_int8(demo, tmp_path):
    """Mixed precision: the named PyTorch modules (the first conv, the classifier) are left in float32,
    every other weighted layer is int8, and the file still passes its check."""
    model, example, bundle = demo
    result = quantize.export(model, example, tmp_path / "m.mixed.onnx", calibration=bundle.search,
                             keep_float=("features.0", "classifier"))
    left = {quantize.layer_name(n) for _d, n in quantize._float_layers_named(onnx.load(str(result.path)))}
    assert left == {"features.0", "classifier"}
    weighted = [n for n in onnx.load(str(result.path)).graph.node if n.op_type in quantize.WEIGHTED_OPS]
    assert len(weighted) > len(left)
    assert result.top1_agreement >= quantize.MIN_AGREEMENT


def test_keeping_an_unknown_layer_in_float_names_the_layers_there_are(demo, tmp_path):
    model, example, bundle = demo
    with pytest.raises(ExportError, match=r"cannot keep conv9 in float: no such layer.*features\.0"):
        quantize.export(model, example, tmp_path / "m.onnx", calibration=bundle.search, keep_float=("conv9",))
    assert not (tmp_path / "m.onnx").exists()
