"""compressor.fileio: atomic writes replace the whole file or nothing, with the permissions asked for."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from compressor.fileio import atomic_target, atomic_write, atomic_write_chunks


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_atomic_write_replaces_content_with_the_mode_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.json"
    atomic_write(path, b"old", mode=0o644)
    assert path.read_bytes() == b"old"
    assert _mode(path) == 0o644
    atomic_write(path, b"new", mode=0o600)
    assert path.read_bytes() == b"new"
    assert _mode(path) == 0o600
    assert os.listdir(path.parent) == ["report.json"]


def test_mode_none_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a.bin", b"x", mode=None)
        atomic_write(tmp_path / "b.bin", b"x")  # the default: a server with umask 077 gets private files
        os.umask(0o077)
        atomic_write(tmp_path / "c.bin", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.bin") == 0o640 and _mode(tmp_path / "b.bin") == 0o640
    assert _mode(tmp_path / "c.bin") == 0o600


def test_failure_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    atomic_write(path, b"good")

    def chunks() -> Iterator[bytes]:
        yield b"half"
        raise OSError("stream broke")

    with pytest.raises(OSError, match="stream broke"):
        atomic_write_chunks(path, chunks())
    with pytest.raises(RuntimeError), atomic_target(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".pt" and tmp.exists()
        tmp.write_bytes(b"partial")
        raise RuntimeError("converter failed")
    assert path.read_bytes() == b"good"
    assert os.listdir(tmp_path) == ["model.pt"]
