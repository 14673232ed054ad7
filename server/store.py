"""Persistence: SQLAlchemy 2.x models and CRUD. SQLite (WAL) by default, any SQLAlchemy URL works.

Both the server process and the job processes write here (a job process records its own episodes),
so every write is a short transaction and state changes are conditional updates.
"""

from __future__ import annotations

import enum
import functools
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    delete,
    event,
    func,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

log = logging.getLogger(__name__)



def _rowcount(result: Any) -> int:
    """Rows an UPDATE matched (a CursorResult's rowcount; the typed API calls it a plain Result)."""
    return int(result.rowcount)

class JobState(enum.StrEnum):
    """Life of a job: queued -> running -> succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


# running -> queued: the server restarted under a running job, or its worker process died (it then
# resumes from its checkpoint); failed | cancelled -> queued: POST /jobs/{id}/resume.
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
    JobState.CANCELLED: frozenset({JobState.QUEUED}),
}
RESUMABLE = (JobState.FAILED, JobState.CANCELLED)


class StoreError(Exception):
    """Base of persistence errors."""


class JobNotFound(StoreError):
    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}; list jobs with GET /jobs")
        self.job_id = job_id


class InvalidTransition(StoreError):
    def __init__(self, job_id: str, current: JobState, wanted: JobState, hint: str = ""):
        super().__init__(f"job {job_id} is {current.value}; it cannot become {wanted.value}{hint}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


class QueueFull(StoreError):
    """As many jobs are queued as the server accepts (AMC_MAX_QUEUED_JOBS): a submit waits until some have started."""

    def __init__(self, queued: int, limit: int):
        super().__init__(f"{queued} jobs are already queued, the most this server accepts (AMC_MAX_QUEUED_JOBS="
                         f"{limit}); submit again once some have started or been cancelled, or raise the limit")
        self.queued, self.limit = queued, limit


class DatabaseBusy(StoreError):
    """The database stayed locked through every retry (another process holds a long write transaction)."""


class DatabaseUnavailable(StoreError):
    """The database server stayed unreachable (down, restarting, the network to it cut) for as long as
    this process waits for it (`Store.outage_wait_s`)."""


def _is_unavailable(exc: DBAPIError, dialect: str) -> bool:
    """A database server that cannot be reached or dropped the connection (PostgreSQL restarting, the link
    cut): worth waiting for. SQLite has no server; its operational errors are locks or files."""
    if dialect == "sqlite":
        return False
    return bool(exc.connection_invalidated) or isinstance(exc, OperationalError)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line for line in str(orig).strip().splitlines() if line.strip()]
    return lines[0][:300] if lines else type(orig).__name__


def _is_locked(exc: OperationalError) -> bool:
    text_ = str(exc.orig if exc.orig is not None else exc).lower()
    return "database is locked" in text_ or "database table is locked" in text_ or "database is busy" in text_


_P = ParamSpec("_P")
_R = TypeVar("_R")


def retry_transaction(method: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a Store method (one transaction) again when SQLite answers "database is locked", with
    exponential backoff and a bounded number of attempts (`Store.lock_retries`), and while a database
    server is unreachable, for up to `Store.outage_wait_s` (then DatabaseUnavailable). Each decorated method
    opens its own session, so a retry repeats the whole transaction; methods that call another
    decorated method are not decorated themselves (the attempts would multiply)."""

    @functools.wraps(method)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        store = args[0]
        assert isinstance(store, Store)
        delay = store.lock_backoff_s
        started = time.monotonic()
        outage_since: float | None = None
        attempt = 0
        while True:
            attempt += 1
            try:
                result = method(*args, **kwargs)
            except DBAPIError as exc:
                if _is_unavailable(exc, store.engine.dialect.name):
                    outage_since = _wait_for_database(store, method.__name__, exc, outage_since)
                    attempt = 0
                    continue
                if not isinstance(exc, OperationalError) or not _is_locked(exc):
                    raise
                if attempt > store.lock_retries:
                    raise DatabaseBusy(
                        f"the database {store.url} stayed locked through {attempt} attempts over "
                        f"{time.monotonic() - started:.1f} s ({method.__name__}); another process holds a long "
                        "write transaction on it: stop whatever else writes to it (a second server, a backup "
                        "tool), then resume the job with POST /jobs/{id}/resume") from exc
                log.warning("database locked during %s (attempt %d of %d); retrying in %.2f s",
                            method.__name__, attempt, store.lock_retries + 1, delay)
                time.sleep(delay * (0.5 + random.random()))  # jitter: two waiting processes do not collide again
                delay = min(delay * 2, 5.0)
                continue
            if outage_since is not None:
                store.database_back(method.__name__, time.monotonic() - outage_since)
            return result

    return wrapper


def _wait_for_database(store: Store, what: str, exc: DBAPIError, since: float | None) -> float:
    """One wait of a method whose database is unreachable: returns when it has started (`since`), raises
    DatabaseUnavailable once the outage has lasted `store.outage_wait_s`. The method is then retried whole
    (its own transaction), so a write is either in the database once or not at all: episodes and epochs
    are keyed by their numbers, a retried insert finds its row and adds nothing."""
    now = time.monotonic()
    if since is None:
        since = now
        log.warning("the database %s is unreachable during %s (%s); waiting up to %.0f s for it",
                    redacted_url(store.url), what, _reason(exc), store.outage_wait_s)
    waited = now - since
    if waited >= store.outage_wait_s:
        raise DatabaseUnavailable(
            f"the database {redacted_url(store.url)} is unreachable ({_reason(exc)}); waited {waited:.0f} s "
            f"during {what}. Check that its server runs and is reachable; jobs pause while it is down "
            "and go on when it is back") from exc
    time.sleep(min(2.0, 0.25 * 2 ** min(int(waited), 3), store.outage_wait_s - waited + 0.01))
    return since


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class JobEventKind(enum.StrEnum):
    """What happened to a job besides its search (kept in `Job.events`)."""

    WORKER_RESTART = "worker-restart"  # its worker process died; restarted from the checkpoint
    SERVER_RESTART = "server-restart"  # the server stopped under it; resumed on the next start
    RESUME = "resume"  # a client resumed it (POST /jobs/{id}/resume) after it failed or was cancelled
    DEVICE_WAIT = "device-wait"  # its device stopped answering: waiting for it, back, or given up on
    DATABASE_WAIT = "database-wait"  # the database server was unreachable; the job waited for it


# Events kept per job: a job resumed again and again keeps its latest ones, not an ever-growing list.
MAX_EVENTS = 50


def _event(kind: JobEventKind, message: str) -> dict[str, Any]:
    return {"at": datetime.now(UTC).isoformat(), "kind": kind.value, "message": message[:2000]}


def _with_event(events: list[dict[str, Any]] | None, kind: JobEventKind, message: str) -> list[dict[str, Any]]:
    return [*(events or []), _event(kind, message)][-MAX_EVENTS:]


class Base(DeclarativeBase):
    pass


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)  # as submitted
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # SearchConfig.to_dict()
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    phase: Mapped[str] = mapped_column(String(32), default="")
    message: Mapped[str] = mapped_column(Text, default="")
    episodes_total: Mapped[int] = mapped_column(Integer, default=0)
    episodes_done: Mapped[int] = mapped_column(Integer, default=0)
    best: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    resume: Mapped[bool] = mapped_column(Boolean, default=False)
    # Recovery (fine-tuning) epochs so far: [{target?, stage?, epoch, epochs, loss, holdout_accuracy, seconds}]
    # (stage "qat" for quantization-aware recovery's epochs, absent for recovery's).
    recovery: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # What happened to the job besides its search: worker restarts, resumes ([{at, kind, message}]).
    events: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Worker processes restarted after dying without a result, since it was queued by a client.
    restarts: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class Episode(Base):
    __tablename__ = "episodes"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    recorded_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # weights | onnx
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)



def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")  # (the busy timeout is the driver's `timeout`)
    cur.close()


def _sqlite_file(url: str) -> Path | None:
    """The database file of a sqlite URL; None for other databases and in-memory ones."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _private_database(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would apply the umask), and tighten one
    made by an older version. SQLite gives its -wal and -shm files the database file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and (p.stat().st_mode & 0o077):
            os.chmod(p, 0o600)


def make_engine(url: str, *, busy_timeout_s: float = 30.0) -> Engine:
    db_file = _sqlite_file(url)
    if db_file is not None:
        _private_database(db_file)
    if url.startswith("sqlite"):
        # Many request threads plus the dispatcher: a pool as large as the thread pool avoids waits.
        engine = create_engine(url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False},
                               pool_size=20, max_overflow=30)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


# ---- the schema's version
#
# The database records the version of its schema (`amc_schema`, one row). Version 1 is every database
# made before the schema was versioned (no `amc_schema` table); MIGRATIONS[n] upgrades version n to n + 1.
# A change to the tables adds a migration and raises SCHEMA_VERSION; a migration is written against the
# tables as they were then, not against the models above (they move on).
SCHEMA_VERSION = 2
VERSION_TABLE = "amc_schema"
# Migrating servers and job processes take turns on this PostgreSQL advisory lock (any number, ours).
_PG_MIGRATION_LOCK = 0x616D63


class SchemaTooNew(StoreError):
    """The database was made or upgraded by a newer version of the service; it is left as it is."""

    def __init__(self, url: str, found: int, supported: int):
        super().__init__(
            f"the database {redacted_url(url)} has schema version {found}, and this version of AMC Service knows "
            f"schema versions up to {supported}: a newer release made or upgraded it. Run that release (or "
            f"newer), or point AMC_DATABASE_URL at another database; nothing in this one was changed")
        self.found, self.supported = found, supported


class SchemaTooOld(StoreError):
    """A process that does not migrate (a job's worker) found a database older than it needs."""

    def __init__(self, url: str, found: int, supported: int):
        super().__init__(
            f"the database {redacted_url(url)} has schema version {found}, older than this version's {supported}: "
            "start the server (`amc serve`), which upgrades it, before its jobs")
        self.found, self.supported = found, supported


def redacted_url(url: str) -> str:
    """The URL with its password hidden, for messages and logs."""
    return make_url(url).render_as_string(hide_password=True)


def _add_columns(conn: Connection, table: str, columns: dict[str, Any]) -> None:
    """Add the columns (name -> SQLAlchemy type, nullable) that `table` lacks."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, kind in columns.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind.compile(conn.dialect)}"))
            log.info("database: added column %s.%s", table, name)


def _migrate_1_to_2(conn: Connection) -> None:
    """Databases from before versioning: the job columns added since the first release (recovery
    progress, events, worker restarts), in place; the tables an old one may lack."""
    for name in ("jobs", "episodes", "uploads"):
        Base.metadata.tables[name].create(conn, checkfirst=True)
    _add_columns(conn, "jobs", {"recovery": JSON(), "events": JSON(), "restarts": Integer()})


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migrate_1_to_2}
assert set(MIGRATIONS) == set(range(1, SCHEMA_VERSION)), "one migration per version below SCHEMA_VERSION"


@contextmanager
def _schema_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction, held by one process at a time, in which the schema is read and changed: both
    databases change tables transactionally, so a migration is applied whole or not at all. (SQLite: the
    driver would commit before each ALTER TABLE on its own, so the transaction is ours, BEGIN IMMEDIATE.)"""
    if engine.dialect.name == "sqlite":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
            conn.exec_driver_sql("COMMIT")
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        yield conn


def schema_version(conn: Connection) -> int | None:
    """The schema version a database records; 1 for one from before versioning; None for an empty one."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        found = conn.execute(text(f"SELECT version FROM {VERSION_TABLE}")).scalars().all()
        if len(found) != 1:
            raise StoreError(f"{VERSION_TABLE} holds {len(found)} rows, not one: the database was changed by "
                             "hand; restore it from a backup")
        return int(found[0])
    return 1 if "jobs" in tables else None


def _set_version(conn: Connection, version: int) -> None:
    conn.execute(text(f"DELETE FROM {VERSION_TABLE}"))
    conn.execute(text(f"INSERT INTO {VERSION_TABLE} (version) VALUES (:v)"), {"v": version})


def prepare_schema(engine: Engine, url: str, *, migrate: bool = True) -> int:
    """Make an empty database's tables, upgrade an older one step by step, refuse a newer one
    (SchemaTooNew, before anything is written). Without `migrate` (job processes) only check it.
    Returns the version the database had."""
    with engine.connect() as conn:  # the usual case, a current database, without taking the lock
        found = schema_version(conn)
    if found is not None and found > SCHEMA_VERSION:
        raise SchemaTooNew(url, found, SCHEMA_VERSION)
    if found == SCHEMA_VERSION or not migrate:
        if found is not None and found < SCHEMA_VERSION:
            raise SchemaTooOld(url, found, SCHEMA_VERSION)
        return found or 0
    with _schema_transaction(engine) as conn:
        found = schema_version(conn)  # again: another process may have migrated it meanwhile
        if found is not None and found > SCHEMA_VERSION:
            raise SchemaTooNew(url, found, SCHEMA_VERSION)
        if found == SCHEMA_VERSION:
            return found
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER NOT NULL)"))
        if found is None:
            Base.metadata.create_all(conn)
        else:
            for version in range(found, SCHEMA_VERSION):
                MIGRATIONS[version](conn)
                log.info("database %s: schema upgraded from version %d to %d", redacted_url(url), version, version + 1)
        _set_version(conn, SCHEMA_VERSION)
        return found or 0


# Summary fields of the best episode kept on the job row (the full record lives in `episodes`).
BEST_FIELDS = ("episode", "reward", "accuracy", "macs", "params", "latency_ms", "ratios")


def _queued(s: Session) -> int:
    """How many jobs wait for a worker (an index count, about 0.3 ms at 10,000)."""
    return s.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED.value)) or 0


@dataclass
class _NewJob:
    """A job on its way into the database; `outcome` is set once its transaction committed: the job, or
    what refused it (QueueFull, an error of the insert)."""

    job: Job
    max_queued: int | None
    outcome: Job | BaseException | None = None


class Store:
    """CRUD over jobs, episodes and uploads (registered devices live in the profiler's registry)."""

    def __init__(self, url: str, *, create: bool = True, busy_timeout_s: float = 30.0, lock_retries: int = 6,
                 lock_backoff_s: float = 0.1, outage_wait_s: float = 5.0,
                 on_database_back: Callable[[str, float], None] | None = None):
        self.url = url
        # A database server that stops answering (restart, cut link) is waited for up to outage_wait_s per
        # call: short for the server's requests (they answer 503 and the client retries), long for a job's
        # process, whose search pauses until the database is back. on_database_back(method, seconds) is
        # told when it is (a job records it as an event).
        self.outage_wait_s, self.on_database_back = outage_wait_s, on_database_back
        self._reporting_outage = False
        # A write that finds the database locked waits busy_timeout_s inside SQLite, then (as "database is
        # locked") is retried whole up to lock_retries times, lock_backoff_s doubling between tries.
        self.lock_retries, self.lock_backoff_s = lock_retries, lock_backoff_s
        self.engine = make_engine(url, busy_timeout_s=busy_timeout_s)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Reentrant: a write may call a helper that writes in its own session (finish -> transition).
        self._write_lock = threading.RLock() if self.engine.dialect.name == "sqlite" else None
        self._pending: list[_NewJob] = []  # jobs waiting for the next group commit (create_job)
        self._pending_lock = threading.Lock()
        # create: make, or upgrade, the schema (the server); else only check its version (a job's process).
        prepare_schema(self.engine, url, migrate=create)

    @property
    def local_reads(self) -> bool:
        """Reads are a local file's (SQLite, WAL): a reader never waits for a writer, so a short read may
        run on the event loop; any other database is reached over a connection that can stall."""
        return self.engine.dialect.name == "sqlite"

    def close(self) -> None:
        self.engine.dispose()

    def database_back(self, what: str, seconds: float) -> None:
        """A call waited `seconds` for the database and then went through."""
        log.warning("the database %s is back after %.1f s (%s went on)", redacted_url(self.url), seconds, what)
        if self.on_database_back is None or self._reporting_outage:
            return
        self._reporting_outage = True  # the report writes to the database too; it must not report itself
        try:
            self.on_database_back(what, seconds)
        except StoreError as exc:
            log.warning("could not record the database outage: %s", exc)
        finally:
            self._reporting_outage = False

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def writing(self) -> Iterator[Session]:
        """A session that writes. SQLite lets one writer in at a time and makes the others sleep in steps
        of 1 to 100 ms until the database is free (its busy handler), which under a burst of submits
        turned into 50-200 ms stalls; this process's threads queue on a lock instead and go in as soon as
        the writer before them commits. Another process's writer (a job's worker) still meets the busy
        handler, but it writes about once an episode."""
        if self._write_lock is None:
            with self.session() as s:
                yield s
            return
        with self._write_lock, self.session() as s:
            yield s

    # ---- jobs
    def create_job(self, *, spec: dict[str, Any], config: dict[str, Any], episodes_total: int | None = None,
                   max_queued: int | None = None) -> Job:
        """Queue a job; `episodes_total` defaults to the config's episodes (a frontier runs several searches).
        QueueFull when `max_queued` jobs are queued already (checked in the transaction that inserts it).

        Group commit (SQLite): a submit puts its job on a list, and whichever thread holds the write lock
        next inserts every job on it in one transaction; the others find theirs done when they get the
        lock. Under a burst of submits one commit serves many, instead of each waiting its turn."""
        new = _NewJob(Job(
            id=uuid.uuid4().hex,
            state=JobState.QUEUED.value,
            spec=spec,
            config=config,
            created_at=utcnow(),
            episodes_total=int(config.get("episodes", 0)) if episodes_total is None else episodes_total,
            phase="queued",
            message="waiting for a worker",
        ), max_queued)
        if self._write_lock is None:
            self._insert_jobs([new])
        else:
            with self._pending_lock:
                self._pending.append(new)
            with self._write_lock:
                if new.outcome is None:
                    with self._pending_lock:
                        batch, self._pending = self._pending, []
                    try:
                        self._insert_jobs(batch)
                    except BaseException as exc:
                        for other in batch:
                            other.outcome = exc
        if isinstance(new.outcome, BaseException):
            raise new.outcome
        assert new.outcome is not None
        return new.outcome

    @retry_transaction
    def _insert_jobs(self, batch: list[_NewJob]) -> None:
        refused: dict[int, QueueFull] = {}
        with self.writing() as s:
            queued = None
            if any(new.max_queued is not None for new in batch):
                queued = _queued(s)
            for i, new in enumerate(batch):
                if queued is not None and new.max_queued is not None and queued >= new.max_queued:
                    refused[i] = QueueFull(queued, new.max_queued)
                    continue
                s.add(new.job)
                if queued is not None:
                    queued += 1
        for i, new in enumerate(batch):  # only once committed: a retried transaction decides again
            new.outcome = refused.get(i, new.job)

    @retry_transaction
    def get_job(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            return job

    @retry_transaction
    def list_jobs(self, *, limit: int = 100, offset: int = 0, state: JobState | None = None) -> list[Job]:
        with self.session() as s:
            q = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
            if state is not None:
                q = q.where(Job.state == state.value)
            return list(s.scalars(q))

    @retry_transaction
    def count_jobs(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        return {state: n for state, n in rows}

    def _transition(self, s: Session, job_id: str, wanted: JobState, **values: Any) -> Job:
        job = s.get(Job, job_id, with_for_update=True)
        if job is None:
            raise JobNotFound(job_id)
        current = JobState(job.state)
        if wanted not in TRANSITIONS[current]:
            raise InvalidTransition(job_id, current, wanted)
        # Conditional update: a concurrent writer (the other process) cannot be overwritten silently.
        res = s.execute(
            update(Job).where(Job.id == job_id, Job.state == current.value).values(state=wanted.value, **values)
        )
        if _rowcount(res) != 1:
            s.refresh(job)
            raise InvalidTransition(job_id, JobState(job.state), wanted)
        s.refresh(job)
        return job

    @retry_transaction
    def transition(self, job_id: str, wanted: JobState, **values: Any) -> Job:
        with self.writing() as s:
            return self._transition(s, job_id, wanted, **values)

    @retry_transaction
    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked running; None when the queue is empty."""
        with self.writing() as s:
            ids = list(s.scalars(
                select(Job.id).where(Job.state == JobState.QUEUED.value).order_by(Job.created_at, Job.id).limit(5)
            ))
            for job_id in ids:
                res = s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                    .values(state=JobState.RUNNING.value, started_at=utcnow(), attempts=Job.attempts + 1,
                            phase="starting", message="starting a worker process")
                )
                if _rowcount(res) == 1:
                    return s.get(Job, job_id, populate_existing=True)
        return None

    @retry_transaction
    def requeue_interrupted(self) -> list[str]:
        """Jobs left `running` by a server that died: queue them again, to resume from their checkpoint."""
        message = "interrupted by a server restart; will resume from its checkpoint"
        with self.writing() as s:
            jobs = list(s.scalars(select(Job).where(Job.state == JobState.RUNNING.value)))
            for job in jobs:
                s.execute(
                    update(Job).where(Job.id == job.id, Job.state == JobState.RUNNING.value)
                    .values(state=JobState.QUEUED.value, resume=True, phase="queued", message=message,
                            events=_with_event(job.events, JobEventKind.SERVER_RESTART, message))
                )
        return [job.id for job in jobs]

    @retry_transaction
    def requeue_after_crash(self, job_id: str, *, max_restarts: int, reason: str) -> bool:
        """A running job whose worker process died without recording a result: queue it again to resume
        from its checkpoint, unless it has used its `max_restarts`; False when it was not requeued."""
        with self.writing() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            done = job.restarts or 0
            if job.job_state is not JobState.RUNNING or job.cancel_requested or done >= max_restarts:
                return False
            message = f"{reason}; restarting it from its checkpoint (restart {done + 1} of {max_restarts})"
            res = s.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING.value)
                .values(state=JobState.QUEUED.value, resume=True, restarts=done + 1, phase="queued",
                        message=message, events=_with_event(job.events, JobEventKind.WORKER_RESTART, message))
            )
            return _rowcount(res) == 1

    @retry_transaction
    def resume_job(self, job_id: str, *, max_queued: int | None = None) -> Job:
        """Queue a failed or cancelled job again; its worker continues from the job's checkpoint (a job
        that never wrote one, or a frontier, starts over). QueueFull as in create_job."""
        with self.writing() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            state = job.job_state
            if state not in RESUMABLE:
                raise InvalidTransition(job_id, state, JobState.QUEUED,
                                        hint="; only a failed or cancelled job can be resumed"
                                        + (" (cancel it first)" if not state.finished else ""))
            if max_queued is not None:
                queued = _queued(s)
                if queued >= max_queued:
                    raise QueueFull(queued, max_queued)
            message = f"resumed after it {'was cancelled' if state is JobState.CANCELLED else 'failed'}"
            res = s.execute(
                update(Job).where(Job.id == job_id, Job.state == state.value)
                .values(state=JobState.QUEUED.value, resume=True, cancel_requested=False, restarts=0, error=None,
                        finished_at=None, phase="queued", message=f"{message}; waiting for a worker",
                        events=_with_event(job.events, JobEventKind.RESUME,
                                           message + (f" ({job.error})" if job.error else "")))
            )
            if _rowcount(res) != 1:
                s.refresh(job)
                raise InvalidTransition(job_id, job.job_state, JobState.QUEUED)
            s.refresh(job)
            return job

    @retry_transaction
    def add_event(self, job_id: str, kind: JobEventKind, message: str) -> None:
        """Note something that happened to a job besides its search (kept in `Job.events`)."""
        with self.writing() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            s.execute(update(Job).where(Job.id == job_id).values(events=_with_event(job.events, kind, message)))

    @retry_transaction
    def finished_before(self, cutoff: datetime) -> list[str]:
        """Ids of the jobs that finished (succeeded, failed, cancelled) before `cutoff` (UTC, naive)."""
        with self.session() as s:
            finished = [st.value for st in JobState if st.finished]
            return list(s.scalars(select(Job.id).where(Job.state.in_(finished), Job.finished_at < cutoff)))

    @retry_transaction
    def delete_finished(self, job_ids: list[str]) -> list[str]:
        """Delete these jobs and their episodes if they are (still) finished; the ids deleted."""
        if not job_ids:
            return []
        finished = [st.value for st in JobState if st.finished]
        with self.writing() as s:
            gone = list(s.scalars(select(Job.id).where(Job.id.in_(job_ids), Job.state.in_(finished))))
            s.execute(delete(Episode).where(Episode.job_id.in_(gone)))
            s.execute(delete(Job).where(Job.id.in_(gone)))
        return gone

    @retry_transaction
    def job_ids(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Job.id)))

    @retry_transaction
    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one (its worker stops it)."""
        with self.writing() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            state = JobState(job.state)
            if state is JobState.QUEUED:
                return self._transition(s, job_id, JobState.CANCELLED, finished_at=utcnow(),
                                        phase="cancelled", message="cancelled before it started")
            if state is JobState.RUNNING:
                s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True,
                                                                     message="cancelling"))
                s.refresh(job)
                return job
            raise InvalidTransition(job_id, state, JobState.CANCELLED)

    @retry_transaction
    def set_phase(self, job_id: str, phase: str, message: str) -> None:
        with self.writing() as s:
            s.execute(update(Job).where(Job.id == job_id).values(phase=phase, message=message[:2000]))

    def finish(self, job_id: str, state: JobState, *, report: dict[str, Any] | None = None,
               error: str | None = None, message: str = "") -> Job:
        return self.transition(job_id, state, finished_at=utcnow(), report=report, error=error,
                               phase=state.value, message=message or state.value)

    # ---- episodes
    @retry_transaction
    def add_episode(self, job_id: str, number: int, record: dict[str, Any], *, total: int | None = None) -> bool:
        """Record one finished episode (idempotent: a resumed job may report an episode twice)."""
        with self.writing() as s:
            if s.get(Episode, (job_id, number)) is not None:
                return False
            s.add(Episode(job_id=job_id, number=number, record=record, recorded_at=utcnow()))
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            values: dict[str, Any] = {"episodes_done": max(job.episodes_done, number)}
            if total:
                values["episodes_total"] = total
            reward = record.get("reward")
            best_reward = (job.best or {}).get("reward")
            if reward is not None and (best_reward is None or reward > best_reward):
                values["best"] = {k: record.get(k) for k in BEST_FIELDS} | {"episode": number}
                if "target" in record:  # a frontier's episode: which of its searches
                    values["best"]["target"] = record["target"]
            s.execute(update(Job).where(Job.id == job_id).values(**values))
            return True

    @retry_transaction
    def list_episodes(self, job_id: str, *, after: int = 0) -> list[Episode]:
        with self.session() as s:
            if s.get(Job, job_id) is None:
                raise JobNotFound(job_id)
            q = select(Episode).where(Episode.job_id == job_id, Episode.number > after).order_by(Episode.number)
            return list(s.scalars(q))

    @retry_transaction
    def reset_progress(self, job_id: str) -> None:
        """Forget a job's episodes, best result and recovery epochs (a job that starts over)."""
        with self.writing() as s:
            s.execute(delete(Episode).where(Episode.job_id == job_id))
            s.execute(update(Job).where(Job.id == job_id).values(episodes_done=0, best=None, recovery=None))

    # ---- recovery epochs
    @retry_transaction
    def add_epoch(self, job_id: str, record: dict[str, Any]) -> None:
        """Record a finished recovery epoch; one already recorded for the same target, stage (recovery, or
        `qat`: quantization-aware recovery) and epoch is replaced."""
        with self.writing() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFound(job_id)
            key = (record.get("target"), record.get("stage"), record.get("epoch"))
            epochs = [r for r in (job.recovery or []) if (r.get("target"), r.get("stage"), r.get("epoch")) != key]
            s.execute(update(Job).where(Job.id == job_id).values(recovery=[*epochs, record]))

    @retry_transaction
    def episode_numbers(self, job_id: str) -> list[int]:
        with self.session() as s:
            return list(s.scalars(select(Episode.number).where(Episode.job_id == job_id).order_by(Episode.number)))

    # ---- uploads
    @retry_transaction
    def add_upload(self, *, kind: str, filename: str, size: int, sha256: str, path: str, upload_id: str) -> Upload:
        up = Upload(id=upload_id, kind=kind, filename=filename, size=size, sha256=sha256, path=path,
                    created_at=utcnow())
        with self.writing() as s:
            s.add(up)
        return up

    @retry_transaction
    def get_upload(self, upload_id: str) -> Upload | None:
        with self.session() as s:
            return s.get(Upload, upload_id)
