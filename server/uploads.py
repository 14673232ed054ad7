"""Uploaded model files: PyTorch weights (loaded only with `torch.load(weights_only=True)`, never
unpickled) and ONNX files (checked with `onnx.checker`). Size-limited while streaming."""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from compressor.fileio import atomic_write_chunks
from server.store import Store, Upload

log = logging.getLogger(__name__)

KINDS = {".pt": "weights", ".pth": "weights", ".bin": "weights", ".safetensors": "weights", ".onnx": "onnx"}


class UploadRejected(Exception):
    """The file is not something we accept; the message says why and what would be accepted."""


class UploadTooLarge(UploadRejected):
    pass


def _kind_of(filename: str) -> str:
    suffix = Path(filename).suffix.lower()
    if suffix not in KINDS:
        raise UploadRejected(f"{filename!r}: unsupported file type {suffix or '(none)'}; "
                             f"upload one of {', '.join(sorted(KINDS))}")
    return KINDS[suffix]


def _check_weights(path: Path) -> None:
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise UploadRejected("safetensors is not installed on this server; upload a .pt state dict") from None
        try:
            load_file(str(path))
        except Exception as exc:
            raise UploadRejected(f"not a valid safetensors file: {exc}") from None
        return
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UploadRejected(
            "not a weights file that loads with torch.load(weights_only=True) (pickled objects are refused); "
            f"save a state dict with torch.save(model.state_dict(), path): {type(exc).__name__}: {exc}"
        ) from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise UploadRejected("the file holds no state dict (a mapping of parameter names to tensors)")


def _check_onnx(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise UploadRejected(f"not a valid ONNX model: {exc}") from None


def save_upload(store: Store, uploads_dir: Path, *, filename: str, stream: BinaryIO, max_bytes: int) -> Upload:
    """Stream to disk (refusing more than `max_bytes`), check the content, record it."""
    kind = _kind_of(filename)
    upload_id = uuid.uuid4().hex
    final = uploads_dir / f"{upload_id}{Path(filename).suffix.lower()}"
    digest, size = hashlib.sha256(), 0

    def limited() -> Iterator[bytes]:
        nonlocal size
        while chunk := stream.read(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise UploadTooLarge(f"the file is larger than this server's limit of {max_bytes} bytes "
                                     "(AMC_MAX_UPLOAD_MB)")
            digest.update(chunk)
            yield chunk
        if size == 0:
            raise UploadRejected("the file is empty")

    try:
        atomic_write_chunks(final, limited(), mode=None)
        (_check_onnx if kind == "onnx" else _check_weights)(final)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    log.info("stored upload %s (%s, %d bytes)", upload_id, kind, size)
    return store.add_upload(upload_id=upload_id, kind=kind, filename=Path(filename).name[:255], size=size,
                            sha256=digest.hexdigest(), path=str(final))
