"""The REST API against a real uvicorn process on loopback: submit a small digits job with the
token, follow it to `succeeded`, run its ONNX model in ONNX Runtime; auth and validation errors."""

from __future__ import annotations

import io
import os
import stat

import numpy as np
import pytest
from test_server_harness import SMALL_JOB, TOKEN, ServerProcess, wait_for

from server.core.config import Settings
from server.core.security import InsecureBindError, check_bind, ensure_token


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("amc") / "data").start()
    yield srv
    srv.stop()


def test_small_digits_job_succeeds_and_its_onnx_model_runs(server):
    import onnxruntime as ort

    with server.client() as c:
        r = c.post("/jobs", json=SMALL_JOB)
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["state"] in ("queued", "running")
        assert r.headers["location"] == f"/jobs/{created['id']}"
        assert created["links"]["artifacts"] == {}  # nothing is served before the job has succeeded

        job = wait_for(c, created["id"], {"succeeded", "failed", "cancelled"})
        assert job["state"] == "succeeded", (job.get("error"), c.get(job["links"]["log"]).text[-3000:])
        assert job["progress"] == 1.0 and job["episodes_done"] == SMALL_JOB["episodes"]
        assert job["report"]["result"]["macs"] <= job["report"]["baseline"]["macs"]
        assert job["best"]["ratios"], "the best policy has per-layer ratios"
        assert {"model.onnx", "report.json"} <= set(job["links"]["artifacts"])

        eps = c.get(f"/jobs/{created['id']}/episodes").json()["episodes"]
        assert [e["episode"] for e in eps] == list(range(1, SMALL_JOB["episodes"] + 1))
        assert all(0.0 <= e["record"]["accuracy"] <= 1.0 for e in eps)

        r = c.get(f"/jobs/{created['id']}/artifacts/model.onnx")
        assert r.status_code == 200
        sess = ort.InferenceSession(r.content, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) else 2 for d in inp.shape]
        out = sess.run(None, {inp.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)})[0]
        assert out.shape[0] == shape[0] and np.isfinite(out).all()

        report = c.get(f"/jobs/{created['id']}/artifacts/report.json").json()
        assert report["model"] == "demo-cnn"
        assert c.get(f"/jobs/{created['id']}/artifacts/secrets.txt").status_code == 404

        listed = c.get("/jobs").json()
        assert any(j["id"] == created["id"] and j["state"] == "succeeded" for j in listed["jobs"])


def test_the_issue_example_spec_is_accepted_as_it_stands(server):
    spec = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg", "episodes": 20,
            "device": "local", "seed": 0}
    with server.client() as c:
        r = c.post("/jobs", json=spec)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        r = c.post(f"/jobs/{job_id}/cancel")  # do not spend CI time on 20 episodes
        assert r.status_code == 200
        job = wait_for(c, job_id, {"cancelled", "succeeded", "failed"}, timeout=60)
        assert job["state"] == "cancelled"
        assert c.get(f"/jobs/{job_id}/artifacts/model.onnx").status_code == 409  # not served unless succeeded
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_changes_need_the_token(server):
    with server.client(token=None) as anon, server.client(token="wrong-token-0123456789") as wrong:
        for client in (anon, wrong):
            r = client.post("/jobs", json=SMALL_JOB)
            assert r.status_code == 401
            assert "bearer" in r.json()["detail"].lower()
            assert client.post("/devices", json={"spec": "adb:127.0.0.1:5555"}).status_code == 401
            assert client.post("/uploads", files={"file": ("w.pt", b"x")}).status_code == 401
        # Reading needs no token.
        assert anon.get("/jobs").status_code == 200
        assert anon.get("/healthz").json()["status"] == "ok"
        assert anon.get("/docs").status_code == 200
        assert "/jobs" in anon.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"model": "no-such-net"}, "model", "demo-cnn"),
        ({"target": "flops"}, "target", "flops=0.5"),
        ({"target": "flops=0.0001"}, "target", ""),
        ({"device": "toaster"}, "device", "local"),
        ({"device": "adb:10.1.2.3:5555"}, "device", "POST /devices"),
        ({"strategy": "genetic"}, "strategy", "ddpg"),
        ({"episodes": 0}, "episodes", ""),
        ({"colour": "red"}, "colour", ""),
        ({"weights": "0123456789abcdef"}, "weights", "POST /uploads"),
    ],
)
def test_a_bad_spec_gets_422_naming_the_field(server, patch, field, hint):
    with server.client() as c:
        r = c.post("/jobs", json={**SMALL_JOB, **patch})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"]
        assert detail[0]["loc"][-1] == field, detail
        assert hint in detail[0]["msg"] or hint in str(detail)


def test_malformed_json_gets_422(server):
    with server.client() as c:
        r = c.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        r = c.post("/jobs", json={"data": "digits"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"]


def test_uploads_load_weights_only_and_refuse_pickles(server):
    import torch

    buf = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(2, 2)}, buf)
    evil = io.BytesIO()
    torch.save({"conv.weight": torch.zeros(1), "x": os.system}, evil)  # needs unpickling of a function
    with server.client() as c:
        r = c.post("/uploads", files={"file": ("w.pt", buf.getvalue())})
        assert r.status_code == 201, r.text
        assert r.json()["kind"] == "weights" and len(r.json()["sha256"]) == 64
        r = c.post("/uploads", files={"file": ("evil.pt", evil.getvalue())})
        assert r.status_code == 422 and "weights_only" in r.text
        r = c.post("/uploads", files={"file": ("model.exe", b"MZ")})
        assert r.status_code == 422 and ".onnx" in r.text


def test_uploads_are_size_limited(tmp_path):
    srv = ServerProcess(tmp_path / "data", env={"AMC_MAX_UPLOAD_MB": "0.01"}).start()  # 10 kB
    try:
        with srv.client() as c:
            r = c.post("/uploads", files={"file": ("big.onnx", b"\0" * 200_000)})
            assert r.status_code == 413 and "AMC_MAX_UPLOAD_MB" in r.text
            assert not list((tmp_path / "data" / "uploads").iterdir())  # nothing kept
    finally:
        srv.stop()


def test_devices_register_the_phone_emulator_and_report_its_health(server, tmp_path):
    from device_agent.phone_sim.server import PhoneSimulator

    sim = PhoneSimulator(0, tmp_path / "phone", serial="SIM-SRV", model_name="Pixel 7").start()
    try:
        with server.client() as c:
            listed = c.get("/devices").json()
            assert listed["devices"][0]["spec"] == "local" and listed["devices"][0]["health"] == "ok"
            r = c.post("/devices", json={"spec": sim.address, "name": "emulated Pixel 7"})
            assert r.status_code == 201, r.text
            dev = r.json()
            assert dev["spec"] == f"adb:{sim.address}" and dev["source"] == "registered"
            assert dev["health"] == "ok", dev
            assert dev["info"].get("model") == "Pixel 7"
            specs = [d["spec"] for d in c.get("/devices").json()["devices"]]
            assert f"adb:{sim.address}" in specs
            # A registered device is a valid job device; an unregistered one is refused, naming the field.
            assert c.post("/jobs", json={**SMALL_JOB, "device": "adb:127.0.0.1:1"}).json()["detail"][0]["loc"] == ["body", "device"]
            r = c.post("/devices", json={"spec": "adb:SERIAL123"})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "spec"
    finally:
        sim.stop()


def test_generated_token_is_private_and_non_loopback_needs_a_token(tmp_path):
    settings = Settings(data_dir=tmp_path / "d", api_token=None)
    token, created = ensure_token(settings)
    assert created and len(token) >= 32
    assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600
    assert ensure_token(settings) == (token, False)  # generated once, then reused
    check_bind("127.0.0.1", settings)
    with pytest.raises(InsecureBindError, match="AMC_API_TOKEN"):
        check_bind("0.0.0.0", settings)
    check_bind("0.0.0.0", Settings(data_dir=tmp_path / "d", api_token=TOKEN))
