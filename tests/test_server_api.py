"""The REST API against a real uvicorn process on loopback: submit a small digits job with the
token, follow it through a real worker process to `succeeded`, run its ONNX model in ONNX Runtime.

Everything that needs no server or worker (validation, auth, 404/409, uploads, devices, the error
handlers) is checked in this process, faster, by tests/test_api_*.py."""

from __future__ import annotations

import numpy as np
import pytest
from test_server_harness import SMALL_JOB, ServerProcess, wait_for


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
