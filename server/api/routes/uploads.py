"""Uploads: PyTorch weights (never unpickled) or ONNX files, referenced by id in a job spec."""

from __future__ import annotations

from fastapi import APIRouter, UploadFile, status

from server.api.deps import Authorized, SettingsDep, StoreDep
from server.schemas import UploadOut
from server.uploads import save_upload

router = APIRouter(prefix="/uploads", tags=["uploads"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Authorized], response_model=UploadOut)
def upload(file: UploadFile, store: StoreDep, settings: SettingsDep) -> UploadOut:
    """Upload weights (.pt/.pth state dict, loaded with weights_only=True) or an .onnx model."""
    up = save_upload(store, settings.uploads_dir, filename=file.filename or "upload", stream=file.file,
                     max_bytes=int(settings.max_upload_mb * 1024 * 1024))
    return UploadOut(id=up.id, kind=up.kind, filename=up.filename, size=up.size, sha256=up.sha256)
