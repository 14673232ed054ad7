"""Request and response bodies of the REST API (they become the OpenAPI schema at /docs)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from server.options import job_spec_model
from server.store import Episode, Job, JobEventKind, JobState

if TYPE_CHECKING:
    JobSpec = BaseModel
else:
    JobSpec = job_spec_model()  # SearchConfig's fields (server/options.py)


def _utc(value: datetime) -> datetime:
    # The store keeps naive UTC times; an RFC 3339 date-time carries its offset.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


Timestamp = Annotated[datetime, AfterValidator(_utc)]


class JobLinks(BaseModel):
    self: str
    episodes: str
    cancel: str
    log: str
    page: str
    artifacts: dict[str, str] = Field(description="files the job serves now (empty until it has succeeded)")


# Events a job resource shows (the store keeps more): enough to say why it was restarted or resumed.
RECENT_EVENTS = 10


class JobEvent(BaseModel):
    """Something that happened to a job besides its search: a restart, a resume, a wait for its device, and why."""

    at: Timestamp
    kind: JobEventKind = Field(description="worker-restart: its worker process died and it was restarted from "
                                           "its checkpoint; server-restart: the server stopped under it and it "
                                           "resumed on the next start; resume: a client resumed it "
                                           "(POST /jobs/{id}/resume); device-wait: its device stopped "
                                           "answering and it waits for it (device_wait_s), the device came "
                                           "back, or the wait expired; database-wait: the database server "
                                           "was unreachable and the job waited for it")
    message: str = Field(description="why, e.g. 'the worker process was killed by SIGKILL without a result; "
                                     "restarting it from its checkpoint (restart 1 of 2)'")


class JobOut(BaseModel):
    id: str
    state: JobState
    phase: str
    message: str
    progress: float = Field(description="finished episodes / episodes, 0..1")
    episodes_done: int
    episodes_total: int
    best: dict[str, Any] | None = Field(description="best episode so far (reward, accuracy, macs, params, ratios; "
                                                    "a frontier's: its target too)")
    recovery: list[dict[str, Any]] | None = Field(
        None, description="recovery (fine-tuning) epochs so far: epoch, epochs, loss, holdout_accuracy, seconds "
                          "(and target, for a frontier's searches; stage \"qat\" for quantization-aware "
                          "recovery's epochs); null before the first")
    spec: dict[str, Any]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    error: str | None
    attempts: int = Field(description="worker processes started for this job so far")
    restarts: int = Field(description="worker processes restarted from the checkpoint after dying without a "
                                      "result, since a client last queued the job (at most "
                                      "AMC_MAX_WORKER_RESTARTS; the job fails past it)")
    events: list[JobEvent] = Field(description=f"the latest {RECENT_EVENTS} restarts and resumes, oldest first "
                                               "(empty for a job that ran straight through)")
    links: JobLinks


class JobDetail(JobOut):
    report: dict[str, Any] | None = Field(description="once succeeded: the search's report.json, or a frontier "
                                                      "job's frontier.json (points, references, unpruned)")


class JobSummary(BaseModel):
    id: str
    state: JobState
    phase: str
    message: str
    progress: float
    episodes_done: int
    episodes_total: int
    model: str
    target: str = Field(description="the budget; a frontier's targets, comma-separated")
    strategy: str
    device: str
    best_accuracy: float | None
    created_at: Timestamp
    finished_at: Timestamp | None


class JobList(BaseModel):
    jobs: list[JobSummary]
    counts: dict[str, int]


class EpisodeOut(BaseModel):
    episode: int
    record: dict[str, Any]


class EpisodeList(BaseModel):
    job_id: str
    state: JobState
    episodes: list[EpisodeOut]


class UploadOut(BaseModel):
    id: str
    kind: str
    filename: str
    size: int
    sha256: str


# HOST:PORT, optionally after `adb:`; HOST a name or an IPv4 address; PORT 1..65535 (profiler.devices' rules).
DEVICE_ADDRESS = (r"^(adb:)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?:"
                  r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$")


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    spec: str = Field(description="HOST:PORT or adb:HOST:PORT of a device (or phone emulator) reachable over TCP",
                      max_length=300, examples=["adb:192.168.1.20:5555", "127.0.0.1:5037"],
                      json_schema_extra={"pattern": DEVICE_ADDRESS})
    name: str | None = Field(None, max_length=255)

    @field_validator("spec")
    @classmethod
    def _tcp_address(cls, value: str) -> str:
        # the pattern the schema shows, with a message that says what to send instead
        if not re.match(DEVICE_ADDRESS, value):
            raise ValueError(f"{value!r} is not a TCP device address; register [adb:]HOST:PORT with a port in "
                             "1-65535 (USB phones and `local` are found without registering)")
        return value


class DeviceOut(BaseModel):
    spec: str
    source: Literal["local", "usb", "registered", "farm"]
    health: Literal["ok", "unhealthy", "unknown"]
    detail: str
    info: dict[str, Any]
    host: str | None = Field(None, description="farm phones: the device host it is plugged into")
    lease: dict[str, Any] | None = Field(None, description="farm phones: who holds the phone now (holder, since, "
                                                           "measuring); null when free")


class DeviceList(BaseModel):
    devices: list[DeviceOut]
    notes: list[str] = Field(description="why some devices could not be listed (e.g. no USB access)")


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    jobs: dict[str, int]
    running: list[str]


def _progress(job: Job) -> float:
    return round(min(1.0, job.episodes_done / job.episodes_total), 4) if job.episodes_total else 0.0


def job_links(job_id: str, artifacts: list[str]) -> JobLinks:
    base = f"/jobs/{job_id}"
    return JobLinks(self=base, episodes=f"{base}/episodes", cancel=f"{base}/cancel", log=f"{base}/log",
                    page=f"/ui/jobs/{job_id}", artifacts={n: f"{base}/artifacts/{n}" for n in artifacts})


def _job_fields(job: Job, artifacts: Sequence[str]) -> dict[str, Any]:
    return dict(
        id=job.id, state=JobState(job.state), phase=job.phase, message=job.message, progress=_progress(job),
        episodes_done=job.episodes_done, episodes_total=job.episodes_total, best=job.best, recovery=job.recovery,
        spec=job.spec,
        created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at, error=job.error,
        attempts=job.attempts, restarts=job.restarts or 0, events=(job.events or [])[-RECENT_EVENTS:],
        links=job_links(job.id, list(artifacts)),
    )


def job_out(job: Job, *, artifacts: Sequence[str] = ()) -> JobOut:
    return JobOut(**_job_fields(job, artifacts))


def job_detail(job: Job, *, artifacts: Sequence[str] = ()) -> JobDetail:
    return JobDetail(**_job_fields(job, artifacts), report=job.report)


def job_summary(job: Job) -> JobSummary:
    cfg = job.config or {}
    return JobSummary(
        id=job.id, state=JobState(job.state), phase=job.phase, message=job.message, progress=_progress(job),
        episodes_done=job.episodes_done, episodes_total=job.episodes_total, model=str(cfg.get("model", "")),
        target=", ".join(job.spec.get("targets") or []) or str(cfg.get("target", "")),
        strategy=str(cfg.get("strategy", "")),
        device=str(cfg.get("device", "")), best_accuracy=(job.best or {}).get("accuracy"),
        created_at=job.created_at, finished_at=job.finished_at,
    )


def episode_out(ep: Episode) -> EpisodeOut:
    return EpisodeOut(episode=ep.number, record=ep.record)
