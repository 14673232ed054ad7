"""The web status page: static HTML + a small vanilla JS file drawing SVG charts (no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parents[2] / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
def index() -> FileResponse:
    """Jobs with state and progress, and the devices table."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/ui/jobs/{job_id}")
def job_page(job_id: str) -> FileResponse:
    """One job: reward curve, accuracy-versus-cost scatter with the Pareto front, best policy, latency."""
    return FileResponse(STATIC / "index.html", media_type="text/html")
