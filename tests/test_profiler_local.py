"""The local device through the real agent subprocess, the measurement protocol, the SQLite cache,
device specs, the device registry and `amc bench` / `amc devices`."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.errors import ConfigError
from profiler.cache import MeasurementCache
from profiler.devices import LocalDevice, open_device, parse_device_spec
from profiler.errors import DeviceUnavailable, MeasurementError
from profiler.export import export_onnx
from profiler.measure import measure
from profiler.protocol import MeasureConfig
from profiler.registry import DeviceRegistry

FAST = MeasureConfig(threads=1, warmup=2, runs=20)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
    return export_onnx(model, torch.randn(1, 3, 16, 16), tmp_path_factory.mktemp("m") / "tiny.onnx")


class CountingLocal(LocalDevice):
    """The real local device, counting how often it is actually asked to measure."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def measure(self, *args, **kwargs):
        self.calls += 1
        return super().measure(*args, **kwargs)


def test_local_measures_a_tiny_model(tiny_onnx: Path) -> None:
    device = open_device("local")
    assert device.health().ok
    m = device.measure(tiny_onnx, FAST)
    assert m.min_ms <= m.median_ms <= m.p90_ms <= m.max_ms
    assert 0 < m.median_ms < 1000
    assert m.runs == 20 and m.threads == 1 and m.runtime == "onnxruntime"
    assert m.raw["kind"] == "bench" and m.raw["model_sha256"] == m.model_sha256
    assert m.load_ms is not None and m.load_ms > 0
    assert m.device_id == device.id and device.id != device.spec  # what the machine is, not "local"


def test_second_measurement_comes_from_the_cache(tiny_onnx: Path, tmp_path: Path) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    device = CountingLocal()
    first = measure(device, tiny_onnx, FAST, cache=cache)
    second = measure(device, tiny_onnx, FAST, cache=cache)
    assert device.calls == 1
    assert not first.cached and second.cached
    assert second.median_ms == first.median_ms
    # A different thread count is a different measurement.
    measure(device, tiny_onnx, MeasureConfig(threads=2, warmup=2, runs=20), cache=cache)
    assert device.calls == 2
    # WAL mode, and a fresh connection (another process) sees the rows.
    conn = sqlite3.connect(tmp_path / "m.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert MeasurementCache(tmp_path / "m.sqlite").count() == 2


def test_broken_agent_path_is_device_unavailable(tiny_onnx: Path, tmp_path: Path) -> None:
    device = LocalDevice(python=str(tmp_path / "no-python"))
    with pytest.raises(DeviceUnavailable, match="cannot start the agent"):
        device.measure(tiny_onnx, FAST)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not LocalDevice(agent_root=empty).health().ok


def test_bad_model_is_a_model_fault(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not onnx")
    with pytest.raises(MeasurementError) as err:
        LocalDevice().measure(bad, FAST)
    assert err.value.model_fault
    with pytest.raises(MeasurementError, match="does not exist"):
        LocalDevice().measure(tmp_path / "missing.onnx", FAST)


@pytest.mark.parametrize("kwargs, field", [
    ({"threads": 0}, "threads"), ({"runs": 0}, "runs"), ({"warmup": -1}, "warmup"),
    ({"cpu_mask": "zz"}, "cpu-mask"), ({"cooldown_s": -1.0}, "cooldown"),
])
def test_measure_config_is_validated(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        MeasureConfig(**kwargs)
    assert err.value.field == field


def test_device_specs() -> None:
    assert parse_device_spec("local").kind == "local"
    tcp = parse_device_spec("adb:192.168.1.20:5555")
    assert (tcp.kind, tcp.host, tcp.port) == ("adb-tcp", "192.168.1.20", 5555)
    usb = parse_device_spec("adb:R58M12ABCDE")
    assert (usb.kind, usb.serial) == ("adb-usb", "R58M12ABCDE")
    for bad in ("", "phone", "adb:", "adb:host:99999", "adb:host:port", "adb:10.0.0.1", "tcp:1.2.3.4:5555",
                "adb:bad serial"):
        with pytest.raises(ConfigError) as err:
            parse_device_spec(bad)
        assert err.value.field == "device"


def test_registry_add_remove(tmp_path: Path) -> None:
    reg = DeviceRegistry(tmp_path / "devices.json")
    assert reg.add("127.0.0.1:5555") == "adb:127.0.0.1:5555"
    assert reg.add("adb:127.0.0.1:5555") == "adb:127.0.0.1:5555"  # once
    assert reg.specs() == ["adb:127.0.0.1:5555"]
    with pytest.raises(ConfigError):
        reg.add("not a device")
    assert reg.remove("127.0.0.1:5555") and not reg.remove("127.0.0.1:5555")
    assert reg.specs() == []


def test_cli_bench_json_and_devices(tiny_onnx: Path, capsys) -> None:
    from profiler.cli import main

    assert main(["bench", str(tiny_onnx), "--runs", "10", "--warmup", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["min_ms"] <= out["median_ms"] <= out["p90_ms"] <= out["max_ms"]
    assert out["cached"] is False
    assert main(["bench", str(tiny_onnx), "--runs", "10", "--warmup", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] is True

    assert main(["devices", "add", "127.0.0.1:1", "--no-check"]) == 0
    capsys.readouterr()
    assert main(["devices", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    by_spec = {d["spec"]: d for d in listing["devices"]}
    assert by_spec["local"]["ok"] is True
    assert by_spec["adb:127.0.0.1:1"]["ok"] is False  # nothing listens there: reported, not raised
    assert main(["bench", str(tiny_onnx), "--device", "adb:nope:1:2"]) == 1



def test_cli_model_names_come_from_the_composer(capsys) -> None:
    """The profiler's command line knows no zoo: `amc` (server.cli) hands it one; alone it takes files only."""
    from profiler.cli import main as profiler_main
    from server.cli import COMMAND_MODULES
    from server.cli import main as amc_main

    assert {COMMAND_MODULES[c] for c in ("bench", "devices", "lut")} == {"server.profiler_cli"}
    assert amc_main(["bench", "demo-cnn", "--runs", "5", "--warmup", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["min_ms"] <= out["median_ms"] <= out["max_ms"]
    assert profiler_main(["bench", "demo-cnn", "--runs", "5"]) == 1
    err = capsys.readouterr().err
    assert "'demo-cnn' is a model name" in err and ".onnx" in err

def test_adb_key_is_generated_private(tmp_path: Path) -> None:
    from profiler.devices.keys import ensure_adb_key, load_signer

    key = ensure_adb_key(tmp_path / "cfg" / "adbkey")
    assert key.is_file() and Path(str(key) + ".pub").is_file()
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert load_signer(key).GetPublicKey()


@pytest.mark.tflite
def test_local_measures_tflite_with_litert(tmp_path: Path) -> None:
    from compressor.export import tflite

    if not tflite.available():
        pytest.skip("litert-torch is not installed: pip install 'amc-service[tflite]'")
    export_tflite = tflite.export

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1)).eval()
    path = export_tflite(model, torch.randn(1, 3, 16, 16), tmp_path / "tiny.tflite", atol=1e-3).path
    m = LocalDevice().measure(path, FAST, runtime="litert")
    assert m.runtime == "litert" and m.min_ms <= m.median_ms <= m.p90_ms <= m.max_ms
