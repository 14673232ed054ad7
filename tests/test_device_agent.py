"""The device agent, run as a real process from a copy of its folder, as it runs on a phone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from device_agent.bench import parse_cpu_mask
from device_agent.schema import SCHEMA_VERSION, ResultParseError, UsageError, parse_result

REPO = Path(__file__).resolve().parents[1]


def make_onnx_model(path: Path, *, channels: int = 8, size: int = 16) -> Path:
    """A tiny conv+relu network with a dynamic batch dimension."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((channels, 3, 3, 3)).astype(np.float32), "W")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", channels, size, size])
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "tiny", [x], [y], initializer=[weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def device_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only a copy of device_agent/ and a model, like /data/local/tmp on a phone."""
    root = tmp_path_factory.mktemp("phone")
    shutil.copytree(
        REPO / "device_agent", root / "device_agent", ignore=shutil.ignore_patterns("__pycache__")
    )
    make_onnx_model(root / "model.onnx")
    return root


def run_agent(device_dir: Path, *args: str) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", "device_agent", *args],
        cwd=device_dir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected exactly one JSON line, got {proc.stdout!r}"
    return proc.returncode, json.loads(lines[0])


def test_bench_prints_valid_result_from_copied_folder(device_dir: Path) -> None:
    rc, obj = run_agent(device_dir, "bench", "model.onnx", "--runs", "15", "--warmup", "2", "--threads", "1")
    assert rc == 0
    result = parse_result(json.dumps(obj))
    assert result["ok"] is True and result["runtime"] == "onnxruntime"
    assert result["runs"] == 15 and result["warmup"] == 2 and result["threads"] == 1
    assert result["min_ms"] <= result["median_ms"] <= result["p90_ms"] <= result["max_ms"]
    assert result["inputs"] == [{"name": "x", "shape": [1, 3, 16, 16], "dtype": "float32"}]
    data = (device_dir / "model.onnx").read_bytes()
    assert result["model_size"] == len(data)
    import hashlib

    assert result["model_sha256"] == hashlib.sha256(data).hexdigest()
    assert result["device"]["cores"] == os.cpu_count()
    assert result["runtime_version"]


def test_samples_are_reported_on_request(device_dir: Path) -> None:
    rc, obj = run_agent(device_dir, "bench", "model.onnx", "--runs", "7", "--warmup", "0", "--samples")
    assert rc == 0
    result = parse_result(json.dumps(obj))
    samples = result["samples_ms"]
    assert len(samples) == 7
    assert result["min_ms"] == min(samples) and result["max_ms"] == max(samples)
    assert result["median_ms"] == pytest.approx(float(np.median(samples)))


def test_temperature_prefers_the_cpu_zone(tmp_path: Path) -> None:
    from device_agent.deviceinfo import cpu_governor, temperature

    for index, (zone_type, millideg) in enumerate(
        [("battery", "30000"), ("cpu-0-0-usr", "45500"), ("gpu", "x")]
    ):
        zone = tmp_path / f"thermal_zone{index}"
        zone.mkdir()
        (zone / "type").write_text(zone_type + "\n")
        (zone / "temp").write_text(millideg + "\n")
    assert temperature(str(tmp_path / "thermal_zone*")) == (45.5, "cpu-0-0-usr")
    assert temperature(str(tmp_path / "absent*")) == (None, None)
    (tmp_path / "scaling_governor").write_text("schedutil\n")
    assert cpu_governor(tmp_path / "scaling_governor") == "schedutil"
    assert cpu_governor(tmp_path / "missing") is None


def test_cpu_mask_pins_the_process(device_dir: Path) -> None:
    if not hasattr(os, "sched_setaffinity"):
        pytest.skip("no sched_setaffinity on this platform")
    rc, obj = run_agent(
        device_dir, "bench", "model.onnx", "--runs", "3", "--warmup", "0", "--cpu-mask", "0x1"
    )
    assert rc == 0
    assert obj["cpu_affinity"] == [0]


@pytest.mark.parametrize(
    ("args", "error_type"),
    [
        (("bench", "corrupt.onnx"), "ModelLoadError"),
        (("bench", "missing.onnx"), "ModelNotFound"),
        (("bench", "model.onnx", "--runtime", "no-such-runtime"), "RuntimeUnavailable"),
        (("bench", "model.onnx", "--runs", "0"), "UsageError"),
        (("bench", "model.onnx", "--cpu-mask", "zz"), "UsageError"),
        (("bench",), "UsageError"),
    ],
)
def test_errors_are_json_with_nonzero_exit(device_dir: Path, args: tuple[str, ...], error_type: str) -> None:
    good = (device_dir / "model.onnx").read_bytes()
    (device_dir / "corrupt.onnx").write_bytes(good[: len(good) // 2] + b"\x00garbage\xff")
    rc, obj = run_agent(device_dir, *args)
    assert rc != 0
    parsed = parse_result(json.dumps(obj))
    assert parsed["ok"] is False and parsed["error_type"] == error_type
    assert parsed["error"]


def test_several_models_are_timed_in_one_run_each_with_its_result_or_error(device_dir: Path) -> None:
    make_onnx_model(device_dir / "wide.onnx", channels=32)
    good = (device_dir / "model.onnx").read_bytes()
    (device_dir / "corrupt.onnx").write_bytes(good[: len(good) // 2] + b"\x00garbage\xff")
    rc, obj = run_agent(device_dir, "bench", "model.onnx", "missing.onnx", "corrupt.onnx", "wide.onnx",
                        "--runs", "5", "--warmup", "1")
    assert rc == 0
    batch = parse_result(json.dumps(obj))
    assert batch["kind"] == "batch" and batch["ok"] is True
    kinds = [(r["kind"], r.get("error_type")) for r in batch["results"]]
    assert kinds == [("bench", None), ("error", "ModelNotFound"), ("error", "ModelLoadError"), ("bench", None)]
    first, last = batch["results"][0], batch["results"][3]
    assert first["model_path"] == "model.onnx" and last["model_path"] == "wide.onnx" and last["runs"] == 5
    assert first["model_sha256"] != last["model_sha256"]
    # What every model would fail alike fails the whole run, as for one model.
    rc, obj = run_agent(device_dir, "bench", "model.onnx", "wide.onnx", "--runtime", "no-such-runtime")
    assert rc != 0 and obj["kind"] == "error" and obj["error_type"] == "RuntimeUnavailable"


def test_a_batch_reads_the_phones_properties_once(device_dir: Path, tmp_path: Path) -> None:
    """Each `getprop` is a process start on a phone: a batch of models asks once, not once per model."""
    calls = tmp_path / "getprop.calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    getprop = bin_dir / "getprop"
    getprop.write_text(f'#!/bin/sh\necho "$1" >> {calls}\ncase "$1" in ro.product.model) echo "Pixel 7";; '
                       'ro.serialno) echo SER1;; *) echo;; esac\n')
    getprop.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    proc = subprocess.run([sys.executable, "-m", "device_agent", "bench", "model.onnx", "model.onnx", "model.onnx",
                           "--runs", "2", "--warmup", "0"], cwd=device_dir, env=env, capture_output=True, text=True,
                          timeout=120)
    batch = parse_result(proc.stdout)
    assert proc.returncode == 0 and len(batch["results"]) == 3
    assert all(r["device"]["model"] == "Pixel 7" and r["device"]["serial"] == "SER1" for r in batch["results"])
    asked = calls.read_text().split()
    assert sorted(asked) == sorted(set(asked)) and "ro.product.model" in asked, asked  # each property once


@pytest.mark.parametrize("item", [{"kind": "info"}, "text", None])
def test_parse_result_rejects_a_batch_holding_anything_but_results(item) -> None:
    batch = {"schema": SCHEMA_VERSION, "kind": "batch", "ok": True, "results": [_valid_bench(), item]}
    with pytest.raises(ResultParseError, match="not a bench or error result"):
        parse_result(json.dumps(batch))
    bad = _valid_bench()
    bad["median_ms"] = 9.0  # outside [min, max]: an item is checked as a result of its own
    with pytest.raises(ResultParseError, match="outside"):
        parse_result(json.dumps({**batch, "results": [bad]}))


def test_info_reports_device() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "device_agent", "info"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    info = parse_result(proc.stdout)
    assert info["kind"] == "info"
    assert info["device"]["abi"]
    assert info["device"]["cores"] == os.cpu_count()


def test_agent_does_not_import_torch() -> None:
    code = (
        "import sys, device_agent.__main__, device_agent.bench, device_agent.runtimes, device_agent.schema;"
        "import device_agent.phone_sim.cli;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'compressor', 'profiler', 'server')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _valid_bench() -> dict:
    return {
        "schema": SCHEMA_VERSION, "kind": "bench", "ok": True, "runtime": "onnxruntime",
        "runtime_version": "1", "threads": 1, "warmup": 1, "runs": 3, "cooldown_s": 0.0,
        "cpu_affinity": None, "median_ms": 2.0, "p90_ms": 2.5, "mean_ms": 2.1, "std_ms": 0.1,
        "min_ms": 1.0, "max_ms": 3.0, "load_ms": 5.0, "model_path": "m.onnx", "model_sha256": "0" * 64,
        "model_size": 10, "inputs": [{"name": "x", "shape": [1, 3], "dtype": "float32"}],
        "device": {"model": None, "manufacturer": None, "abi": None, "android_release": None,
                   "serial": None, "kernel": None, "cores": 2, "governor": None, "temperature_c": None,
                   "thermal_zone": None, "python": "3.11"},
        "temperature_before_c": None, "temperature_after_c": None,
    }  # fmt: skip


def test_parse_result_accepts_noise_around_the_json() -> None:
    text = "WARNING: linker: something\n" + json.dumps(_valid_bench()) + "\n"
    assert parse_result(text)["median_ms"] == 2.0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.pop("median_ms"),
        lambda r: r.update(median_ms=9.0),  # outside [min, max]
        lambda r: r.update(runs="3"),
        lambda r: r.update(schema=99),
        lambda r: r["device"].pop("cores"),
        lambda r: r.update(kind="other"),
        lambda r: r.update(samples_ms=[1.0]),  # runs is 3
    ],
)
def test_parse_result_rejects_malformed(mutate) -> None:
    result = _valid_bench()
    mutate(result)
    with pytest.raises(ResultParseError):
        parse_result(json.dumps(result))


def test_parse_result_rejects_non_json() -> None:
    with pytest.raises(ResultParseError, match="no JSON object"):
        parse_result("/system/bin/sh: python3: not found")


def test_cpu_mask_parsing() -> None:
    assert parse_cpu_mask("0xf0") == {4, 5, 6, 7}
    assert parse_cpu_mask("3") == {0, 1}
    with pytest.raises(UsageError):
        parse_cpu_mask("0x0")


@pytest.mark.tflite
def test_litert_runtime_times_a_tflite_model(device_dir: Path) -> None:
    litert_torch = pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert.interpreter")
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU()).eval()
    litert_torch.convert(model, (torch.randn(1, 3, 8, 8),)).export(str(device_dir / "tiny.tflite"))
    rc, obj = run_agent(
        device_dir, "bench", "tiny.tflite", "--runtime", "litert", "--runs", "5", "--warmup", "1"
    )
    assert rc == 0, obj
    result = parse_result(json.dumps(obj))
    assert result["runtime"] == "litert" and result["inputs"][0]["shape"] == [1, 3, 8, 8]
    # The same file through onnxruntime is a clear load error, not a crash.
    rc, obj = run_agent(device_dir, "bench", "tiny.tflite", "--runtime", "onnxruntime")
    assert rc != 0 and obj["error_type"] == "ModelLoadError"


def test_runtime_not_installed_is_a_json_error(device_dir: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("tflite_runtime") is not None:
        pytest.skip("tflite_runtime is installed here")
    rc, obj = run_agent(device_dir, "bench", "model.onnx", "--runtime", "tflite_runtime")
    assert rc != 0 and obj["error_type"] == "RuntimeUnavailable"
    assert "not installed" in obj["error"] and "litert" in obj["error"]
