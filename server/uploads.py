"""Uploaded model files: PyTorch weights (loaded only with `torch.load(weights_only=True)`, never
unpickled) and ONNX files (checked with `onnx.checker`). Size-limited while streaming; private (0600)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

from server.store import Store, Upload

log = logging.getLogger(__name__)

# `.th`: what the widely used CIFAR ResNet checkpoints are named; `amc compress --weights` reads them too.
KINDS = {".pt": "weights", ".pth": "weights", ".th": "weights", ".bin": "weights", ".safetensors": "weights",
         ".onnx": "onnx"}


class UploadRejected(Exception):
    """The file is not something we accept; the message says why and what would be accepted."""


class UploadTooLarge(UploadRejected):
    pass


def sniff_suffix(head: bytes) -> str | None:
    """The file type of a file sent without a usable name, from its first bytes (None: cannot tell)."""
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        return ".pt"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # torch.save's legacy pickle format
        return ".pt"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return ".safetensors"  # 8-byte header length, then the JSON header
    if head[:1] == b"\x08":  # protobuf field 1 (ir_version), as every ONNX file starts
        return ".onnx"
    return None


def _suffix_of(filename: str | None, head: bytes) -> str:
    suffix = Path(filename or "").suffix.lower()
    if suffix in KINDS:
        return suffix
    if suffix and filename:
        raise UploadRejected(f"{filename!r}: unsupported file type {suffix}; upload one of {', '.join(sorted(KINDS))}")
    sniffed = sniff_suffix(head)
    if sniffed is None:
        raise UploadRejected(f"{filename or 'the file'} has no file type in its name and its contents are not "
                             f"recognised; send a file name ending in one of {', '.join(sorted(KINDS))}")
    return sniffed


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


class IncomingFile:
    """An upload while it arrives: written to a private temp file in the uploads folder (0600),
    counted (UploadTooLarge past `max_bytes`) and hashed. `store_upload` checks and records it."""

    def __init__(self, uploads_dir: Path, *, max_bytes: int):
        self.path = uploads_dir / f".incoming-{uuid.uuid4().hex}"
        self.max_bytes, self.size, self.head = max_bytes, 0, b""
        self.digest = hashlib.sha256()
        self._fh = os.fdopen(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600), "wb")

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            raise UploadTooLarge(f"the file is larger than this server's limit of {self.max_bytes} bytes "
                                 "(AMC_MAX_UPLOAD_MB)")
        if len(self.head) < 16:
            self.head += data[:16 - len(self.head)]
        self.digest.update(data)
        self._fh.write(data)

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()

    def discard(self) -> None:
        self._fh.close()
        self.path.unlink(missing_ok=True)


def store_upload(store: Store, uploads_dir: Path, incoming: IncomingFile, *, filename: str | None) -> Upload:
    """Check a received file (type from its name, or its contents when it came without one), keep it
    under its id (0600) and record it; the file is removed whatever refuses it."""
    try:
        incoming.close()
        if incoming.size == 0:
            raise UploadRejected("the file is empty")
        suffix = _suffix_of(filename, incoming.head)
        kind = KINDS[suffix]
        upload_id = uuid.uuid4().hex
        final = uploads_dir / f"{upload_id}{suffix}"
        os.replace(incoming.path, final)
    except BaseException:
        incoming.discard()
        raise
    try:
        (_check_onnx if kind == "onnx" else _check_weights)(final)
    except BaseException:
        final.unlink(missing_ok=True)
        raise
    name = Path((filename or "").replace("\\", "/")).name[:255] or f"upload{suffix}"
    log.info("stored upload %s (%s, %d bytes)", upload_id, kind, incoming.size)
    return store.add_upload(upload_id=upload_id, kind=kind, filename=name, size=incoming.size,
                            sha256=incoming.digest.hexdigest(), path=str(final))

