"""The REST API against a real uvicorn process on loopback: submit a small digits job with the
token, follow it through a real worker process to `succeeded`, run its ONNX model in ONNX Runtime;
everything the server and its worker wrote is private to its user. The request guard on the wire:
an unauthenticated chunked upload is answered 401 before its body is sent, a foreign Host is refused,
and registered devices live in the server's data dir.

Everything that needs no server or worker (validation, auth, 404/409, uploads, devices, the error
handlers) is checked in this process, faster, by tests/test_api_*.py."""

from __future__ import annotations

import os
import socket
import stat
import time

import numpy as np
import pytest
from test_server_harness import SMALL_JOB, ServerProcess, database_env, wait_for


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("amc") / "data", env=database_env(request)).start()
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
        # `best` is the episode with the highest reward, as the worker recorded it.
        best = max(eps, key=lambda e: e["record"]["reward"])
        assert job["best"]["episode"] == best["episode"]
        assert job["best"]["reward"] == best["record"]["reward"]
        assert c.get(f"/jobs/{created['id']}/episodes", params={"after": 2}).json()["episodes"] == eps[2:]

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
        assert f"job {created['id']} succeeded" in c.get(job["links"]["log"]).text  # the worker's own log

        listed = c.get("/jobs").json()
        assert any(j["id"] == created["id"] and j["state"] == "succeeded" for j in listed["jobs"])
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["jobs"]["succeeded"] >= 1

        # Everything the server and its worker wrote is its user's alone: every folder is 0700, so no other
        # user reaches any file; the files the server and the worker create themselves are 0600 (umask 077).
        # (The search's own artifacts are written by compressor.fileio.atomic_write, which sets 0644
        # explicitly: private through their 0700 folder, not by their own mode.)
        data = server.data_dir
        folders = [data, *(p for p in data.rglob("*") if p.is_dir() and not p.is_symlink())]
        assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in folders), \
            {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in folders}
        job_dir = data / "jobs" / created["id"]
        on_sqlite = "AMC_DATABASE_URL" not in server.env
        for path in ([data / "amc.db"] if on_sqlite else []) + [job_dir / "job.log", job_dir / "model.onnx"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def _raw_request(server, head: str, first_chunk: bytes) -> tuple[str, float]:
    """Send a request's head and the first chunk of its body, then read the answer without sending the
    rest; returns (the status line and headers, seconds until they came)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head.encode() + b"%x\r\n" % len(first_chunk) + first_chunk + b"\r\n")
        start = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        return answer.decode("latin-1"), time.monotonic() - start


def test_an_unauthenticated_chunked_upload_is_refused_before_its_body_is_sent(server):
    # Before: a chunked 60 MB upload without a token was spooled to disk, then 401. Now the answer comes
    # after the first megabyte, and the server has written nothing.
    head = (f"POST /uploads HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: multipart/form-data; boundary=x\r\nTransfer-Encoding: chunked\r\n\r\n")
    answer, seconds = _raw_request(server, head, b"--x\r\n" + b"\0" * (1 << 20))
    assert answer.startswith("HTTP/1.1 401"), answer
    assert "www-authenticate: bearer" in answer.lower()
    assert not [p for p in (server.data_dir / "uploads").iterdir()]


def test_a_rebinding_page_cannot_reach_the_server(server):
    answer, _ = _raw_request(server, "GET /jobs HTTP/1.1\r\nHost: attacker.example\r\n"
                                     "Authorization: Bearer x\r\nTransfer-Encoding: chunked\r\n\r\n", b"")
    assert answer.startswith("HTTP/1.1 400"), answer


def test_registered_devices_live_in_the_servers_data_dir(server):
    with server.client() as c:
        r = c.post("/devices", json={"spec": "127.0.0.1:9", "name": "nothing listens here"})
        assert r.status_code == 201, r.text
        assert r.json()["health"] == "unhealthy"
    assert "adb:127.0.0.1:9" in (server.data_dir / "devices.json").read_text()
    assert stat.S_IMODE(os.stat(server.data_dir / "devices.json").st_mode) == 0o600
    config = server.data_dir.parent / "config"  # AMC_CONFIG_DIR: the user's folder holds no server's devices
    assert not (config / "devices.json").exists()
