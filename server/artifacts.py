"""The files a finished job serves (GET /jobs/{id}/artifacts/{name}) and what they are, and the
per-job limit on how much a job may write.

Names are untrusted: a path is built from whitelisted parts only (a top-level file, or
`<target folder>/<file>` for one of a frontier job's own targets), so no name reaches outside the job folder.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from server.frontier import target_dir

# The files of one search (a single job's folder, or each target's folder of a frontier job).
ARTIFACTS: dict[str, str] = {
    "model.onnx": "application/octet-stream",
    "model.int8.onnx": "application/octet-stream",  # with `quantize` int8
    "model.int8.tflite": "application/octet-stream",  # with `quantize` int8 and `tflite`
    "model.tflite": "application/octet-stream",
    "model.pt": "application/octet-stream",
    "report.json": "application/json",
    "report.md": "text/markdown; charset=utf-8",
    "policy.json": "application/json",
    "episodes.csv": "text/csv; charset=utf-8",
    "curves.svg": "image/svg+xml",
}
# A frontier's own files, beside its report.md (the table and the plot).
FRONTIER_ARTIFACTS: dict[str, str] = {
    "frontier.json": "application/json",
    "frontier.svg": "image/svg+xml",
}


def artifact_names(folder: Path, targets: list[str] | None = None) -> list[str]:
    """The artifact names a job folder serves now: its top-level files, then each target's files."""
    names = [n for n in (*ARTIFACTS, *FRONTIER_ARTIFACTS) if (folder / n).is_file()]
    for target in targets or []:
        sub = target_dir(target)
        names += [f"{sub}/{n}" for n in ARTIFACTS if (folder / sub / n).is_file()]
    return names


def artifact_file(folder: Path, name: str, targets: list[str] | None = None) -> tuple[Path, str] | None:
    """(path, media type) of an artifact name; None when no job serves such a name."""
    top, sep, rest = name.partition("/")
    if not sep:
        kind = ARTIFACTS.get(name) or FRONTIER_ARTIFACTS.get(name)
        return (folder / name, kind) if kind else None
    if top in {target_dir(t) for t in targets or []} and rest in ARTIFACTS:
        return folder / top / rest, ARTIFACTS[rest]
    return None


class ArtifactLimitExceeded(Exception):
    """A job's folder grew past this server's per-job limit (AMC_MAX_JOB_MB)."""

    def __init__(self, folder: Path, size: int, limit: int):
        super().__init__(f"the job's files take {size / 2**20:.1f} MB, over this server's per-job limit of "
                         f"{limit / 2**20:.1f} MB (AMC_MAX_JOB_MB); raise the limit or ask for less (fewer "
                         f"targets, no tflite), then resume the job (its checkpoint is kept in {folder})")
        self.folder, self.size, self.limit = folder, size, limit


def folder_bytes(folder: Path) -> int:
    """Bytes of the regular files under `folder` (links are not followed: a reference upload counts once, there)."""
    total = 0
    stack = [folder]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    return total


class FolderQuota:
    """The per-job size limit: `check()` raises ArtifactLimitExceeded once the folder is larger than
    `limit` bytes. It walks the folder once per `every_s` or per `every_calls` checks, whichever comes
    first, or when forced (a job checks at every event and once more before it reports success): fast
    episodes cannot write past the limit for long between two walks."""

    def __init__(self, folder: Path, limit: int | None, *, every_s: float = 2.0, every_calls: int = 10):
        self.folder, self.limit, self.every_s, self.every_calls = folder, limit, every_s, every_calls
        self._last = -float("inf")
        self._calls = 0

    def check(self, *, force: bool = False) -> None:
        if self.limit is None:
            return
        now = time.monotonic()
        self._calls += 1
        if not force and now - self._last < self.every_s and self._calls < self.every_calls:
            return
        self._last, self._calls = now, 0
        size = folder_bytes(self.folder)
        if size > self.limit:
            raise ArtifactLimitExceeded(self.folder, size, self.limit)
