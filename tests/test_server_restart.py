"""Restart safety: SIGKILL the server mid-job, start it again on the same data dir; the job resumes
from its checkpoint and finishes with every recorded episode kept and episode numbers contiguous."""

from __future__ import annotations

import pytest
from test_server_harness import SMALL_JOB, TOKEN, ServerProcess, wait_for, wait_for_episodes


def test_killed_server_resumes_the_job_without_losing_episodes(tmp_path, database_url):
    """On SQLite and on PostgreSQL (the server and its job process write to it both)."""
    data = tmp_path / "data"
    env = {"AMC_DATABASE_URL": database_url} if database_url else {}
    # demo-cnn episodes take well under 0.1 s: enough of them that the kill lands mid-search.
    spec = {**SMALL_JOB, "episodes": 40, "seed": 1}
    first = ServerProcess(data, env=env).start()
    try:
        with first.client() as c:
            job_id = c.post("/jobs", json=spec).json()["id"]
            job = wait_for_episodes(c, job_id, 2)
            assert job["state"] == "running", job
            before = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
    finally:
        first.kill()
    assert before and before == list(range(1, len(before) + 1))

    second = ServerProcess(data, port=first.port, env=env).start()
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


def test_episodes_only_in_the_checkpoint_are_filled_in_on_resume(tmp_path):
    """The server died after the search checkpointed episodes 2-3 but before it recorded them."""
    from compressor.config import SearchConfig
    from compressor.errors import SearchCancelled
    from compressor.search import run_search
    from server.core.config import Settings
    from server.store import JobState, Store

    settings = Settings(data_dir=tmp_path / "data", api_token=TOKEN)
    settings.prepare_dirs()
    spec = {**SMALL_JOB, "episodes": 6}
    config = SearchConfig(**spec)
    store = Store(settings.db_url)
    job = store.create_job(spec=spec, config=config.to_dict())
    store.claim_next()
    folder = settings.jobs_dir / job.id
    polls = iter(range(100))
    with pytest.raises(SearchCancelled):
        run_search(config, folder, on_event=lambda ev: ev.kind == "episode" and ev.episode == 1 and store.add_episode(
            job.id, 1, ev.record), should_stop=lambda: next(polls) >= 3)
    assert store.episode_numbers(job.id) == [1]
    assert store.get_job(job.id).job_state is JobState.RUNNING  # as a killed server leaves it
    store.close()

    server = ServerProcess(settings.data_dir).start()
    try:
        with server.client() as c:
            done = wait_for(c, job.id, {"succeeded", "failed", "cancelled"}, timeout=120)
            assert done["state"] == "succeeded", done.get("error")
            numbers = [e["episode"] for e in c.get(f"/jobs/{job.id}/episodes").json()["episodes"]]
            assert numbers == list(range(1, 7))
            assert "2 episode(s) filled" in c.get(f"/jobs/{job.id}/log").text
    finally:
        server.stop()


@pytest.mark.slow  # ~25 s on 2 busy cores; the SIGKILL test above covers the harder case
def test_graceful_stop_pauses_a_running_job_and_the_next_start_resumes_it(tmp_path):
    data = tmp_path / "data"
    spec = {**SMALL_JOB, "episodes": 40, "seed": 2}
    first = ServerProcess(data).start()
    try:
        with first.client() as c:
            job_id = c.post("/jobs", json=spec).json()["id"]
            assert wait_for_episodes(c, job_id, 2)["state"] == "running"
    finally:
        first.stop()  # SIGTERM: uvicorn's shutdown runs the lifespan's exit
    second = ServerProcess(data, port=first.port).start()
    try:
        with second.client() as c:
            job = wait_for(c, job_id, {"succeeded", "failed", "cancelled"}, timeout=150)
            assert job["state"] == "succeeded" and job["attempts"] == 2, job
            numbers = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
            assert numbers == list(range(1, 41))
    finally:
        second.stop()
