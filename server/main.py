"""The FastAPI app: `create_app(settings)` builds it, the lifespan starts the store and the workers.

Run with `amc serve`, or `uvicorn --factory server.main:create_app` (settings from AMC_* variables).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from server.api.errors import add_error_handlers
from server.api.routes import devices, health, jobs, pages, uploads
from server.api.routes.pages import STATIC
from server.core.config import Settings
from server.core.security import ensure_token
from server.jobs import JobService
from server.store import Store

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app; nothing starts until its lifespan runs (uvicorn / TestClient)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.prepare_dirs()
        token, _created = ensure_token(settings)
        store = Store(settings.db_url)
        service = JobService(store=store, settings=settings)
        app.state.settings, app.state.store, app.state.service, app.state.api_token = settings, store, service, token
        service.start()
        log.info("AMC service ready; data in %s, database %s", settings.data_dir, store.engine.url)
        try:
            yield
        finally:
            service.stop()
            store.close()

    app = FastAPI(
        title="AMC Service",
        summary="Prune CNNs for phones with AMC (DDPG) and measure real latency.",
        version=health.VERSION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    upload_limit = int(settings.max_upload_mb * 1024 * 1024) + 64 * 1024  # + multipart framing

    @app.middleware("http")
    async def refuse_oversized_uploads(request: Request, call_next) -> Response:  # noqa: ANN001
        # Refuse before the body is read and spooled; the streaming check in save_upload catches
        # uploads that send no Content-Length.
        length = request.headers.get("content-length")
        if request.url.path == "/uploads" and length and length.isdigit() and int(length) > upload_limit:
            return JSONResponse({"detail": f"the upload is larger than this server's limit of "
                                           f"{settings.max_upload_mb:g} MB (AMC_MAX_UPLOAD_MB)"}, status_code=413)
        return await call_next(request)

    add_error_handlers(app)
    for module in (jobs, devices, uploads, health, pages):
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
