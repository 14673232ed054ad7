"""Resume a failed or cancelled job from its checkpoint."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.deps import Authorized, ServiceDep
from server.schemas import JobOut, job_out

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/{job_id}/resume", dependencies=[Authorized], response_model=JobOut,
             responses={404: {"description": "no such job"},
                        409: {"description": "the job is not failed or cancelled"}})
def resume_job(job_id: str, service: ServiceDep) -> JobOut:
    """Queue a failed or cancelled job again; it continues from its checkpoint (a frontier starts over)."""
    return job_out(service.resume(job_id))
