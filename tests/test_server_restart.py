"""Restart safety: SIGKILL the server mid-job, start it again on the same data dir; the job resumes
from its checkpoint and finishes with every recorded episode kept and episode numbers contiguous."""

from __future__ import annotations

from test_server_harness import SMALL_JOB, ServerProcess, wait_for, wait_for_episodes


def test_killed_server_resumes_the_job_without_losing_episodes(tmp_path):
    data = tmp_path / "data"
    # demo-cnn episodes take well under 0.1 s: enough of them that the kill lands mid-search.
    spec = {**SMALL_JOB, "episodes": 40, "seed": 1}
    first = ServerProcess(data).start()
    try:
        with first.client() as c:
            job_id = c.post("/jobs", json=spec).json()["id"]
            job = wait_for_episodes(c, job_id, 2)
            assert job["state"] == "running", job
            before = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
    finally:
        first.kill()
    assert before and before == list(range(1, len(before) + 1))

    second = ServerProcess(data, port=first.port).start()
    try:
        with second.client() as c:
            job = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=150)
            assert job["state"] == "succeeded", (job.get("error"), c.get(f"/jobs/{job_id}/log").text[-3000:])
            assert job["attempts"] == 2  # it ran again, resuming
            numbers = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
            assert numbers == list(range(1, spec["episodes"] + 1))
            assert set(before) <= set(numbers)
            assert "resum" in c.get(f"/jobs/{job_id}/log").text
            assert c.get(f"/jobs/{job_id}/artifacts/model.onnx").status_code == 200
    finally:
        second.stop()
