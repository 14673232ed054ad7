"""A device is keyed by what it is, not the address it was reached at: phones played by the project's
phone emulator (different models, serials and builds) at one address or at several, the measurement
cache and the lookup tables they share or keep apart, and files from before identities."""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest
import torch
from torch import nn

from device_agent.phone_sim.server import PhoneSimulator
from profiler.cache import MeasurementCache
from profiler.devices import AdbTcpDevice, LocalDevice, open_device
from profiler.devices.identity import DeviceIdentity
from profiler.errors import DeviceUnavailable
from profiler.export import export_onnx
from profiler.lut import LatencyTable, LutError, load_or_new, lut_path
from profiler.measure import measure
from profiler.oracle import device_table
from profiler.pool import DevicePool
from profiler.protocol import MeasureConfig

QUICK = MeasureConfig(warmup=1, runs=5)


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))


@pytest.fixture
def key(tmp_path: Path) -> Path:
    from profiler.devices.keys import ensure_adb_key

    return ensure_adb_key(tmp_path / "config" / "adbkey")


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
    return export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path_factory.mktemp("m") / "tiny.onnx")


@pytest.fixture
def phones(tmp_path: Path, key: Path):
    """Start emulated phones by keyword (serial, model_name, fingerprint, port); all stopped at the end."""
    started: list[PhoneSimulator] = []

    def start(serial: str, model_name: str, *, port: int = 0, fingerprint: str | None = None) -> PhoneSimulator:
        sim = PhoneSimulator(port=port, root=tmp_path / f"phone-{serial}", serial=serial, model_name=model_name,
                             auth_keys=str(key) + ".pub", fingerprint=fingerprint).start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


def _device(sim: PhoneSimulator, key: Path) -> AdbTcpDevice:
    device = open_device(f"adb:127.0.0.1:{sim.port}", key_path=key)
    assert isinstance(device, AdbTcpDevice)
    return device


def test_two_phones_at_one_address_do_not_share_measurements(phones, key: Path, tmp_path: Path,
                                                             tiny_onnx: Path) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    first_phone = phones("PIX7-A", "Pixel 7")
    device = _device(first_phone, key)
    first = measure(device, tiny_onnx, QUICK, cache=cache)
    assert not first.cached and first.device_info["serial"] == "PIX7-A"

    # Another phone answers at the same address; the host keeps its Device object.
    first_phone.stop()
    phones("PIX8-B", "Pixel 8", port=first_phone.port)
    second = measure(device, tiny_onnx, QUICK, cache=cache)
    assert not second.cached, "the second phone was served the first phone's cached measurement"
    assert second.device_info["serial"] == "PIX8-B"
    assert second.device_id != first.device_id and second.device_id.startswith("Pixel_8-")
    assert cache.count() == 2
    # Each phone's numbers stay filed under its own identity.
    assert cache.get(device_id=first.device_id, runtime="onnxruntime", config=QUICK,
                     sha256=first.model_sha256).device_info["serial"] == "PIX7-A"
    device.close()


def test_two_identical_phones_share_measurements_and_a_table(phones, key: Path, tmp_path: Path,
                                                             tiny_onnx: Path) -> None:
    one, two = _device(phones("UNIT-1", "Pixel 7"), key), _device(phones("UNIT-2", "Pixel 7"), key)
    other_build = _device(phones("UNIT-3", "Pixel 7", fingerprint="google/panther/panther:15/AP3A/2:user/release-keys"),
                          key)
    assert (one.identity().serial, two.identity().serial) == ("UNIT-1", "UNIT-2")
    assert one.id == two.id, "one model and build at two addresses should be one kind of device"
    assert other_build.id != one.id, "a phone with another build must not share the first build's numbers"

    cache = MeasurementCache(tmp_path / "m.sqlite")
    measured = measure(one, tiny_onnx, QUICK, cache=cache)
    shared = measure(two, tiny_onnx, QUICK, cache=cache)
    assert not measured.cached and shared.cached and shared.median_ms == measured.median_ms
    assert two.measure_calls == 0  # the second phone never timed it

    lut_dir = tmp_path / "lut"
    table = device_table(one, lut_dir=lut_dir)
    table.save()
    again = device_table(two, lut_dir=lut_dir)
    assert again.path == table.path and again.path is not None and again.path.is_file()
    assert again.meta["serials"] == ["UNIT-1", "UNIT-2"]
    assert device_table(other_build, lut_dir=lut_dir).path != table.path
    for device in (one, two, other_build):
        device.close()


def test_the_pool_answers_from_the_cache_for_an_identical_phone(phones, key: Path, tmp_path: Path,
                                                                tiny_onnx: Path) -> None:
    cache = MeasurementCache(tmp_path / "m.sqlite")
    one, two = _device(phones("POOL-1", "Pixel 7"), key), _device(phones("POOL-2", "Pixel 7"), key)
    measured = measure(one, tiny_onnx, QUICK, cache=cache)
    pool = DevicePool([two], cache=cache)
    result = pool.measure(tiny_onnx, QUICK)
    assert result is not None and result.cached and result.median_ms == measured.median_ms
    assert two.measure_calls == 0
    pool.close()
    one.close()


def test_an_offline_phone_predicts_with_the_table_last_identified_at_its_address(phones, key: Path,
                                                                                tmp_path: Path) -> None:
    lut_dir = tmp_path / "lut"
    sim = phones("OFF-1", "Pixel 7")
    online = device_table(_device(sim, key), lut_dir=lut_dir)
    online.save()
    address = sim.port
    sim.stop()
    offline = open_device(f"adb:127.0.0.1:{address}", key_path=key, connect_timeout_s=2.0)
    assert device_table(offline, lut_dir=lut_dir).path == online.path
    never_seen = open_device("adb:127.0.0.1:9", key_path=key, connect_timeout_s=2.0)
    with pytest.raises(DeviceUnavailable, match="nothing answers"):
        device_table(never_seen, lut_dir=lut_dir)


def test_the_local_machine_is_keyed_by_what_it_is() -> None:
    a, b = LocalDevice(), LocalDevice()
    identity = a.identity()
    assert a.id == b.id == identity.key
    assert not a.id.startswith(("local:", "adb:")) and identity.build and identity.runtimes.get("onnxruntime")


def test_a_measurement_from_another_phone_than_identified_is_noticed() -> None:
    identity = DeviceIdentity(serial="A1", model="Pixel 7", build="b1", agent="x")
    assert identity.mismatch({"serial": "A1", "model": "Pixel 7", "build": "b1"}) is None
    assert identity.mismatch({"serial": None, "model": "Pixel 7"}) is None  # what it does not say cannot differ
    assert identity.mismatch({"serial": "B2", "model": "Pixel 7"}) == "serial 'A1' became 'B2'"
    assert identity.mismatch({"serial": "A1", "build": "b2"}) == "build 'b1' became 'b2'"
    # The serial is not part of the key; the model, build, runtimes and agent are.
    same_kind = DeviceIdentity(serial="B2", model="Pixel 7", build="b1", agent="x")
    assert same_kind.key == identity.key
    for other in (DeviceIdentity(serial="A1", model="Pixel 8", build="b1", agent="x"),
                  DeviceIdentity(serial="A1", model="Pixel 7", build="b2", agent="x"),
                  DeviceIdentity(serial="A1", model="Pixel 7", build="b1", agent="y"),
                  DeviceIdentity(serial="A1", model="Pixel 7", build="b1", agent="x", runtimes={"onnxruntime": "2"})):
        assert other.key != identity.key, other


# -- files from before identities ---------------------------------------------------------------------


def test_cached_measurements_keyed_by_address_are_dropped_and_the_rest_kept(tmp_path: Path, caplog) -> None:
    path = tmp_path / "old.sqlite"
    MeasurementCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 0")  # as files written before identities
    row = "INSERT INTO measurements VALUES (?, 'onnxruntime', 1, '', 'sha', 1.0, 1.0, 0, ?)"
    for device_id in ("adb:127.0.0.1:5555", "local:somehost", "Pixel_7-0123456789ab"):
        conn.execute(row, (device_id, json.dumps({"device_id": device_id})))
    conn.commit()
    conn.close()
    with caplog.at_level(logging.WARNING, logger="profiler.cache"):
        cache = MeasurementCache(path)
    assert cache.count() == 1
    assert "dropped 2 cached measurements" in caplog.text and "measured again" in caplog.text
    assert MeasurementCache(path).count() == 1  # done once


def test_a_newer_cache_file_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    MeasurementCache(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(Exception, match="upgrade amc, or move the file away"):
        MeasurementCache(path)


def test_a_table_keyed_by_address_is_refused_with_what_to_do(tmp_path: Path, caplog) -> None:
    old = lut_path(tmp_path, "adb:127.0.0.1:5555", "onnxruntime", 1)
    old.write_text(json.dumps({"version": 1, "device_id": "adb:127.0.0.1:5555", "runtime": "onnxruntime",
                               "threads": 1, "meta": {}, "entries": [], "calibrations": {}}))
    with pytest.raises(LutError, match=r"version-1 .*adb:127.0.0.1:5555.*amc lut build"):
        LatencyTable.load(old)
    # Looked up by identity, the old file is not used, and the log says why and what to do with it.
    with caplog.at_level(logging.WARNING, logger="profiler.lut.table"):
        table = load_or_new(tmp_path, "Pixel_7-0123456789ab", "onnxruntime", 1, legacy_id="adb:127.0.0.1:5555")
    assert len(table) == 0 and table.path != old
    assert "keyed by the address adb:127.0.0.1:5555" in caplog.text and "delete the old file" in caplog.text
