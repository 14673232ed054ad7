"""Uploads: PyTorch weights (never unpickled) or ONNX files, referenced by id in a job spec."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from server.api.deps import Authorized, KnownQuery, SettingsDep, StoreDep
from server.api.responses import GUARDED, responses
from server.api.upload_body import REQUEST_BODY, receive_upload
from server.schemas import UploadOut
from server.uploads import store_upload

router = APIRouter(prefix="/uploads", tags=["uploads"], dependencies=[Authorized, KnownQuery], responses=GUARDED)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UploadOut,
             openapi_extra={"requestBody": REQUEST_BODY}, responses=responses(413, 422))
async def upload(request: Request, store: StoreDep, settings: SettingsDep) -> UploadOut:
    """Upload weights (.pt/.pth/.th state dict, loaded with weights_only=True, or .safetensors) or an .onnx model."""
    incoming, filename = await receive_upload(request, settings.uploads_dir, max_bytes=settings.max_upload_bytes)
    up = await run_in_threadpool(store_upload, store, settings.uploads_dir, incoming, filename=filename)
    return UploadOut(id=up.id, kind=up.kind, filename=up.filename, size=up.size, sha256=up.sha256)
