"""Domain errors -> HTTP errors, in one place. 422 bodies have FastAPI's own shape
(`{"detail": [{"loc": ["body", FIELD], "msg": ..., "type": ...}]}`) so clients parse one format."""

from __future__ import annotations

from fastapi import HTTPException, status

from compressor.errors import ConfigError
from server.jobs import ArtifactNotFound, ArtifactNotReady
from server.store import InvalidTransition, JobNotFound
from server.uploads import UploadRejected, UploadTooLarge


def unprocessable(exc: ConfigError, *, where: str = "body") -> HTTPException:
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT,
        detail=[{"loc": [where, exc.field], "msg": exc.message, "type": type(exc).__name__}],
    )


def to_http(exc: Exception) -> HTTPException:
    """The HTTP error for a domain error (re-raise anything else)."""
    match exc:
        case ConfigError():
            return unprocessable(exc)
        case JobNotFound() | ArtifactNotFound():
            return HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc))
        case InvalidTransition() | ArtifactNotReady():
            return HTTPException(status.HTTP_409_CONFLICT, detail=str(exc))
        case UploadTooLarge():
            return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=str(exc))
        case UploadRejected():
            return HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail=[{"loc": ["body", "file"], "msg": str(exc), "type": "UploadRejected"}],
            )
    raise exc


DOMAIN_ERRORS = (ConfigError, JobNotFound, ArtifactNotFound, InvalidTransition, ArtifactNotReady, UploadRejected)
