"""Liveness."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from server.api.deps import KnownQuery, ServiceDep, StoreDep
from server.api.responses import GUARD, responses
from server.schemas import Health

router = APIRouter(tags=["health"], dependencies=[KnownQuery], responses={**GUARD, **responses(422)})  # no token: a load balancer or `curl` may ask

try:
    VERSION = version("amc-service")
except PackageNotFoundError:  # running from a checkout
    VERSION = "0.0.0+local"


@router.get("/healthz", response_model=Health)
def healthz(store: StoreDep, service: ServiceDep) -> Health:
    """The server answers and its database is reachable."""
    return Health(status="ok", version=VERSION, jobs=store.count_jobs(), running=service.running_ids())
