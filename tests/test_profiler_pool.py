"""The device pool with real local devices: retry on another device when one fails, quarantine after
repeated failures and release after the cool-off, deadlines, model faults."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from profiler.cache import MeasurementCache
from profiler.devices import LocalDevice
from profiler.errors import MeasurementError
from profiler.export import export_onnx
from profiler.pool import DevicePool
from profiler.protocol import MeasureConfig

FAST = MeasureConfig(threads=1, warmup=2, runs=10)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    return export_onnx(model, torch.randn(1, 3, 8, 8), tmp_path_factory.mktemp("m") / "tiny.onnx")


def broken(tmp_path: Path, spec: str = "local-broken") -> LocalDevice:
    """A real device whose agent cannot start (its Python path points nowhere)."""
    return LocalDevice(spec, python=str(tmp_path / "missing-python"))


def test_retries_on_another_device(tiny_onnx: Path, tmp_path: Path) -> None:
    bad, good = broken(tmp_path), LocalDevice("local")
    pool = DevicePool([bad, good])
    m = pool.measure(tiny_onnx, FAST)
    assert m is not None and m.min_ms <= m.median_ms <= m.max_ms
    # The broken device fails when it is first identified (its agent cannot start), and counts once.
    assert good.measure_calls == 1 and pool.state("local-broken").failures == 1
    assert "cannot start the agent" in pool.state("local-broken").last_error
    assert pool.state("local").consecutive_failures == 0


def test_quarantine_after_repeated_failures_and_release(tiny_onnx: Path, tmp_path: Path) -> None:
    bad = broken(tmp_path)
    pool = DevicePool([bad], quarantine_after=2, cooloff_s=0.6)
    assert pool.measure(tiny_onnx, FAST) is None  # every device failed: the caller falls back
    assert not pool.is_quarantined("local-broken")
    assert pool.measure(tiny_onnx, FAST) is None
    assert pool.is_quarantined("local-broken")
    # How often the device was asked (to identify itself or to measure): each time it failed.
    calls = pool.state("local-broken").failures
    assert pool.measure(tiny_onnx, FAST, deadline_s=0.2) is None
    assert pool.state("local-broken").failures == calls  # quarantined: not even asked
    time.sleep(0.7)
    assert not pool.is_quarantined("local-broken")  # released after the cool-off...
    assert pool.measure(tiny_onnx, FAST) is None
    assert pool.state("local-broken").failures == calls + 1
    assert pool.is_quarantined("local-broken")  # ...and one more failure puts it back
    status = {s["spec"]: s for s in pool.status()}
    assert status["local-broken"]["quarantined"] and status["local-broken"]["failures"] == 3


def test_health_check_counts_towards_quarantine(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    pool = DevicePool([LocalDevice("local"), LocalDevice("local-empty", agent_root=empty)], quarantine_after=1)
    health = {h.spec: h.ok for h in pool.check_health()}
    assert health == {"local": True, "local-empty": False}
    assert pool.is_quarantined("local-empty") and not pool.is_quarantined("local")


def test_deadline_returns_none_while_every_device_is_busy(tiny_onnx: Path) -> None:
    pool = DevicePool([LocalDevice("local")])
    with pool.lease() as held:
        assert held is not None
        start = time.monotonic()
        assert pool.measure(tiny_onnx, FAST, deadline_s=0.3) is None
        assert time.monotonic() - start < 5
    assert pool.measure(tiny_onnx, FAST, deadline_s=60) is not None


def test_one_measurement_per_device_at_a_time(tiny_onnx: Path, tmp_path: Path) -> None:
    device = LocalDevice("local")
    pool = DevicePool([device])
    active, peak = [0], [0]
    original = device.run

    def tracking_run(command: str, *, timeout_s: float):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return original(command, timeout_s=timeout_s)
        finally:
            active[0] -= 1

    device.run = tracking_run  # type: ignore[method-assign]
    results = []
    threads = [threading.Thread(target=lambda: results.append(pool.measure(tiny_onnx, FAST))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r is not None for r in results)
    assert peak[0] == 1


def test_model_fault_is_raised_not_retried(tmp_path: Path) -> None:
    bad_model = tmp_path / "bad.onnx"
    bad_model.write_bytes(b"not a model")
    a, b = LocalDevice("local-a"), LocalDevice("local-b")
    pool = DevicePool([a, b])
    with pytest.raises(MeasurementError) as err:
        pool.measure(bad_model, FAST)
    assert err.value.model_fault
    assert a.measure_calls + b.measure_calls == 1
    assert pool.state("local-a").failures == 0 and pool.state("local-b").failures == 0


def test_pool_answers_from_the_cache(tiny_onnx: Path, tmp_path: Path) -> None:
    device = LocalDevice("local")
    pool = DevicePool([device], cache=MeasurementCache(tmp_path / "c.sqlite"))
    first = pool.measure(tiny_onnx, FAST)
    second = pool.measure(tiny_onnx, FAST)
    assert first is not None and second is not None and second.cached
    assert device.measure_calls == 1
    # A fresh measurement times the device now (a search's calibration: today's speed, not a stored one).
    third = pool.measure(tiny_onnx, FAST, fresh=True)
    assert third is not None and not third.cached
    assert device.measure_calls == 2


def test_pool_from_specs_rejects_a_malformed_spec() -> None:
    from compressor.errors import ConfigError

    pool = DevicePool.from_specs(["local"])
    assert [d.spec for d in pool.devices] == ["local"]
    with pytest.raises(ConfigError):
        DevicePool.from_specs(["local", "adb:"])
