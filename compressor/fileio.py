"""Atomic file writes: readers see the old file or the new one, never half of one, and a failed write
leaves nothing behind. The data goes to a temp file in the target's folder (so the rename stays on one
file system), is fsynced, then renamed over the target."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path


def _create_temp(path: Path, mode: int | None) -> Path:
    # Created with O_EXCL under a random name; with mode None the kernel applies the umask, as open() would.
    # (Reading the umask with os.umask would briefly change it for every thread of the server.)
    while True:
        tmp = path.with_name(f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
        except FileExistsError:
            continue
        try:
            if mode is not None:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        return tmp


@contextlib.contextmanager
def atomic_target(path: str | Path, *, mode: int | None = None) -> Iterator[Path]:
    """A fresh temp file next to `path`, for writers that need a file name (torch.save, converters).

    When the block succeeds the file is fsynced and renamed onto `path`; when it fails it is removed.
    The temp name ends with `path`'s suffix, for writers that choose a format by it. `mode` sets the
    permissions exactly; None (the default) gives what open() would (0o666 less the umask), so a
    server running with umask 077 gets private artifacts.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path, mode)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_chunks(path: str | Path, chunks: Iterable[bytes], *, mode: int | None = None) -> None:
    """atomic_write for data that arrives in pieces (an upload stream); if `chunks` raises, nothing is written."""
    with atomic_target(path, mode=mode) as tmp, open(tmp, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)


def atomic_write(path: str | Path, data: bytes, *, mode: int | None = None) -> None:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    atomic_write_chunks(path, (data,), mode=mode)
