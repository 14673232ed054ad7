"""FastAPI dependencies, as `Annotated` aliases (tests swap them with `app.dependency_overrides`).

They are `async def` although they await nothing: FastAPI runs a plain `def` dependency in its thread
pool, and a hop there and back for each of these attribute reads cost more than the request's own work
(a status poll went through five of them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from server.core.config import Settings
from server.core.security import token_matches
from server.jobs import JobService
from server.store import Store

_bearer = HTTPBearer(auto_error=False, description="AMC_API_TOKEN, or the token in <data_dir>/api-token")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_service(request: Request) -> JobService:
    return request.app.state.service


async def get_token(request: Request) -> str:
    return request.app.state.api_token


async def require_token(
    token: Annotated[str, Depends(get_token)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Every route but /healthz, the API documents and the status page's files needs `Authorization: Bearer
    <token>`. The request guard (server/api/guard.py) already refused a request without it before its body
    was read; this dependency puts the requirement in the OpenAPI document (and checks it once more)."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not token_matches(credentials.credentials, token):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong bearer token; send `Authorization: Bearer <AMC_API_TOKEN>` "
                   "(the token is in <data_dir>/api-token unless AMC_API_TOKEN is set)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _query_names(dependant: Dependant) -> set[str]:
    names = {f.alias for f in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def known_query(request: Request) -> None:
    """A query parameter the route does not take is refused (422 naming it), not silently ignored:
    what the OpenAPI document does not describe, the server does not accept."""
    if not request.scope.get("query_string"):
        return
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if route is None or dependant is None:
        return
    taken = getattr(route, "_amc_query_names", None)
    if taken is None:  # once per route: its parameters never change
        taken = frozenset(_query_names(dependant))
        route._amc_query_names = taken
    unknown = [k for k in request.query_params if k not in taken]
    if unknown:
        offered = ", ".join(sorted(taken)) or "none"
        raise RequestValidationError([{"loc": ("query", name), "type": "extra_forbidden", "input": request.query_params[name],
                                       "msg": f"unknown query parameter; this route takes: {offered}"}
                                      for name in dict.fromkeys(unknown)])


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]
ServiceDep = Annotated[JobService, Depends(get_service)]
Authorized = Depends(require_token)
KnownQuery = Depends(known_query)
