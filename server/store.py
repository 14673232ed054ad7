"""Persistence: SQLAlchemy 2.x models and CRUD. SQLite (WAL) by default, any SQLAlchemy URL works.

Both the server process and the job processes write here (a job process records its own episodes),
so every write is a short transaction and state changes are conditional updates.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

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
from sqlalchemy.engine import Engine
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


# running -> queued happens only when the server restarts under a running job (it then resumes).
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class StoreError(Exception):
    """Base of persistence errors."""


class JobNotFound(StoreError):
    def __init__(self, job_id: str):
        super().__init__(f"no job with id {job_id!r}; list jobs with GET /jobs")
        self.job_id = job_id


class InvalidTransition(StoreError):
    def __init__(self, job_id: str, current: JobState, wanted: JobState):
        super().__init__(f"job {job_id} is {current.value}; it cannot become {wanted.value}")
        self.job_id, self.current, self.wanted = job_id, current, wanted


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


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
    # Recovery (fine-tuning) epochs so far: [{target?, epoch, epochs, loss, holdout_accuracy, seconds}].
    recovery: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)

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
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # Many request threads plus the dispatcher: a pool as large as the thread pool avoids waits.
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=20, max_overflow=30)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _add_missing_columns(engine: Engine) -> None:
    """Add the (nullable) columns a database made by an older version lacks: `create_all` makes
    missing tables, never missing columns."""
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name not in have:
                assert column.nullable, f"{table.name}.{column.name}: only nullable columns are added in place"
                kind = column.type.compile(engine.dialect)
                with engine.begin() as conn:
                    conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}"))
                log.info("database: added column %s.%s", table.name, column.name)


# Summary fields of the best episode kept on the job row (the full record lives in `episodes`).
BEST_FIELDS = ("episode", "reward", "accuracy", "macs", "params", "latency_ms", "ratios")


class Store:
    """CRUD over jobs, episodes and uploads (registered devices live in the profiler's registry)."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            Base.metadata.create_all(self.engine)
            _add_missing_columns(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as s, s.begin():
            yield s

    # ---- jobs
    def create_job(self, *, spec: dict[str, Any], config: dict[str, Any], episodes_total: int | None = None) -> Job:
        """Queue a job; `episodes_total` defaults to the config's episodes (a frontier runs several searches)."""
        job = Job(
            id=uuid.uuid4().hex,
            state=JobState.QUEUED.value,
            spec=spec,
            config=config,
            created_at=utcnow(),
            episodes_total=int(config.get("episodes", 0)) if episodes_total is None else episodes_total,
            phase="queued",
            message="waiting for a worker",
        )
        with self.session() as s:
            s.add(job)
        return job

    def get_job(self, job_id: str) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise JobNotFound(job_id)
            return job

    def list_jobs(self, *, limit: int = 100, offset: int = 0, state: JobState | None = None) -> list[Job]:
        with self.session() as s:
            q = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
            if state is not None:
                q = q.where(Job.state == state.value)
            return list(s.scalars(q))

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

    def transition(self, job_id: str, wanted: JobState, **values: Any) -> Job:
        with self.session() as s:
            return self._transition(s, job_id, wanted, **values)

    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked running; None when the queue is empty."""
        with self.session() as s:
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

    def requeue_interrupted(self) -> list[str]:
        """Jobs left `running` by a server that died: queue them again, to resume from their checkpoint."""
        with self.session() as s:
            ids = list(s.scalars(select(Job.id).where(Job.state == JobState.RUNNING.value)))
            if ids:
                s.execute(
                    update(Job).where(Job.id.in_(ids), Job.state == JobState.RUNNING.value)
                    .values(state=JobState.QUEUED.value, resume=True, phase="queued",
                            message="interrupted by a server restart; will resume from its checkpoint")
                )
        return ids

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job at once; flag a running one (its worker stops it)."""
        with self.session() as s:
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

    def set_phase(self, job_id: str, phase: str, message: str) -> None:
        with self.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(phase=phase, message=message[:2000]))

    def finish(self, job_id: str, state: JobState, *, report: dict[str, Any] | None = None,
               error: str | None = None, message: str = "") -> Job:
        return self.transition(job_id, state, finished_at=utcnow(), report=report, error=error,
                               phase=state.value, message=message or state.value)

    # ---- episodes
    def add_episode(self, job_id: str, number: int, record: dict[str, Any], *, total: int | None = None) -> bool:
        """Record one finished episode (idempotent: a resumed job may report an episode twice)."""
        with self.session() as s:
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

    def list_episodes(self, job_id: str, *, after: int = 0) -> list[Episode]:
        with self.session() as s:
            if s.get(Job, job_id) is None:
                raise JobNotFound(job_id)
            q = select(Episode).where(Episode.job_id == job_id, Episode.number > after).order_by(Episode.number)
            return list(s.scalars(q))

    def reset_progress(self, job_id: str) -> None:
        """Forget a job's episodes, best result and recovery epochs (a job that starts over)."""
        with self.session() as s:
            s.execute(delete(Episode).where(Episode.job_id == job_id))
            s.execute(update(Job).where(Job.id == job_id).values(episodes_done=0, best=None, recovery=None))

    # ---- recovery epochs
    def add_epoch(self, job_id: str, record: dict[str, Any]) -> None:
        """Record a finished recovery epoch; one already recorded for the same target and epoch is replaced."""
        with self.session() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFound(job_id)
            key = (record.get("target"), record.get("epoch"))
            epochs = [r for r in (job.recovery or []) if (r.get("target"), r.get("epoch")) != key]
            s.execute(update(Job).where(Job.id == job_id).values(recovery=[*epochs, record]))

    def episode_numbers(self, job_id: str) -> list[int]:
        with self.session() as s:
            return list(s.scalars(select(Episode.number).where(Episode.job_id == job_id).order_by(Episode.number)))

    # ---- uploads
    def add_upload(self, *, kind: str, filename: str, size: int, sha256: str, path: str, upload_id: str) -> Upload:
        up = Upload(id=upload_id, kind=kind, filename=filename, size=size, sha256=sha256, path=path,
                    created_at=utcnow())
        with self.session() as s:
            s.add(up)
        return up

    def get_upload(self, upload_id: str) -> Upload | None:
        with self.session() as s:
            return s.get(Upload, upload_id)
