"""The store on SQLite and on a real PostgreSQL server (tests/pg.py): the life of a job, episodes kept
once each, the queue bound; and the schema's version: an empty database is made at the current
version, an older one is upgraded in place (its jobs kept), a newer one is refused naming both
versions and left as it was, a migration that fails leaves the database as it was."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from server import store as store_module
from server.store import (
    SCHEMA_VERSION,
    VERSION_TABLE,
    InvalidTransition,
    JobState,
    QueueFull,
    SchemaTooNew,
    SchemaTooOld,
    Store,
)


@pytest.fixture
def url(tmp_path, database_url) -> str:
    return database_url or f"sqlite:///{tmp_path / 'amc.db'}"


@pytest.fixture
def store(url):
    s = Store(url)
    yield s
    s.close()


def _sql(url: str, *statements: str) -> None:
    """Change the database behind the store's back (as an older or newer release would have left it)."""
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _read(url: str, query: str) -> list:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(query))]
    finally:
        engine.dispose()


def _job_columns(url: str) -> set[str]:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        return {c["name"] for c in inspect(engine).get_columns("jobs")}
    finally:
        engine.dispose()


def test_a_job_runs_once_records_each_episode_once_and_finishes(store):
    job = store.create_job(spec={"model": "demo-cnn"}, config={"episodes": 3})
    assert store.get_job(job.id).job_state is JobState.QUEUED
    claimed = store.claim_next()
    assert claimed is not None and claimed.id == job.id and claimed.job_state is JobState.RUNNING
    assert store.claim_next() is None  # nothing else queued
    assert store.add_episode(job.id, 1, {"reward": -0.5, "accuracy": 0.5})
    assert store.add_episode(job.id, 2, {"reward": -0.2, "accuracy": 0.8})
    assert not store.add_episode(job.id, 2, {"reward": 9.0})  # reported twice after a resume: kept once
    assert store.episode_numbers(job.id) == [1, 2]
    got = store.get_job(job.id)
    assert got.episodes_done == 2 and got.best["episode"] == 2 and got.best["accuracy"] == 0.8
    store.transition(job.id, JobState.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        store.transition(job.id, JobState.RUNNING)
    assert store.count_jobs() == {"succeeded": 1}


def test_a_server_restart_requeues_running_jobs_to_resume(store):
    a = store.create_job(spec={}, config={"episodes": 1})
    b = store.create_job(spec={}, config={"episodes": 1})
    store.claim_next()
    assert store.requeue_interrupted() in ([a.id], [b.id])
    assert {j.state for j in store.list_jobs()} == {"queued"}
    assert any(j.resume for j in store.list_jobs(state=JobState.QUEUED))


def test_the_queue_bound_holds(store):
    for _ in range(2):
        store.create_job(spec={}, config={"episodes": 1}, max_queued=2)
    with pytest.raises(QueueFull):
        store.create_job(spec={}, config={"episodes": 1}, max_queued=2)
    assert len(store.list_jobs()) == 2


def test_an_empty_database_gets_the_current_schema_version(store, url):
    assert _read(url, f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]
    Store(url).close()  # opening it again changes nothing
    assert _read(url, f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]


def _make_version_1(url: str) -> str:
    """A database as the releases before versioning left it: no version table, no later job columns;
    one job in it."""
    s = Store(url)
    job = s.create_job(spec={"model": "demo-cnn"}, config={"episodes": 2})
    s.add_episode(job.id, 1, {"reward": -0.1})
    s.close()
    _sql(url, f"DROP TABLE {VERSION_TABLE}", "ALTER TABLE jobs DROP COLUMN recovery",
         "ALTER TABLE jobs DROP COLUMN events", "ALTER TABLE jobs DROP COLUMN restarts")
    return job.id


def test_an_older_database_is_upgraded_keeping_its_jobs(url):
    job_id = _make_version_1(url)
    assert not {"recovery", "events", "restarts"} & _job_columns(url)
    with pytest.raises(SchemaTooOld, match=f"schema version 1, older than this version's {SCHEMA_VERSION}"):
        Store(url, create=False)  # a job's process does not migrate: it says to start the server
    assert VERSION_TABLE not in _tables(url)
    s = Store(url)
    try:
        assert _read(url, f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]
        assert {"recovery", "events", "restarts"} <= _job_columns(url)
        assert s.episode_numbers(job_id) == [1]
        s.add_epoch(job_id, {"epoch": 1, "loss": 0.5})
        assert s.get_job(job_id).recovery == [{"epoch": 1, "loss": 0.5}]
    finally:
        s.close()
    Store(url, create=False).close()  # upgraded: a job's process opens it


def _tables(url: str) -> set[str]:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_newer_database_is_refused_naming_both_versions_and_left_alone(store, url):
    job = store.create_job(spec={"model": "demo-cnn"}, config={"episodes": 1})
    store.close()
    newer = SCHEMA_VERSION + 5
    _sql(url, f"UPDATE {VERSION_TABLE} SET version = {newer}")
    for create in (True, False):
        with pytest.raises(SchemaTooNew) as err:
            Store(url, create=create)
        message = str(err.value)
        assert f"schema version {newer}" in message and f"up to {SCHEMA_VERSION}" in message
        assert "nothing in this one was changed" in message
    assert _read(url, f"SELECT version FROM {VERSION_TABLE}") == [(newer,)]
    assert _read(url, "SELECT id FROM jobs") == [(job.id,)]


def test_a_migration_that_fails_leaves_the_database_as_it_was(url, monkeypatch):
    _make_version_1(url)

    def half_done(conn) -> None:
        conn.execute(text("ALTER TABLE jobs ADD COLUMN recovery TEXT"))
        raise RuntimeError("the migration broke half-way")

    monkeypatch.setitem(store_module.MIGRATIONS, 1, half_done)
    with pytest.raises(RuntimeError, match="half-way"):
        Store(url)
    assert "recovery" not in _job_columns(url)  # the half-made change was rolled back
    assert VERSION_TABLE not in _tables(url)
    monkeypatch.undo()
    Store(url).close()  # the real migration then runs whole
    assert _read(url, f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION,)]


def test_the_password_of_a_database_url_stays_out_of_the_message():
    err = SchemaTooNew("postgresql+psycopg://amc:s3cret@db.example:5432/amc", 9, SCHEMA_VERSION)
    assert "s3cret" not in str(err) and "db.example" in str(err)


def test_amc_serve_refuses_a_newer_database_with_the_message_before_it_listens(store, url, tmp_path):
    import subprocess
    import sys

    from test_server_harness import REPO, free_port

    store.close()
    _sql(url, f"UPDATE {VERSION_TABLE} SET version = {SCHEMA_VERSION + 1}")
    done = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()), "--data-dir",
                           str(tmp_path / "data"), "--database-url", url],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert f"schema version {SCHEMA_VERSION + 1}" in " ".join(out.split()), out
    assert "Traceback" not in out and "Uvicorn running" not in out
    assert _read(url, f"SELECT version FROM {VERSION_TABLE}") == [(SCHEMA_VERSION + 1,)]


def test_amc_serve_names_a_database_it_cannot_reach(tmp_path):
    from test_server_harness import free_port

    from server.serve_cli import check_database

    url = f"postgresql+psycopg://amc:s3cret@127.0.0.1:{free_port()}/amc"  # nothing listens there
    problem = check_database(url)
    assert problem is not None and "cannot open the database" in problem and "AMC_DATABASE_URL" in problem
    assert "s3cret" not in problem
    assert check_database(f"sqlite:///{tmp_path / 'fresh.db'}") is None
