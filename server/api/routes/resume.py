"""Resume a failed or cancelled job from its checkpoint."""

from __future__ import annotations

from fastapi import APIRouter, Response

from server.api.deps import Authorized, KnownQuery, ServiceDep
from server.api.responses import GUARDED, QUEUE_FULL, json_body, responses
from server.schemas import JobOut, job_out

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Authorized, KnownQuery],
                   responses={**GUARDED, **responses(422)})


@router.post("/{job_id}/resume", response_model=JobOut, responses={**responses(404, 409), **QUEUE_FULL})
def resume_job(job_id: str, service: ServiceDep) -> Response:
    """Queue a failed or cancelled job again; it continues from its checkpoint (a frontier starts over)."""
    return json_body(job_out(service.resume(job_id)))
