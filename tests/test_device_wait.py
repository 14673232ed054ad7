"""A job waiting for its only phone: a real `amc phone-sim` process is stopped and started again on the same
port. A device call waits for it (`PatientDevice`) and goes on when it is back; past the deadline it raises
DeviceWaitExpired. A job on the server says it waits (phase `device`, a `device-wait` event, its log), fails
past its `device_wait_s` with an error that says to resume, and a resumed job finishes once the phone is back."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from test_server_harness import ServerProcess, wait_for
from torch import nn

from profiler.devices import open_device
from profiler.devices.base import CommandResult, Device
from profiler.errors import DeviceUnavailable, DeviceWaitExpired, DeviceWaitStopped
from profiler.export import export_onnx
from profiler.protocol import MeasureConfig
from profiler.waiting import PatientDevice

BIN = Path(sys.executable).parent


class Phone:
    """`amc phone-sim` as a process that can be stopped and started again on its port."""

    def __init__(self, root: Path, serial: str = "WAIT1"):
        self.root = root
        self.serial = serial
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Phone:
        self.starts += 1
        (self.root / "phone").mkdir(parents=True, exist_ok=True)
        log = self.root / f"phone-{self.starts}.log"
        self.proc = subprocess.Popen([str(BIN / "amc"), "phone-sim", "--port", str(self.port), "--root",
                                      str(self.root / "phone"), "--serial", self.serial, "--model-name", "Wait Phone"],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", log.read_text())
            if m:
                self.port = int(m.group(1))
                return self
            assert self.proc.poll() is None, log.read_text()
            time.sleep(0.1)
        raise AssertionError(log.read_text())

    @property
    def spec(self) -> str:
        return f"adb:127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)  # gone at once, as a phone pulled off its cable
            self.proc.wait(10)


@pytest.fixture
def phone(tmp_path):
    p = Phone(tmp_path).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return export_onnx(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), torch.randn(1, 3, 16, 16),
                       tmp_path_factory.mktemp("m") / "tiny.onnx")


def test_a_device_call_waits_for_the_phone_and_goes_on_when_it_is_back(phone, tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    config = MeasureConfig(warmup=1, runs=5)
    heard: list[str] = []
    device = PatientDevice(open_device(phone.spec), wait_s=120, poll_s=0.5, on_wait=lambda n: heard.append(n.state))
    first = device.measure(tiny_onnx, config)
    assert first.min_ms <= first.median_ms <= first.max_ms

    phone.stop()
    restarter = threading.Timer(4.0, phone.start)
    restarter.start()
    t = time.monotonic()
    again = device.measure(tiny_onnx, config)  # fails on the dead connection, waits, measures on the new one
    waited = time.monotonic() - t
    restarter.join()
    assert again.min_ms <= again.median_ms <= again.max_ms
    assert heard == ["waiting", "back"], heard
    assert waited >= 3.5
    assert device.waits[0].spec == phone.spec and "waiting for device" in device.waits[0].describe()
    assert device.identity().serial == "WAIT1"


def test_past_the_deadline_the_wait_expires_and_a_live_device_is_never_waited_for(phone, tiny_onnx, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    device = PatientDevice(open_device(phone.spec), wait_s=3, poll_s=0.5)
    device.identity()
    # A failure while the phone answers (here: a model file that does not exist is the model's fault, and an
    # agent that cannot start is the device's) is raised at once, not waited for.
    t = time.monotonic()
    with pytest.raises(DeviceUnavailable) as live:
        device.patiently(lambda: (_ for _ in ()).throw(DeviceUnavailable(phone.spec, "agent missing")))
    assert not isinstance(live.value, DeviceWaitExpired) and time.monotonic() - t < 10 and device.waits == []

    phone.stop()
    t = time.monotonic()
    with pytest.raises(DeviceWaitExpired, match=r"waited [0-9]+ s of 3 s \(device_wait_s\)") as expired:
        device.measure(tiny_onnx, MeasureConfig(warmup=1, runs=3))
    assert 3 <= time.monotonic() - t < 30
    assert "resume" in str(expired.value)
    assert [w.state for w in device.waits] == ["waiting", "expired"]
    # Given up on: the next call does not wait again while the phone is still away.
    with pytest.raises(DeviceWaitExpired):
        device.measure(tiny_onnx, MeasureConfig(warmup=1, runs=3))
    assert [w.state for w in device.waits] == ["waiting", "expired"]
    # Back: measured again, and waited for again when it goes next time.
    phone.start()
    assert device.measure(tiny_onnx, MeasureConfig(warmup=1, runs=3)).median_ms > 0


def test_a_job_waits_for_its_phone_fails_resumably_past_the_deadline_and_resumes(tmp_path):
    phone = Phone(tmp_path / "sim").start()
    # its own measurement cache and tables: the phone is asked for every kernel, whatever ran before
    server = ServerProcess(tmp_path / "data", env={"AMC_MAX_WORKERS": "1", "AMC_CACHE_DIR": str(tmp_path / "cache")}).start()
    try:
        with server.client() as c:
            c.timeout = httpx.Timeout(300)  # (a loaded machine: the server validates a spec by building its model)
            # round_to 32 and a_min 0.8: few kernel shapes to time, so the job's table is built in a few measurements
            spec = {"model": "demo-cnn", "data": "digits", "target": "latency-ms=1000", "strategy": "random",
                    "episodes": 2, "device": phone.spec, "seed": 0, "device_wait_s": 15, "round_to": 32,
                    "a_min": 0.8, "measure_top": 1}
            registered = c.post("/devices", json={"spec": phone.spec})
            assert registered.status_code in (200, 201), registered.text
            r = c.post("/jobs", json=spec)
            assert r.status_code == 201, r.text
            job_id = r.json()["id"]
            assert c.post("/jobs", json={**spec, "device_wait_s": -1}).status_code == 422

            def job() -> dict:
                return c.get(f"/jobs/{job_id}").json()

            def until(predicate, what: str, within: float) -> dict:
                deadline = time.monotonic() + within
                last: dict = {}
                while time.monotonic() < deadline:
                    last = job()
                    if predicate(last):
                        return last
                    time.sleep(0.3)
                raise AssertionError(f"timed out waiting for {what}; last: {last}\n{server.log()[-3000:]}")

            # The table is being built on the phone: the phone goes away.
            until(lambda j: j["phase"] == "latency" and any((tmp_path / "sim" / "phone").rglob("*.onnx")),
                  "the latency table's first kernels on the phone", 600)
            phone.stop()
            waiting = until(lambda j: j["phase"] == "device", "the job to wait for its phone", 120)
            assert waiting["state"] == "running"
            assert f"waiting for device {phone.spec}" in waiting["message"] and "device_wait_s" in waiting["message"]
            assert any(e["kind"] == "device-wait" and "waiting for device" in e["message"] for e in waiting["events"])

            # Past device_wait_s: failed, with its work kept and the way to resume in the error.
            failed = wait_for(c, job_id, {"failed", "succeeded"}, timeout=120)
            assert failed["state"] == "failed", failed
            assert failed["error"].startswith("DeviceWaitExpired:") and f"POST /jobs/{job_id}/resume" in failed["error"]
            assert any(e["kind"] == "device-wait" and "did not come back" in e["message"] for e in failed["events"])
            log = c.get(f"/jobs/{job_id}/log").text
            assert f"waiting for device {phone.spec}" in log and "did not come back" in log

            # The phone is back; the job resumes, the phone goes away once more and comes back while it waits.
            phone.start()
            assert c.post(f"/jobs/{job_id}/resume").status_code == 200
            until(lambda j: j["state"] == "running" and j["phase"] == "latency", "the resumed job building", 120)
            time.sleep(2.0)
            phone.stop()
            until(lambda j: j["phase"] == "device", "the resumed job to wait for its phone", 120)
            phone.start()
            done = wait_for(c, job_id, {"failed", "succeeded", "cancelled"}, timeout=1800)
            assert done["state"] == "succeeded", (done, server.log()[-3000:])
            kinds = [e["kind"] for e in done["events"]]
            assert "resume" in kinds
            backs = [e for e in done["events"] if e["kind"] == "device-wait" and "is back" in e["message"]]
            assert backs and phone.spec in backs[-1]["message"]
            assert done["report"]["latency"]["measured_ms"] is not None  # the phone timed the result
    finally:
        server.stop()
        phone.stop()


class _GonePhone(Device):
    """A device that never answers: every command fails as an unplugged phone's would."""

    kind = "gone"

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        raise DeviceUnavailable(self.spec, "the device closed the connection")

    def model_path_on_device(self, model_path: Path, sha256: str) -> str:
        raise DeviceUnavailable(self.spec, "the device closed the connection")

    def agent_command(self) -> str:
        return "true"


def test_a_cancelled_job_stops_waiting_for_its_device_at_the_next_poll():
    stop = threading.Event()
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] >= 6:
            stop.set()  # the user cancels the job while it waits

    device = PatientDevice(_GonePhone("adb:gone:5555"), wait_s=600, poll_s=2, should_stop=stop.is_set,
                           clock=lambda: now[0], sleep=sleep)
    with pytest.raises(DeviceWaitStopped, match="the job is stopping") as caught:
        device.run("echo hi", timeout_s=5)
    assert isinstance(caught.value, DeviceWaitExpired)  # a search's measurement falls back to the table
    assert 6 <= now[0] < 10 and [n.state for n in device.waits] == ["waiting"]  # not the 600 s deadline
    # without a cancel the same wait runs to its deadline
    now[0] = 0.0
    patient = PatientDevice(_GonePhone("adb:gone:5555"), wait_s=30, poll_s=2, should_stop=lambda: False,
                            clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    with pytest.raises(DeviceWaitExpired) as expired:
        patient.run("echo hi", timeout_s=5)
    assert not isinstance(expired.value, DeviceWaitStopped) and now[0] == 30
