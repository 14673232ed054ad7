"""Workers: the concurrency limit queues jobs, cancel stops a running job within seconds, a failed
job keeps its log and says why; and `amc serve` itself (token generation, loopback rule)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import httpx
import pytest
from test_server_harness import (
    REPO,
    SMALL_JOB,
    ServerProcess,
    database_env,
    free_port,
    wait_for,
    wait_for_episodes,
)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request, tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("amc") / "data",
                        env={"AMC_MAX_WORKERS": "1", **database_env(request)}).start()
    yield srv
    srv.stop()


def test_queue_limit_and_cancel_within_seconds(server):
    long_job = {**SMALL_JOB, "episodes": 5000}  # minutes of work unless cancelled
    with server.client() as c:
        first = c.post("/jobs", json=long_job).json()["id"]
        second = c.post("/jobs", json={**long_job, "seed": 1}).json()["id"]
        job = wait_for_episodes(c, first, 1, timeout=90)
        assert job["state"] == "running"
        assert c.get(f"/jobs/{second}").json()["state"] == "queued"  # one worker: it waits its turn
        assert server.client().get("/healthz").json()["running"] == [first]

        r = c.post(f"/jobs/{second}/cancel")  # a queued job is cancelled at once
        assert r.status_code == 200 and r.json()["state"] == "cancelled"

        t = time.monotonic()
        assert c.post(f"/jobs/{first}/cancel").status_code == 200
        job = wait_for(c, first, {"cancelled", "succeeded", "failed"}, timeout=30)
        took = time.monotonic() - t
        assert job["state"] == "cancelled" and took < 10, (job, took)
        assert 1 <= job["episodes_done"] < 5000
        numbers = [e["episode"] for e in c.get(f"/jobs/{first}/episodes").json()["episodes"]]
        assert numbers == list(range(1, len(numbers) + 1))
        assert c.get(f"/jobs/{first}/artifacts/report.json").status_code == 409
        deadline = time.monotonic() + 10  # the process exits right after recording its end
        while c.get("/healthz").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/healthz").json()["running"] == []


def test_failed_job_keeps_its_log_and_says_why(server):
    import numpy as np

    # (Weights that do not fit the model are refused at submit: tests/test_api_jobs.py.)
    datasets = server.data_dir / "datasets"  # the default AMC_DATA_ROOTS
    datasets.mkdir(exist_ok=True)
    bad_data = datasets / "bad.npz"
    np.savez(bad_data, x=np.zeros((4, 5), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))  # exists, wrong shape
    with server.client() as c:
        r = c.post("/jobs", json={**SMALL_JOB, "data": f"cifar10:{bad_data}"})
        assert r.status_code == 201, r.text  # only loading the file shows what is wrong with it
        job = wait_for(c, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=90)
        assert job["state"] == "failed"
        assert job["error"].startswith("DataError"), job["error"]  # what went wrong, by type and message
        log = c.get(job["links"]["log"]).text
        assert "Traceback" in log and "failed" in log
        assert c.get(f"/jobs/{job['id']}/artifacts/model.onnx").status_code == 409


def test_amc_serve_generates_a_private_token_once(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "AMC_API_TOKEN"}
    env |= {"PYTHONPATH": str(REPO), "AMC_CONFIG_DIR": str(tmp_path / "config")}
    data = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--port", str(port), "--data-dir", str(data)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        token_file = data / "api-token"
        token = token_file.read_text().strip()
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"http://127.0.0.1:{port}/jobs", json={"data": "digits"}).status_code == 401
        assert httpx.post(f"http://127.0.0.1:{port}/jobs", json={"data": "digits"}, headers=auth).status_code == 422
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert token in out  # printed once, on the first start

    refused = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--host", "0.0.0.0", "--port", str(port),
                              "--data-dir", str(data)], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "AMC_API_TOKEN" in refused.stdout + refused.stderr


def test_unreachable_latency_budget_fails_the_job_naming_the_smallest_target(server):
    # The budget needs the device's latency table, which the job completes; it then refuses the
    # budget with the same message `amc compress` gives.
    with server.client() as c:
        r = c.post("/jobs", json={**SMALL_JOB, "target": "latency-ms=0.000001"})
        assert r.status_code == 201, r.text
        job = wait_for(c, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=120)
        assert job["state"] == "failed"
        assert job["error"].startswith("BudgetInfeasible") and "latency-ms=" in job["error"], job["error"]
        assert job["episodes_done"] == 0


def test_a_second_server_on_the_same_data_dir_refuses_to_start(server):
    with pytest.raises(RuntimeError, match="in use by a running server"):
        ServerProcess(server.data_dir).start(timeout=30)
    assert server.client().get("/healthz").status_code == 200  # the first one is unaffected
