"""Domain errors -> HTTP errors, in one place: exception handlers registered on the app, so routes
raise nothing HTTP-specific and nothing below them knows about HTTP.

422 bodies have FastAPI's own shape (`{"detail": [{"loc": ["body", FIELD], "msg": ..., "type": ...}]}`)
so clients parse one format; the others are `{"detail": MESSAGE}`."""

from __future__ import annotations

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from compressor.errors import AmcError, ConfigError
from profiler.errors import DeviceUnavailable, MeasurementError
from server.jobs import ArtifactNotFound, ArtifactNotReady
from server.store import DatabaseUnavailable, InvalidTransition, JobNotFound, QueueFull
from server.uploads import UploadRejected, UploadTooLarge

# The most specific class of a raised error picks its status (Starlette walks the MRO).
STATUS: dict[type[Exception], int] = {
    JobNotFound: status.HTTP_404_NOT_FOUND,
    ArtifactNotFound: status.HTTP_404_NOT_FOUND,
    InvalidTransition: status.HTTP_409_CONFLICT,
    ArtifactNotReady: status.HTTP_409_CONFLICT,
    UploadTooLarge: status.HTTP_413_CONTENT_TOO_LARGE,
    DeviceUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
    MeasurementError: status.HTTP_502_BAD_GATEWAY,
    AmcError: status.HTTP_500_INTERNAL_SERVER_ERROR,  # a domain error no route expects; say what it was
}


def _unprocessable(field: str, message: str, kind: str) -> JSONResponse:
    return JSONResponse({"detail": [{"loc": ["body", field], "msg": message, "type": kind}]},
                        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


async def _config_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConfigError)
    return _unprocessable(exc.field, exc.message, type(exc).__name__)


async def _upload_rejected(request: Request, exc: Exception) -> JSONResponse:
    return _unprocessable("file", str(exc), "UploadRejected")


async def _with_status(request: Request, exc: Exception) -> JSONResponse:
    code = next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)
    return JSONResponse({"detail": str(exc)}, status_code=code)


# How long a client refused for a full queue should wait: jobs are searches of minutes or more, so the
# queue drains slowly; retrying sooner only adds load.
QUEUE_RETRY_AFTER_S = 60


async def _queue_full(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(QUEUE_RETRY_AFTER_S)})


# A database restart takes seconds; a client asked to come back sooner than this only adds load.
DATABASE_RETRY_AFTER_S = 5


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)})


def add_error_handlers(app: FastAPI) -> None:
    """Register the domain errors' handlers on `app`."""
    app.add_exception_handler(ConfigError, _config_error)
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(QueueFull, _queue_full)
    app.add_exception_handler(UploadRejected, _upload_rejected)
    for cls in STATUS:
        app.add_exception_handler(cls, _with_status)
