"""The FastAPI app: `create_app(settings)` builds it, the lifespan starts the store and the workers.

Run with `amc serve`, or `uvicorn --factory server.main:create_app` (settings from AMC_* variables).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from server.api.errors import add_error_handlers
from server.api.guard import GuardRules, RequestGuard
from server.api.routes import devices, health, jobs, pages, resume, uploads
from server.api.routes.pages import STATIC
from server.core.config import Settings
from server.core.security import ensure_token
from server.devices import DeviceDirectory
from server.jobs import JobService, settle_heap
from server.store import Store

log = logging.getLogger(__name__)

MULTIPART_FRAMING = 64 * 1024  # an upload's body is its file plus the multipart boundaries and headers


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing starts until its lifespan runs (uvicorn / TestClient)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything the server and its job processes (spawned from here) create is private to its user.
        umask = os.umask(0o077)
        settings.prepare_dirs()
        token, _created = ensure_token(settings)
        store = Store(settings.db_url)
        service = JobService(store=store, settings=settings, _devices=DeviceDirectory.for_settings(settings),
                             freeze_heap=True)
        app.state.settings, app.state.store, app.state.service, app.state.api_token = settings, store, service, token
        service.start()
        settle_heap()
        log.info("AMC service ready; data in %s, database %s", settings.data_dir, store.engine.url)
        try:
            yield
        finally:
            service.stop()
            store.close()
            os.umask(umask)

    app = FastAPI(
        title="AMC Service",
        summary="Prune CNNs for phones with AMC (DDPG) and measure real latency.",
        version=health.VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    # Outermost: host, token and body size are checked before anything reads the request.
    app.add_middleware(RequestGuard, rules=GuardRules(
        trusted_hosts=settings.trusted_hosts,
        token=lambda: getattr(app.state, "api_token", None) or settings.api_token,
        max_body=settings.max_body_bytes,
        max_upload_body=settings.max_upload_bytes + MULTIPART_FRAMING,
    ))
    add_error_handlers(app)
    for module in (jobs, resume, devices, uploads, health, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
