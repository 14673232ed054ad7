"""The files a finished job serves (GET /jobs/{id}/artifacts/{name}) and what they are.

Names are untrusted: a path is built from whitelisted parts only (a top-level file, or
`<target folder>/<file>` for one of a frontier job's own targets), so no name reaches outside the job folder.
"""

from __future__ import annotations

from pathlib import Path

from server.frontier import target_dir

# The files of one search (a single job's folder, or each target's folder of a frontier job).
ARTIFACTS: dict[str, str] = {
    "model.onnx": "application/octet-stream",
    "model.tflite": "application/octet-stream",
    "model.pt": "application/octet-stream",
    "report.json": "application/json",
    "report.md": "text/markdown; charset=utf-8",
    "policy.json": "application/json",
    "episodes.csv": "text/csv; charset=utf-8",
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
