"""Jobs: submit, list, inspect, follow episodes, cancel, download artifacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from server.api.deps import Authorized, KnownQuery, ServiceDep, StoreDep
from server.api.responses import GUARDED, QUEUE_FULL, json_body, responses
from server.artifacts import ARTIFACTS, FRONTIER_ARTIFACTS
from server.schemas import (
    EpisodeList,
    JobDetail,
    JobList,
    JobOut,
    JobSpec,
    episode_out,
    job_detail,
    job_out,
    job_summary,
)
from server.store import JobState

# What an artifact is served as (server/artifacts.py names each file's type).
ARTIFACT_CONTENT = {
    "description": "the file",
    "content": {t.split(";")[0]: {"schema": {"type": "string", "format": "binary"}}
                for t in sorted({*ARTIFACTS.values(), *FRONTIER_ARTIFACTS.values()})},
}

MAX_INDEX = 2**31 - 1  # offsets and episode numbers the database can compare

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authorized, KnownQuery], responses={**GUARDED, **responses(422)})


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobOut,
             responses={201: {"headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}},
                        **QUEUE_FULL})
def submit_job(spec: JobSpec, service: ServiceDep) -> Response:
    """Validate a job spec fully (model, data, target, device, budget) and queue it."""
    job = service.submit(spec.model_dump(exclude_none=True))
    return json_body(job_out(job), status_code=status.HTTP_201_CREATED, headers={"Location": f"/jobs/{job.id}"})


@router.get("", response_model=JobList)
def list_jobs(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0,
    state: JobState | None = None,
) -> Response:
    """Jobs, newest first, with state and progress."""
    jobs = store.list_jobs(limit=limit, offset=offset, state=state)
    return json_body(JobList(jobs=[job_summary(j) for j in jobs], counts=store.count_jobs()))


@router.get("/{job_id}", response_model=JobDetail, responses=responses(404))
async def get_job(job_id: str, store: StoreDep, service: ServiceDep) -> Response:
    """A job's state, progress, best result so far and, once finished, its report and artifact links."""

    def read() -> Response:
        job = store.get_job(job_id)
        return json_body(job_detail(job, artifacts=service.available_artifacts(job)))

    # What clients poll: one primary-key read, on the event loop where that cannot stall (SQLite) rather
    # than a hop through the thread pool that cost more than the read under load.
    return read() if store.local_reads else await run_in_threadpool(read)


@router.get("/{job_id}/episodes", response_model=EpisodeList, responses=responses(404))
def list_episodes(job_id: str, store: StoreDep, after: Annotated[int, Query(ge=0, le=MAX_INDEX)] = 0) -> Response:
    """Every finished episode (reward, accuracy, cost, per-layer ratios); `after` for incremental polling."""
    job = store.get_job(job_id)
    episodes = store.list_episodes(job_id, after=after)
    return json_body(EpisodeList(job_id=job_id, state=JobState(job.state), episodes=[episode_out(e) for e in episodes]))


@router.post("/{job_id}/cancel", response_model=JobOut, responses=responses(404, 409))
def cancel_job(job_id: str, service: ServiceDep) -> Response:
    """Cancel a queued or running job (a running one stops within seconds)."""
    return json_body(job_out(service.cancel(job_id)))


@router.get("/{job_id}/log", response_class=PlainTextResponse,
            responses=responses(400, 401, 404, 413, 422, json_errors=True))
def job_log(job_id: str, service: ServiceDep) -> PlainTextResponse:
    """The job process's log (kept for failed jobs)."""
    path = service.log_path(job_id)
    return PlainTextResponse(path.read_text(errors="replace")[-1_000_000:] if path else "")


@router.get("/{job_id}/artifacts/{name:path}", response_class=FileResponse,
            responses={200: ARTIFACT_CONTENT, **responses(400, 401, 404, 409, 413, 422, json_errors=True)})
def get_artifact(job_id: str, name: str, service: ServiceDep) -> FileResponse:
    """A finished job's file: model.onnx, model.tflite, model.pt, report.json, report.md, policy.json, episodes.csv;
    a frontier job's frontier.json, frontier.svg, report.md and TARGET_FOLDER/FILE (e.g. flops-0.5/model.onnx)."""
    path, media_type = service.artifact(job_id, name)
    # The page shows frontier.svg; nothing served here needs to run scripts or load anything.
    return FileResponse(path, media_type=media_type, filename=f"{job_id[:8]}-{name.replace('/', '-')}",
                        headers={"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                                 "X-Content-Type-Options": "nosniff"})
