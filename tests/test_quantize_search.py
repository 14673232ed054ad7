"""Int8 inside the search (issue 24, item 2): a device's int8 lookup table is a table of its own, its
kernels and calibration models timed as post-training int8 ONNX quantized exactly as shipped models
are; a search with `--quantize int8` and a latency target predicts and measures its candidates as
int8, so the target is the int8 model's latency."""

from __future__ import annotations

import json

import onnx
import pytest
import torch
from tiny_models import TinyResNet

from compressor.errors import ConfigError
from compressor.export import quantize
from compressor.latency import KernelSpec
from profiler.devices import LocalDevice
from profiler.lut import build_lut
from profiler.lut.build import export_kernel
from profiler.lut.keys import LutError
from profiler.lut.table import LatencyTable, load_or_new, lut_path
from profiler.protocol import MeasureConfig, check_precision

FAST = MeasureConfig(threads=1, warmup=2, runs=5)


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_a_timing_file_has_every_conv_in_int8_even_when_the_exporter_shares_its_biases(tmp_path):
    """Freshly folded BatchNorms give equal (zero) biases, which the exporter shares through Identity
    nodes; ONNX Runtime's quantizer leaves such a Conv in float, dequantizing its weights at every run.
    Our quantization inlines them, so every Conv runs as int8."""
    from profiler.export import export_onnx

    model = TinyResNet().eval()  # untrained: every BatchNorm folds to the same zero bias
    x = torch.zeros(1, 3, 16, 16)
    float_path = export_onnx(model, x, tmp_path / "m.onnx", validate=False)
    assert "Identity" in _ops(float_path)  # the case this test is about
    out = quantize.quantize_for_timing(float_path, tmp_path / "m.int8.onnx")
    q = onnx.load(str(out))
    assert quantize._float_layers(q) == []
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)


def test_an_int8_table_is_its_own_file_of_int8_kernels(tmp_path):
    device = LocalDevice()
    kernels = [KernelSpec("conv", 8, 16, k=3, h=8, w=8, relu=True), KernelSpec("linear", 16, 4)]
    int8 = build_lut(device, kernels, config=FAST, lut_dir=tmp_path, max_points=2, round_to=8, precision="int8")
    assert int8.precision == "int8" and len(int8) > 0
    assert int8.path == lut_path(tmp_path, device.id, "onnxruntime", 1, "int8") and "__int8__" in int8.path.name
    assert not lut_path(tmp_path, device.id, "onnxruntime", 1).exists()  # the float table is untouched
    again = LatencyTable.load(int8.path)
    assert again.precision == "int8" and again.entries == int8.entries
    # The float table of the same device is another table, empty until built.
    assert len(load_or_new(tmp_path, device.id, "onnxruntime", 1)) == 0
    # What the table timed: a kernel as int8 (quantized and dequantized at its ends), not its float form.
    assert "QuantizeLinear" in _ops(export_kernel(kernels[0], tmp_path, "int8"))
    assert "QuantizeLinear" not in _ops(export_kernel(kernels[0], tmp_path))


def test_a_table_of_the_wrong_precision_is_refused(tmp_path):
    path = lut_path(tmp_path, "dev", "onnxruntime", 1, "int8")
    LatencyTable("dev", "onnxruntime", 1, path=path).save()  # a float32 table under the int8 name
    with pytest.raises(LutError, match="holds float32 kernels, not int8.*--precision int8"):
        load_or_new(tmp_path, "dev", "onnxruntime", 1, precision="int8")


def test_int8_tables_are_onnx_runtime_tables():
    assert check_precision("int8") == "int8"
    with pytest.raises(ConfigError, match="onnxruntime"):
        check_precision("int8", "litert")
    with pytest.raises(ConfigError, match="float32, int8"):
        check_precision("int4")


def test_the_search_times_int8_only_when_it_ships_int8_under_a_latency_budget():
    from compressor.config import SearchConfig
    from server.latency import latency_precision

    def config(**kw) -> SearchConfig:
        return SearchConfig(model="demo-cnn", data="digits", **kw)

    assert latency_precision(config(target="latency-ms=0.02", quantize="int8")) == "int8"
    assert latency_precision(config(target="latency-ms=0.02")) == "float32"
    assert latency_precision(config(target="flops=0.5", quantize="int8")) == "float32"  # it only times files


def test_a_latency_search_with_quantize_int8_predicts_and_measures_int8(tmp_path, monkeypatch):
    from compressor.config import SearchConfig
    from compressor.search import run_search
    from server.latency import make_oracle

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    config = SearchConfig(model="demo-cnn", data="digits", target="latency-ms=1.0", device="local",
                          strategy="random", episodes=4, quantize="int8")
    oracle = make_oracle(config)
    assert oracle is not None and oracle.precision == "int8" and oracle.name.endswith(":int8")
    measured: list[set[str]] = []
    timed = oracle.pool.measure

    def spy(path, *a, **k):
        measured.append(_ops(path))
        return timed(path, *a, **k)

    monkeypatch.setattr(oracle.pool, "measure", spy)
    report = run_search(config, tmp_path / "out", oracle=oracle)
    assert report["latency_precision"] == "int8"
    lut = sorted(p.name for p in (tmp_path / "cache" / "lut").glob("*.json") if p.name != "identities.json")
    assert len(lut) == 1 and "__int8__" in lut[0]  # no float table was built for this search
    # Every candidate the search timed ran as int8; the float model.onnx was timed once, for the report.
    assert report["latency"]["measured_ms"] > 0 and report["latency"]["target_met"]
    int8_runs = [ops for ops in measured if "QuantizeLinear" in ops]
    assert len(int8_runs) >= len(report["latency"]["candidates"]) + 1  # the candidates and the baseline
    q = report["quantized"]
    assert q["float_latency_measured_ms"] > 0 and q["speedup"] == pytest.approx(
        q["float_latency_measured_ms"] / q["latency_measured_ms"])
    assert sum("QuantizeLinear" not in ops for ops in measured) == 1
    text = (tmp_path / "out" / "report.md").read_text()
    assert "latency: int8 throughout" in text and "predicted ms (int8)" in text
    assert json.loads((tmp_path / "out" / "report.json").read_text())["latency_precision"] == "int8"
