"""A latency-targeted search end to end against a phone emulator over ADB: the lookup table is built
through the emulator, the action wall uses it, the best candidates are measured on the "phone", and
the result meets the target as measured."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from device_agent.phone_sim import PhoneSimulator

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def phone(tmp_path):
    sim = PhoneSimulator(port=0, root=tmp_path / "phone", serial="amc-test-phone", model_name="Emulated Pixel")
    sim.start()
    try:
        yield f"adb:127.0.0.1:{sim.port}"
    finally:
        sim.stop()


def _amc(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_latency_target_is_met_as_measured_on_an_emulated_phone(tmp_path, phone):
    env = dict(os.environ, PYTHONPATH=str(REPO), AMC_CONFIG_DIR=str(tmp_path / "config"),
               AMC_CACHE_DIR=str(tmp_path / "cache"))
    bench = _amc(["bench", "demo-cnn", "--device", phone, "--runs", "100", "--json"], env)
    assert bench.returncode == 0, bench.stderr
    baseline_ms = json.loads(bench.stdout)["median_ms"]
    target = round(0.8 * baseline_ms, 5)

    def compress(target: float) -> subprocess.CompletedProcess:
        return _amc(["compress", "--model", "demo-cnn", "--data", "digits", "--target", f"latency-ms={target}",
                     "--device", phone, "--episodes", "16", "--warmup", "4", "--out", str(tmp_path / "out"),
                     "--json"], env)

    for _ in range(3):
        run = compress(target)
        reachable = re.search(r"Ask for at least latency-ms=([0-9.]+)", " ".join(run.stderr.split()))
        if not (run.returncode == 2 and reachable):
            break
        # A tiny model's latency is mostly fixed overhead: the table may say 0.8x is out of reach. Do
        # what the message says, as a user would: aim between the smallest reachable and the baseline
        # (at the smallest reachable itself when the table puts it above the measured baseline). The
        # table may move between runs (kernel shapes are timed on first use), hence a few tries.
        low = float(reachable.group(1))
        target = round((low + baseline_ms) / 2, 5) if low < baseline_ms else low
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    latency = report["latency"]
    # The action wall, on the device's table: the target in the table's milliseconds, after the
    # calibration (the unpruned network timed first) and any correction round rescaled it.
    calibration = latency["calibration"]
    assert calibration["ratio"] == pytest.approx(calibration["measured_ms"] / calibration["predicted_ms"])
    assert report["budget"]["limit"] == pytest.approx(target)
    # The pick was searched under one of the limits in force (the calibrated one, or a correction round's):
    # a round that tightened the limit can still pick an earlier episode that meets the target as measured.
    limits = [target / calibration["ratio"], *(c["limit_ms"] for c in latency.get("corrections", []))]
    assert report["budget"]["predicted_limit"] == pytest.approx(limits[-1])
    assert latency["predicted_ms"] <= max(limits) * (1 + 1e-6)
    assert latency["measured_ms"] is not None
    # Met as measured, at the phone's speed when the budget was set: the pick was timed right after
    # the unpruned network, and the drift since the calibration divided out.
    assert latency["comparable_ms"] == pytest.approx(latency["measured_ms"] / latency["drift"])
    assert latency["target_met"] and latency["comparable_ms"] <= target, latency
    assert report["result"]["latency_measured_ms"] == latency["measured_ms"]
    # measured too (not compared with the target: a 0.02 ms model varies by more than the margin)
    assert report["baseline"]["latency_measured_ms"] > 0
    # the table and the agent went through ADB: the emulator's sandbox holds the pushed models
    assert any((tmp_path / "phone").rglob("*.onnx"))
    assert "| ddpg |" in (tmp_path / "out" / "report.md").read_text()
