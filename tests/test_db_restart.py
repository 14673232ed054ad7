"""The database server restarted under a running job (issue 23): a real PostgreSQL server of the test's
own is stopped while a job's search runs, and started again. The job waits for it (its search pauses),
then goes on: every episode is recorded once, none is lost, the worker is not restarted, and the job's
events say what happened. While the database is down the API answers 503 with the reason and a
Retry-After, not 500, and the server itself stays up."""

from __future__ import annotations

import time

import httpx
import pytest
from test_server_harness import SMALL_JOB, ServerProcess, wait_for, wait_for_episodes


def test_a_job_waits_for_a_restarted_database_and_loses_no_episode(tmp_path, private_pg_server):
    postgres = private_pg_server
    url = postgres.create_database()
    server = ServerProcess(tmp_path / "data", env={"AMC_DATABASE_URL": url, "AMC_MAX_WORKERS": "1"}).start()
    try:
        with server.client() as c:
            job = {**SMALL_JOB, "episodes": 40}
            job_id = c.post("/jobs", json=job).json()["id"]
            before = wait_for_episodes(c, job_id, 3, timeout=120)
            assert before["state"] == "running"

            postgres.stop_server()
            down_at = time.monotonic()
            answers = []
            while time.monotonic() - down_at < 12:  # bounded: the outage lasts this long
                try:
                    answers.append(c.get(f"/jobs/{job_id}", timeout=30))
                except httpx.HTTPError as exc:  # the server itself must keep answering
                    pytest.fail(f"the server stopped answering while its database was down: {exc!r}")
                time.sleep(1)
            postgres.start_server()

            assert answers and all(r.status_code == 503 for r in answers), [r.status_code for r in answers]
            detail = answers[-1].json()["detail"]
            assert "unreachable" in detail and "127.0.0.1" in detail and postgres.password not in detail, detail
            assert answers[-1].headers["Retry-After"].isdigit()

            done = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=300)
            assert done["state"] == "succeeded", (done.get("error"), server.log()[-3000:])
            numbers = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
            assert numbers == list(range(1, job["episodes"] + 1))  # each once, none lost
            assert done["episodes_done"] == job["episodes"]
            kinds = [e["kind"] for e in done["events"]]
            assert "database-wait" in kinds and "worker-restart" not in kinds, done["events"]
            waited = next(e for e in done["events"] if e["kind"] == "database-wait")
            assert "unreachable for" in waited["message"] and "nothing lost" in waited["message"]
            log = c.get(f"/jobs/{job_id}/log").text
            assert "is unreachable during" in log and "is back after" in log
    finally:
        server.stop()
