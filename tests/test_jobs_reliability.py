"""Jobs are never lost: a locked database is retried, a job's end is recorded before its worker's
handle is dropped, a worker that dies resumes from its checkpoint (a bounded number of times), a
failed or cancelled job can be resumed, a full disk fails one job and nothing else, old jobs are
removed (AMC_KEEP_DAYS), a job's folder has a size limit, and the database file is private."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import signal
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from test_server_harness import SMALL_JOB, TOKEN, in_process_app

from compressor.config import SearchConfig
from server.core.config import Settings
from server.jobs import JobService, _Running
from server.store import (
    MAX_EVENTS,
    DatabaseBusy,
    Episode,
    InvalidTransition,
    Job,
    JobEventKind,
    JobState,
    QueueFull,
    Store,
    utcnow,
)
from server.worker import run_job_process

FINISHED = {"succeeded", "failed", "cancelled"}


# ------------------------------------------------------------------------------------------ helpers
@contextmanager
def locked_statements(monkeypatch: pytest.MonkeyPatch, *parts: str, times: int) -> Iterator[list[str]]:
    """The next `times` SQL statements that contain each of `parts` (the first one at the start) fail
    as SQLite fails them when another connection holds the write lock ("database is locked"); yields
    the statements that failed. Nested uses each inject their own."""
    failed: list[str] = []
    previous = SQLiteDialect_pysqlite.do_execute

    def do_execute(self: Any, cursor: Any, statement: str, parameters: Any, context: Any = None) -> None:
        sql = " ".join(statement.split())
        if sql.startswith(parts[0]) and all(p in sql for p in parts) and len(failed) < times:
            failed.append(sql)
            raise sqlite3.OperationalError("database is locked")
        previous(self, cursor, statement, parameters, context)

    with monkeypatch.context() as m:
        m.setattr(SQLiteDialect_pysqlite, "do_execute", do_execute)
        yield failed


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", api_token=TOKEN, **values)
    settings.prepare_dirs()
    return settings


def queue_job(store: Store, **spec: Any) -> Job:
    spec = {**SMALL_JOB, **spec}
    return store.create_job(spec=spec, config=SearchConfig(**spec).to_dict())


def run_in_this_process(settings: Settings, store: Store, *, max_job_bytes: int | None = None) -> Job:
    """Claim the next queued job and run its worker here (not spawned), as the service would."""
    job = store.claim_next()
    assert job is not None
    folder = settings.jobs_dir / job.id
    folder.mkdir(parents=True, exist_ok=True)
    read, write = mp.Pipe(duplex=False)
    try:
        run_job_process(job_id=job.id, database_url=store.url, folder=str(folder), config=job.config,
                        resume=job.resume, lifeline=read, search_module=settings.search_module, threads=1,
                        max_job_bytes=max_job_bytes)
    finally:
        write.close()
    return store.get_job(job.id)


def wait_state(store: Store, job_id: str, states: set[str], timeout: float = 120.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {states} in {timeout} s; it is {job.state}: {job.message}")


def wait_episodes(store: Store, job_id: str, n: int, timeout: float = 120.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if job.episodes_done >= n or job.job_state.finished:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} recorded fewer than {n} episodes in {timeout} s")


# ---------------------------------------------------------------------------------------- database
def test_database_file_and_its_wal_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        db = tmp_path / "amc.db"
        store = Store(f"sqlite:///{db}")
        queue_job(store)
        for path in (db, db.with_name("amc.db-wal"), db.with_name("amc.db-shm")):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        store.close()
        os.chmod(db, 0o644)  # made by an older version
        Store(f"sqlite:///{db}").close()
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def _hold_write_lock(db: Path, seconds: float, held: threading.Event) -> None:
    conn = sqlite3.connect(db, timeout=0)
    conn.execute("BEGIN EXCLUSIVE")
    held.set()
    time.sleep(seconds)
    conn.commit()
    conn.close()


def _lock_for(db: Path, seconds: float) -> threading.Thread:
    """Another connection holding the database's write lock for `seconds` (returns once it holds it)."""
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(db, seconds, held))
    holder.start()
    assert held.wait(5), "the lock holder never got the lock"
    return holder


def test_a_write_that_finds_the_database_locked_waits_and_succeeds(tmp_path):
    db = tmp_path / "amc.db"
    store = Store(f"sqlite:///{db}", busy_timeout_s=0.05, lock_retries=6, lock_backoff_s=0.05)
    job = queue_job(store)
    holder = _lock_for(db, 0.5)
    t = time.monotonic()
    assert store.add_episode(job.id, 1, {"episode": 1, "reward": -0.1}) is True
    holder.join()
    assert time.monotonic() - t >= 0.3  # it waited for the lock rather than failing
    assert store.episode_numbers(job.id) == [1]
    store.close()


def test_a_database_locked_for_good_gives_up_after_bounded_retries_and_says_what_to_do(tmp_path):
    db = tmp_path / "amc.db"
    store = Store(f"sqlite:///{db}", busy_timeout_s=0.05, lock_retries=2, lock_backoff_s=0.05)
    job = queue_job(store)
    holder = _lock_for(db, 3.0)
    t = time.monotonic()
    with pytest.raises(DatabaseBusy, match=r"stayed locked through 3 attempts.*resume"):
        store.set_phase(job.id, "search", "x")
    assert time.monotonic() - t < 2.5  # bounded
    holder.join()
    store.set_phase(job.id, "search", "after the lock")  # and the store works afterwards
    assert store.get_job(job.id).message == "after the lock"
    store.close()


def test_concurrent_submits_are_each_stored_once_and_the_queue_limit_holds_exactly(tmp_path):
    """Group commit: many threads submit at once; every job they were given is in the database once,
    and with a queue limit exactly that many are accepted, the rest refused with QueueFull."""
    store = Store(f"sqlite:///{tmp_path / 'amc.db'}")
    results: list[Any] = []
    start = threading.Barrier(16)

    def submit(k: int) -> None:
        start.wait()
        for i in range(25):
            try:
                results.append(store.create_job(spec={"k": k, "i": i}, config={"episodes": 1}, max_queued=300))
            except QueueFull as exc:
                results.append(exc)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    accepted = [r for r in results if isinstance(r, Job)]
    refused = [r for r in results if isinstance(r, QueueFull)]
    assert len(results) == 400 and len(accepted) == 300 and len(refused) == 100
    assert {r.limit for r in refused} == {300} and all(r.queued == 300 for r in refused)
    assert store.job_ids() == {j.id for j in accepted}  # each stored, nothing refused stored
    assert len({(j.spec["k"], j.spec["i"]) for j in accepted}) == 300  # no submit got another's job
    assert store.count_jobs() == {"queued": 300}
    assert all(store.get_job(j.id).episodes_total == 1 and j.created_at is not None for j in accepted[:5])
    store.close()


def test_a_group_commit_that_fails_fails_every_submit_in_it(tmp_path, monkeypatch):
    """The thread that commits a batch of other threads' jobs hands its error to each of them; nothing
    of the batch is stored, and the store takes submits again afterwards."""
    store = Store(f"sqlite:///{tmp_path / 'amc.db'}", busy_timeout_s=0.05, lock_retries=0)
    holder = _lock_for(tmp_path / "amc.db", 1.0)
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            store.create_job(spec={}, config={"episodes": 1})
        except DatabaseBusy as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    holder.join()
    assert len(errors) == 4 and store.job_ids() == set()
    assert store.create_job(spec={}, config={"episodes": 1}).id in store.job_ids()
    store.close()


def test_one_locked_database_during_a_search_does_not_fail_it(tmp_path, monkeypatch):
    settings = settings_for(tmp_path)
    store = Store(settings.db_url)
    job = queue_job(store, episodes=6)
    # The second episode's insert and the final state's update each find the database locked once.
    with locked_statements(monkeypatch, "INSERT INTO episodes", times=1) as ep_failed, \
            locked_statements(monkeypatch, "UPDATE jobs SET state=", "finished_at=", times=1) as end_failed:
        done = run_in_this_process(settings, store)
    assert ep_failed and end_failed, "the injected lock never hit"
    assert done.job_state is JobState.SUCCEEDED, done.error
    assert store.episode_numbers(job.id) == [1, 2, 3, 4, 5, 6]
    store.close()


# ------------------------------------------------------------------------------- reaper and restarts
def test_the_reaper_keeps_a_dead_workers_job_until_its_end_is_recorded(tmp_path, monkeypatch):
    settings = settings_for(tmp_path, max_worker_restarts=1)
    store = Store(settings.db_url, lock_retries=1, lock_backoff_s=0.01)
    service = JobService(store=store, settings=settings)
    job = queue_job(store)
    assert store.claim_next() is not None
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=os._exit, args=(1,))  # a worker that dies without recording anything
    proc.start()
    proc.join(60)
    read, write = ctx.Pipe(duplex=False)
    read.close()
    service._running[job.id] = _Running(job.id, proc, write)

    with locked_statements(monkeypatch, "UPDATE jobs", times=10):  # locked through every retry
        service._reap()
    assert job.id in service.running_ids()  # not dropped: nobody would settle it again
    assert store.get_job(job.id).job_state is JobState.RUNNING

    service._reap()  # the database answers again
    assert service.running_ids() == []
    settled = store.get_job(job.id)
    assert settled.job_state is JobState.QUEUED and settled.resume and settled.restarts == 1
    assert [e["kind"] for e in settled.events or []] == ["worker-restart"]
    assert "exited with code 1" in settled.events[0]["message"]
    store.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A started job service (spawned workers, the real search) on its own data dir."""
    tmp = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AMC_CONFIG_DIR", str(tmp / "config"))
        settings = settings_for(tmp, max_workers=1, max_worker_restarts=2, worker_nice=7)
        store = Store(settings.db_url)
        svc = JobService(store=store, settings=settings)
        svc.start()
        try:
            yield svc
        finally:
            svc.stop()
            store.close()


def test_a_killed_worker_is_restarted_from_its_checkpoint_and_the_job_finishes(service):
    store = service.store
    job = service.submit({**SMALL_JOB, "episodes": 60, "seed": 3})
    assert wait_episodes(store, job.id, 2).job_state is JobState.RUNNING
    pid = int((service.settings.jobs_dir / job.id / ".lock").read_text())
    # the worker runs AMC_WORKER_NICE below the server (capped at 19, the lowest priority)
    assert os.getpriority(os.PRIO_PROCESS, pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 7)
    os.kill(pid, signal.SIGKILL)

    done = wait_state(store, job.id, FINISHED, timeout=180)
    assert done.job_state is JobState.SUCCEEDED, (done.error, (service.settings.jobs_dir / job.id / "job.log").read_text())
    assert done.attempts == 2 and done.restarts == 1
    assert store.episode_numbers(job.id) == list(range(1, 61))
    events = done.events or []
    assert [e["kind"] for e in events] == ["worker-restart"]
    assert "killed by SIGKILL" in events[0]["message"] and "restart 1 of 2" in events[0]["message"]
    assert "resuming job" in (service.settings.jobs_dir / job.id / "job.log").read_text()
    assert (service.settings.jobs_dir / job.id / "model.onnx").is_file()


def test_a_cancelled_job_resumes_from_its_checkpoint_on_request(service):
    store = service.store
    job = service.submit({**SMALL_JOB, "episodes": 60, "seed": 4})
    wait_episodes(store, job.id, 3)
    service.cancel(job.id)
    assert wait_state(store, job.id, FINISHED).job_state is JobState.CANCELLED
    before = store.episode_numbers(job.id)
    assert before and len(before) < 60

    queued = service.resume(job.id)
    assert queued.job_state is JobState.QUEUED and queued.resume and not queued.cancel_requested
    done = wait_state(store, job.id, FINISHED, timeout=180)
    assert done.job_state is JobState.SUCCEEDED, done.error
    assert store.episode_numbers(job.id) == list(range(1, 61))
    assert [e["kind"] for e in done.events or []] == ["resume"]
    with pytest.raises(InvalidTransition, match="only a failed or cancelled job can be resumed"):
        service.resume(job.id)  # succeeded: nothing to resume


def test_a_worker_that_keeps_dying_fails_after_its_bounded_restarts(tmp_path, monkeypatch):
    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    settings = settings_for(tmp_path, search_module="crashing_search", max_worker_restarts=2)
    store = Store(settings.db_url)
    svc = JobService(store=store, settings=settings)
    svc.start()
    try:
        job = svc.submit(dict(SMALL_JOB))
        done = wait_state(store, job.id, FINISHED, timeout=180)
    finally:
        svc.stop()
    assert done.job_state is JobState.FAILED
    assert done.attempts == 3 and done.restarts == 2
    assert done.error is not None and done.error.startswith("WorkerDied: the worker process was killed by SIGKILL")
    assert "after 2 restart(s)" in done.error and f"POST /jobs/{job.id}/resume" in done.error
    assert [e["kind"] for e in done.events or []] == ["worker-restart", "worker-restart"]
    store.close()


# ------------------------------------------------------------------------------------- resume route
def test_post_resume_requeues_a_failed_job_and_refuses_others(tmp_path):
    from server.api.routes import resume

    with in_process_app(tmp_path / "data") as app:
        if not any(getattr(r, "path", "") == "/jobs/{job_id}/resume" for r in app.app.routes):
            app.app.include_router(resume.router)  # until server/main.py includes it
        failed = queue_job(app.store)
        app.store.claim_next()
        app.store.finish(failed.id, JobState.FAILED, error="DiskFull: ...")
        running = queue_job(app.store, seed=1)
        app.store.claim_next()

        r = app.client.post(f"/jobs/{failed.id}/resume")
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "queued" and r.json()["error"] is None
        assert app.store.get_job(failed.id).resume

        r = app.client.post(f"/jobs/{running.id}/resume")
        assert r.status_code == 409 and "only a failed or cancelled job can be resumed" in r.json()["detail"]
        assert app.client.post(f"/jobs/{'0' * 32}/resume").status_code == 404
        assert app.client.post(f"/jobs/{failed.id}/resume", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_the_job_resource_says_when_and_why_a_job_was_restarted_or_resumed(tmp_path):
    with in_process_app(tmp_path / "data", max_worker_restarts=2) as app:
        job = queue_job(app.store)
        fresh = app.client.get(f"/jobs/{job.id}").json()
        assert fresh["restarts"] == 0 and fresh["events"] == []

        app.store.claim_next()  # the server stops under the running job
        assert app.store.requeue_interrupted() == [job.id]
        app.store.claim_next()  # its worker then dies
        assert app.store.requeue_after_crash(job.id, max_restarts=2, reason="the worker process was killed by "
                                                                             "SIGKILL without a result")
        body = app.client.get(f"/jobs/{job.id}").json()
        assert body["restarts"] == 1 and body["attempts"] == 2
        assert [e["kind"] for e in body["events"]] == ["server-restart", "worker-restart"]
        assert "killed by SIGKILL" in body["events"][1]["message"] and "restart 1 of 2" in body["events"][1]["message"]
        first, second = (datetime.fromisoformat(e["at"]) for e in body["events"])
        assert first.tzinfo is not None and first <= second  # RFC 3339, oldest first

        app.store.claim_next()
        app.store.finish(job.id, JobState.FAILED, error="DiskFull: no space left")
        resumed = app.client.post(f"/jobs/{job.id}/resume").json()
        assert resumed["restarts"] == 0  # counted again from the client's resume
        assert resumed["events"][-1]["kind"] == "resume" and "DiskFull" in resumed["events"][-1]["message"]
        assert app.client.get("/jobs/" + job.id).json()["events"] == resumed["events"]

        for i in range(60):  # a job resumed over and over shows its latest events only
            app.store.add_event(job.id, JobEventKind.RESUME, f"resume {i}")
        events = app.client.get(f"/jobs/{job.id}").json()["events"]
        assert [e["message"] for e in events] == [f"resume {i}" for i in range(50, 60)]
        assert len(app.store.get_job(job.id).events or []) == MAX_EVENTS

        schema = app.client.get("/openapi.json").json()["components"]["schemas"]
        assert {"restarts", "events"} <= set(schema["JobOut"]["required"])
        assert schema["JobEvent"]["properties"]["at"]["format"] == "date-time"
        assert set(schema["JobEventKind"]["enum"]) == {"worker-restart", "server-restart", "resume", "device-wait",
                                                         "database-wait"}


# ---------------------------------------------------------------------------------- disk and limits
def test_a_full_disk_fails_the_job_with_a_clear_reason_and_leaves_the_rest_intact(tmp_path, monkeypatch):
    import compressor.search as search
    from compressor.fileio import atomic_write

    settings = settings_for(tmp_path)
    store = Store(settings.db_url)
    job = queue_job(store, episodes=4)
    other = queue_job(store, seed=1)
    other_before = {c: getattr(store.get_job(other.id), c) for c in ("state", "spec", "config", "message")}

    def full_disk(path: Any, data: bytes, **kwargs: Any) -> None:
        if Path(path).name == "model.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        atomic_write(path, data, **kwargs)

    monkeypatch.setattr(search, "atomic_write", full_disk)
    failed = run_in_this_process(settings, store)
    assert failed.job_state is JobState.FAILED
    assert failed.error is not None and failed.error.startswith("DiskFull: the disk holding")
    assert "MB free now" in failed.error and f"POST /jobs/{job.id}/resume" in failed.error
    folder = settings.jobs_dir / job.id
    assert not [p for p in folder.rglob("*") if ".tmp" in p.name]  # no half-written files
    assert {c: getattr(store.get_job(other.id), c) for c in other_before} == other_before
    assert store.episode_numbers(job.id) == [1, 2, 3, 4]

    monkeypatch.undo()  # space freed
    store.resume_job(job.id)
    resumed = run_in_this_process(settings, store)
    assert resumed.job_state is JobState.SUCCEEDED, resumed.error
    assert (folder / "model.pt").is_file() and store.episode_numbers(job.id) == [1, 2, 3, 4]
    store.close()


def test_a_job_past_its_size_limit_fails_and_names_the_limit(tmp_path):
    settings = settings_for(tmp_path)
    store = Store(settings.db_url)
    job = queue_job(store, episodes=20)
    done = run_in_this_process(settings, store, max_job_bytes=20_000)  # less than one checkpoint
    assert done.job_state is JobState.FAILED
    assert done.error is not None and done.error.startswith("ArtifactLimitExceeded")
    assert "AMC_MAX_JOB_MB" in done.error and f"POST /jobs/{job.id}/resume" in done.error
    assert done.episodes_done < 20  # stopped early, not after writing everything
    store.close()


# ----------------------------------------------------------------------------------------- retention
def test_retention_removes_old_finished_jobs_with_their_folders_and_nothing_else(tmp_path):
    settings = settings_for(tmp_path)
    store = Store(settings.db_url)
    now = utcnow()
    ages = {"old-succeeded": ("succeeded", 10), "old-failed": ("failed", 8), "recent": ("succeeded", 1),
            "old-running": ("running", None), "queued": ("queued", None)}
    ids = {}
    with store.session() as s:
        for name, (state, days) in ages.items():
            job_id = f"{name:x<32}"[:32].replace("-", "0")
            ids[name] = job_id
            s.add(Job(id=job_id, state=state, spec=SMALL_JOB, config=SMALL_JOB, created_at=now - timedelta(days=20),
                      started_at=now - timedelta(days=20),
                      finished_at=None if days is None else now - timedelta(days=days), phase=state, message=""))
        s.flush()
        for job_id in ids.values():
            s.add(Episode(job_id=job_id, number=1, record={"episode": 1}))
    for job_id in ids.values():
        (settings.jobs_dir / job_id).mkdir()
        (settings.jobs_dir / job_id / "model.pt").write_bytes(b"x" * 100)
    orphan = settings.jobs_dir / ("f" * 32)  # a purge interrupted after the rows went
    orphan.mkdir()
    old = time.time() - 9 * 86400
    os.utime(orphan, (old, old))

    assert JobService(store=store, settings=settings).purge_expired() == []  # keep_days unset

    removed = JobService(store=store, settings=settings_for(tmp_path, keep_days=7)).purge_expired()
    assert sorted(removed) == sorted([ids["old-succeeded"], ids["old-failed"], orphan.name])
    assert store.job_ids() == {ids["recent"], ids["old-running"], ids["queued"]}
    assert sorted(p.name for p in settings.jobs_dir.iterdir()) == sorted(store.job_ids())
    for job_id in store.job_ids():
        assert store.episode_numbers(job_id) == [1]
    with store.session() as s:
        assert s.query(Episode).count() == 3  # the removed jobs' episodes went with them
    store.close()
