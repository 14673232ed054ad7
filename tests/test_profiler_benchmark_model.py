"""The stock TFLite benchmark_model: parser on recorded outputs of current and old releases, and the
driver running a stand-in binary on the local device."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from profiler.benchmark_model import BenchmarkOutputError, benchmark_model_command, parse_benchmark_model
from profiler.devices import LocalDevice
from profiler.errors import MeasurementError
from profiler.protocol import MeasureConfig

# TF 2.x (2021+), `adb shell /data/local/tmp/benchmark_model --graph=... --num_threads=1`.
CURRENT = """\
STARTING!
Log parameter values verbosely: [0]
Num threads: [1]
Graph: [/data/local/tmp/mobilenet_v1_1.0_224.tflite]
#threads used for CPU inference: [1]
Loaded model /data/local/tmp/mobilenet_v1_1.0_224.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
The input model file size (MB): 16.9008
Initialized session in 5.685ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=35 first=18535 curr=14238 min=14102 max=18535 avg=14462.3 std=720

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=71 first=14200 curr=14100 min=13990 max=14811 avg=14154.3 std=140

Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14154.3
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
Memory footprint delta from the start of the tool (MB): init=4.33203 overall=12.5586
"""

# Same release family with `INFO: ` prefixes and percentiles printed (newer builds).
CURRENT_PERCENTILES = """\
INFO: STARTING!
INFO: Num threads: [4]
INFO: Graph: [model.tflite]
INFO: Loaded model model.tflite
INFO: The input model file size (MB): 4.2
INFO: Initialized session in 2.1ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=120 first=4410 curr=3961 min=3902 max=4410 avg=3990.5 std=61 p5=3921 median=3978 p95=4100

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=250 first=3950 curr=3940 min=3890 max=5210 avg=3962.1 std=95 p5=3905 median=3948 p95=4061

INFO: Inference timings in us: Init: 2100, First inference: 4410, Warmup (avg): 3990.5, Inference (avg): 3962.1
"""

# TF 1.13-1.15: one count= line and "Average inference timings ... no stats".
LEGACY = """\
STARTING!
Min num runs: [50]
Min runs duration (seconds): [1]
Inter-run delay (seconds): [-1]
Num threads: [1]
Benchmark name: []
Output prefix: []
Min warmup runs: [1]
Graph: [/data/local/tmp/mobilenet_quant_v1_224.tflite]
Input layers: []
Use nnapi : [0]
Loaded model /data/local/tmp/mobilenet_quant_v1_224.tflite
resolved reporter
Initialized session in 41.024ms
Running benchmark for at least 1 iterations and at least 0.5 seconds
count=5 first=110321 curr=101987 min=101987 max=110321 avg=104230 std=3089

Running benchmark for at least 50 iterations and at least 1 seconds
count=50 first=102112 curr=101620 min=100874 max=106903 avg=102055 std=1212

Average inference timings in us: Warmup: 104230, Init: 41024, no stats: 102055
"""

# The Android benchmark APK logs the summary through logcat.
LOGCAT = """\
11-24 09:32:13.120  4242  4242 I tflite  : Initialized session in 3.2ms.
11-24 09:32:14.001  4242  4242 I tflite  : count=50 first=9120 curr=8811 min=8702 max=9523 avg=8859.4 std=141
11-24 09:32:14.002  4242  4242 I tflite  : Average inference timings in us: Warmup: 9010.5, Init: 3200, Inference: 8859.4
"""

FAILED = """\
STARTING!
Graph: [/data/local/tmp/missing.tflite]
ERROR: Could not open '/data/local/tmp/missing.tflite'.
Failed to mmap model /data/local/tmp/missing.tflite
Benchmarking failed.
"""


def _check_order(r) -> None:
    assert r.min_ms <= r.median_ms <= r.p90_ms <= r.max_ms


def test_current_format() -> None:
    r = parse_benchmark_model(CURRENT)
    assert r.format == "current"
    assert r.inference_avg_ms == pytest.approx(14.1543)
    assert r.init_ms == pytest.approx(5.685)
    assert r.first_ms == pytest.approx(18.535)
    assert r.warmup_avg_ms == pytest.approx(14.4623)
    assert r.count == 71  # the timed runs, not the warm-up line
    assert r.min_ms == pytest.approx(13.990) and r.max_ms == pytest.approx(14.811)
    assert r.std_ms == pytest.approx(0.140)
    assert r.warmup is not None and r.warmup.count == 35
    assert r.estimated  # no percentiles printed: median/p90 come from avg and std
    _check_order(r)


def test_current_format_with_percentiles_and_info_prefix() -> None:
    r = parse_benchmark_model(CURRENT_PERCENTILES)
    assert r.format == "current"
    assert not r.estimated
    assert r.median_ms == pytest.approx(3.948)
    assert r.p90_ms <= 4.061 + 1e-9  # p90 never above the printed p95
    assert r.count == 250
    _check_order(r)


@pytest.mark.parametrize("text, avg, init, warm, count", [
    (LEGACY, 102.055, 41.024, 104.230, 50),
    (LOGCAT, 8.8594, 3.2, 9.0105, 50),
])
def test_legacy_formats(text: str, avg: float, init: float, warm: float, count: int) -> None:
    r = parse_benchmark_model(text)
    assert r.format == "legacy"
    assert r.inference_avg_ms == pytest.approx(avg)
    assert r.init_ms == pytest.approx(init)
    assert r.warmup_avg_ms == pytest.approx(warm)
    assert r.count == count
    _check_order(r)


def test_truncated_output_falls_back_to_last_stats_line() -> None:
    cut = CURRENT.split("Inference timings")[0]
    r = parse_benchmark_model(cut)
    assert r.format == "stats-only"
    assert r.inference_avg_ms == pytest.approx(14.1543)
    assert r.init_ms == pytest.approx(5.685)


def test_failed_run_quotes_the_error() -> None:
    with pytest.raises(BenchmarkOutputError, match="Could not open"):
        parse_benchmark_model(FAILED)
    with pytest.raises(BenchmarkOutputError):
        parse_benchmark_model("")


def test_command_follows_the_protocol() -> None:
    cmd = benchmark_model_command("/data/local/tmp/benchmark_model", "/data/local/tmp/amc/models/x.tflite",
                                  MeasureConfig(threads=2, warmup=5, runs=40, cpu_mask="0xf0"))
    assert cmd.startswith("taskset f0 /data/local/tmp/benchmark_model ")
    for flag in ("--graph=/data/local/tmp/amc/models/x.tflite", "--num_threads=2", "--warmup_runs=5",
                 "--num_runs=40", "--min_secs=0"):
        assert flag in cmd


def _standin_binary(tmp_path: Path, text: str) -> Path:
    """A shell script that prints a recorded benchmark_model output (the real binary is ARM-only)."""
    (tmp_path / "out.txt").write_text(text)
    script = tmp_path / "benchmark_model"
    script.write_text(f"#!/bin/sh\ncat {tmp_path / 'out.txt'}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_driver_on_local_device(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3 stand-in")
    device = LocalDevice(benchmark_binary=str(_standin_binary(tmp_path, CURRENT)))
    m = device.measure(model, MeasureConfig(runs=50), runtime="benchmark_model")
    assert m.runtime == "benchmark_model"
    assert m.mean_ms == pytest.approx(14.1543)
    assert m.load_ms == pytest.approx(5.685)
    assert m.raw["estimated_percentiles"] is True
    assert m.min_ms <= m.median_ms <= m.p90_ms <= m.max_ms


def test_driver_reports_a_failed_run(tmp_path: Path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"TFL3 stand-in")
    device = LocalDevice(benchmark_binary=str(_standin_binary(tmp_path, FAILED)))
    with pytest.raises(MeasurementError, match="Could not open"):
        device.measure(model, runtime="benchmark_model")
    with pytest.raises(MeasurementError, match=".tflite"):
        onnx = tmp_path / "m.onnx"
        onnx.write_bytes(b"x")
        device.measure(onnx, runtime="benchmark_model")
