"""The jobs API in this process (no server, no worker): a job spec is validated fully before it is
queued (422 naming the field), unknown jobs are 404, a finished job refuses changes (409), artifacts
are served only once a job has succeeded."""

from __future__ import annotations

import io

import pytest
from test_server_harness import SMALL_JOB, in_process_app

from server.store import JobState


@pytest.fixture
def api(tmp_path, database_url):
    """The app on SQLite and, again, on PostgreSQL."""
    with in_process_app(tmp_path / "data", database_url=database_url) as app:
        yield app


def test_the_issue_example_spec_is_accepted_as_it_stands(api):
    spec = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg", "episodes": 20,
            "device": "local", "seed": 0}
    c = api.client
    r = c.post("/jobs", json=spec)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["state"] == "queued" and created["episodes_total"] == 20
    assert r.headers["location"] == f"/jobs/{created['id']}"
    assert created["links"]["artifacts"] == {}  # nothing is served before the job has succeeded
    assert created["spec"]["model"] == "demo-cnn"
    assert api.store.get_job(created["id"]).config["strategy"] == "ddpg"
    assert [j["id"] for j in c.get("/jobs").json()["jobs"]] == [created["id"]]

    r = c.post(f"/jobs/{created['id']}/cancel")  # a queued job is cancelled at once
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = c.get(f"/jobs/{created['id']}/artifacts/model.onnx")
    assert r.status_code == 409 and "succeeded" in r.json()["detail"]  # not served unless succeeded
    r = c.post(f"/jobs/{created['id']}/cancel")
    assert r.status_code == 409 and "cannot become cancelled" in r.json()["detail"]


@pytest.mark.parametrize(
    ("patch", "field", "hint"),
    [
        ({"model": "no-such-net"}, "model", "demo-cnn"),
        ({"target": "flops"}, "target", "flops=0.5"),
        ({"target": "flops=0.0001"}, "target", "smallest reachable target is flops="),
        ({"device": "toaster"}, "device", "local"),
        ({"device": "adb:10.1.2.3:5555"}, "device", "POST /devices"),
        ({"strategy": "genetic"}, "strategy", "'ddpg'"),
        ({"episodes": 0}, "episodes", "greater than or equal to 1"),
        ({"colour": "red"}, "colour", "not permitted"),
        ({"weights": "0123456789abcdef"}, "weights", "POST /uploads"),
        ({"a_min": 0}, "a_min", "greater than 0"),
        ({"finetune_epochs": 1001}, "finetune_epochs", "less than or equal to 1000"),
        ({"finetune_method": "magic"}, "finetune_method", "'distill'"),
        ({"prune_blocks": True, "granularity": "weight"}, "prune_blocks", "granularity 'channel'"),
        ({"data": "cifar10:/no/such/file.npz"}, "data", "AMC_DATA_ROOTS"),  # outside: existence not told
        ({"data": "cifar10:no-such-file.npz"}, "data", "does not exist"),  # inside the data roots: told
    ],
)
def test_a_bad_spec_gets_422_naming_the_field(api, patch, field, hint):
    r = api.client.post("/jobs", json={**SMALL_JOB, **patch})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert detail[0]["loc"] == ["body", field], detail
    assert hint in detail[0]["msg"], detail
    assert api.store.count_jobs() == {}  # nothing queued


def test_a_budget_error_says_its_type(api):
    r = api.client.post("/jobs", json={**SMALL_JOB, "target": "flops=0.0001"})
    assert r.json()["detail"][0]["type"] == "BudgetInfeasible"


def test_malformed_json_gets_422(api):
    c = api.client
    r = c.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = c.post("/jobs", json={"data": "digits"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "model"]


def test_weights_that_do_not_fit_the_model_are_refused_at_submit(api):
    import torch

    buf = io.BytesIO()
    torch.save({"not.a.layer.of.demo_cnn": torch.zeros(3, 3)}, buf)  # valid weights file, wrong model
    up = api.client.post("/uploads", files={"file": ("wrong.pt", buf.getvalue())}).json()
    r = api.client.post("/jobs", json={**SMALL_JOB, "weights": up["id"]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "weights"], r.text
    r = api.client.post("/jobs", json={**SMALL_JOB, "model": f"upload:{up['id']}"})
    assert r.status_code == 422 and "uploaded weights file" in r.json()["detail"][0]["msg"], r.text


@pytest.mark.parametrize("path", ["/jobs/{id}", "/jobs/{id}/episodes", "/jobs/{id}/log",
                                  "/jobs/{id}/artifacts/model.onnx"])
def test_an_unknown_job_is_404(api, path):
    r = api.client.get(path.format(id="no-such-job"))
    assert r.status_code == 404
    assert r.json() == {"detail": "no job with id 'no-such-job'; list jobs with GET /jobs"}


def test_cancelling_an_unknown_job_is_404(api):
    r = api.client.post("/jobs/no-such-job/cancel")
    assert r.status_code == 404 and "GET /jobs" in r.json()["detail"]


def _succeeded_job(api, files: dict[str, bytes]) -> str:
    job = api.service.submit(dict(SMALL_JOB))
    api.store.claim_next()
    api.store.finish(job.id, JobState.SUCCEEDED, report={"model": "demo-cnn"}, message="finished")
    folder = api.settings.jobs_dir / job.id
    folder.mkdir(parents=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return job.id


def test_a_succeeded_job_serves_the_artifacts_it_has_and_only_those(api):
    c = api.client
    job_id = _succeeded_job(api, {"report.json": b'{"model": "demo-cnn"}', "notes.txt": b"x"})
    job = c.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["report"] == {"model": "demo-cnn"}
    assert job["links"]["artifacts"] == {"report.json": f"/jobs/{job_id}/artifacts/report.json"}

    r = c.get(f"/jobs/{job_id}/artifacts/report.json")
    assert r.status_code == 200 and r.json() == {"model": "demo-cnn"}
    assert r.headers["content-type"].startswith("application/json")
    r = c.get(f"/jobs/{job_id}/artifacts/model.onnx")  # a known artifact this job does not have
    assert r.status_code == 404 and "model.onnx" in r.json()["detail"]
    for name in ("notes.txt", "secrets.txt", "..%2Fapi-token"):  # only the artifact names are served
        assert c.get(f"/jobs/{job_id}/artifacts/{name}").status_code == 404, name
    assert c.post(f"/jobs/{job_id}/cancel").status_code == 409


def test_episodes_and_log_of_a_job_that_has_not_run(api):
    job_id = api.client.post("/jobs", json=SMALL_JOB).json()["id"]
    r = api.client.get(f"/jobs/{job_id}/episodes")
    assert r.status_code == 200 and r.json() == {"job_id": job_id, "state": "queued", "episodes": []}
    r = api.client.get(f"/jobs/{job_id}/log")
    assert r.status_code == 200 and r.text == ""


def test_list_filters_and_bounds(api):
    c = api.client
    queued = c.post("/jobs", json=SMALL_JOB).json()["id"]
    cancelled = c.post("/jobs", json={**SMALL_JOB, "seed": 1}).json()["id"]
    c.post(f"/jobs/{cancelled}/cancel")
    listed = c.get("/jobs").json()
    assert [j["id"] for j in listed["jobs"]] == [cancelled, queued]  # newest first
    assert listed["counts"] == {"queued": 1, "cancelled": 1}
    assert [j["id"] for j in c.get("/jobs", params={"state": "queued"}).json()["jobs"]] == [queued]
    assert c.get("/jobs", params={"state": "lost"}).status_code == 422
    r = c.get("/jobs", params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


def test_a_status_poll_takes_no_thread_hop_and_a_submit_one(api, monkeypatch):
    # Under load each hop through the thread pool cost more than the request's own work: the status
    # poll runs on the event loop (SQLite reads never wait for a writer), a submit validates in one hop.
    # PostgreSQL is reached over a connection that can stall: there a poll reads in the thread pool.
    import anyio.to_thread

    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    created = api.client.post("/jobs", json=SMALL_JOB)
    assert created.status_code == 201 and created.headers["location"] == f"/jobs/{created.json()['id']}"
    assert len(hops) == 1, hops
    hops.clear()
    polled = api.client.get(f"/jobs/{created.json()['id']}")
    assert polled.status_code == 200 and polled.json()["id"] == created.json()["id"]
    assert polled.json()["state"] == "queued" and polled.json()["restarts"] == 0
    per_read = 0 if api.store.local_reads else 1
    assert len(hops) == per_read, hops
    assert api.client.get(f"/jobs/{'0' * 32}").status_code == 404 and len(hops) == 2 * per_read


def test_a_full_queue_refuses_submits_with_retry_after_until_a_job_leaves_it(tmp_path, database_url):
    spec = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "episodes": 2, "device": "local"}
    with in_process_app(tmp_path / "data", max_queued_jobs=2, database_url=database_url) as api:
        c = api.client
        first, second = (c.post("/jobs", json={**spec, "seed": s}) for s in (1, 2))
        assert first.status_code == second.status_code == 201
        r = c.post("/jobs", json={**spec, "seed": 3})
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert "2 jobs are already queued" in r.json()["detail"] and "AMC_MAX_QUEUED_JOBS=2" in r.json()["detail"]
        assert len(c.get("/jobs").json()["jobs"]) == 2  # the refused submit left nothing behind

        assert c.post(f"/jobs/{first.json()['id']}/cancel").status_code == 200  # one leaves the queue
        third = c.post("/jobs", json={**spec, "seed": 3})
        assert third.status_code == 201
        # resuming the cancelled job would queue a third one: refused the same way, the job stays cancelled
        r = c.post(f"/jobs/{first.json()['id']}/resume")
        assert r.status_code == 503 and "retry-after" in r.headers
        assert api.store.get_job(first.json()["id"]).state == JobState.CANCELLED.value
        # a job that is running no longer counts against the queue
        api.store.claim_next()
        assert c.post(f"/jobs/{first.json()['id']}/resume").status_code == 200


def test_a_server_freezes_its_heap_after_a_new_validation_only(api, monkeypatch):
    """What a served app does (its lifespan sets freeze_heap): the objects a first validation leaves
    (torch, the model zoo) are frozen out of the collector's full passes; a repeat validation is cached
    and freezes nothing more."""
    import gc

    from server import jobs

    settled: list[int] = []

    def counting() -> None:
        jobs_settle()
        settled.append(gc.get_freeze_count())

    jobs_settle = jobs.settle_heap
    monkeypatch.setattr(jobs, "settle_heap", counting)
    spec = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "episodes": 2, "device": "local"}
    api.service.freeze_heap = True
    try:
        assert api.client.post("/jobs", json={**spec, "seed": 1}).status_code == 201
        assert len(settled) == 1 and settled[0] > 10_000  # the process's objects, torch's among them
        assert api.client.post("/jobs", json={**spec, "seed": 2}).status_code == 201  # same config: cached
        assert len(settled) == 1
        assert api.client.post("/jobs", json={**spec, "target": "flops=0.4"}).status_code == 201  # a new one
        assert len(settled) == 2
    finally:
        gc.unfreeze()  # this is a test process, not a server
