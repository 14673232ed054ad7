"""The error answers of the API as the OpenAPI document shows them: each route lists every status it
can answer with its body, so a client generated from /openapi.json knows them all."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel


class ErrorOut(BaseModel):
    """Every error but a 422: what was wrong and what to do."""

    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(BaseModel):
    """A 422: the field (`loc`), what was wrong with it and what would be accepted (`msg`), and its kind."""

    detail: list[FieldError]


DESCRIPTIONS = {
    400: "the Host header does not name this server (AMC_ALLOWED_HOSTS), or a malformed Content-Length",
    401: "missing or wrong bearer token (`Authorization: Bearer <token>`)",
    404: "no such job, or no such artifact",
    409: "the job's state does not allow this",
    413: "the request body is over this route's limit (AMC_MAX_BODY_KB; uploads: AMC_MAX_UPLOAD_MB)",
    422: "a field is wrong: `loc` names it, `msg` says what would be accepted",
    502: "the device answered, but its measurement failed",
    503: "the device cannot be reached",
}


def responses(*codes: int, json_errors: bool = False) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route or router for these status codes. `json_errors` for a route whose
    own answer is not JSON (a log, a file): its errors are JSON all the same, and the document says so."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        model = ValidationErrorOut if code == 422 else ErrorOut
        if json_errors:  # FastAPI would list the error body under the route's own media type
            schema = {"$ref": f"#/components/schemas/{model.__name__}"}
            out[code] = {"description": DESCRIPTIONS[code], "content": {"application/json": {"schema": schema}}}
        else:
            out[code] = {"model": model, "description": DESCRIPTIONS[code]}
    return out


# A route that queues a job (submit, resume) answers 503 when the queue is full.
QUEUE_FULL: dict[int | str, dict[str, Any]] = {503: {
    "model": ErrorOut,
    "description": "as many jobs are queued as the server accepts (AMC_MAX_QUEUED_JOBS); try again after "
                   "`Retry-After` seconds",
    "headers": {"Retry-After": {"description": "seconds to wait before submitting again",
                                "schema": {"type": "integer"}}},
}}


# Every route passes the request guard (server/api/guard.py): a wrong Host or an oversized body.
GUARD = responses(400, 413)
# ... and every route but the public ones needs the token.
GUARDED = responses(400, 401, 413)


def json_body(model: BaseModel, *, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A response model built (so validated) by the route, serialized once. Returned as a model, FastAPI
    would dump it, validate the dump against the route's `response_model` again (in the thread pool, for
    a plain `def` route: one more hop) and serialize that; the route keeps `response_model=` for the
    OpenAPI document."""
    return Response(model.model_dump_json(), status_code=status_code, headers=headers, media_type="application/json")
