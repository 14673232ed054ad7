"""The request guard: one ASGI middleware in front of every route, so that nothing of a request is
read, parsed or spooled before it has passed.

In order: the Host header must name this server (loopback or `AMC_ALLOWED_HOSTS`: a web page that
rebinds its own name to 127.0.0.1 is refused); every route but `/healthz`, the API documents and the
status page's files needs the bearer token (checked from the headers, before the body is read); the
body may not exceed its route's limit, checked against Content-Length first and counted while it is
read (chunked bodies too)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Readable without the token (GET/HEAD only): liveness, the API's own description, the status page's
# HTML and static files. The page then asks for the token and sends it with every API call.
PUBLIC_PATHS = frozenset({"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
PUBLIC_PREFIXES = ("/static/", "/ui/jobs/")

UNAUTHORIZED = ("missing or wrong bearer token; send `Authorization: Bearer <token>` (AMC_API_TOKEN, or the "
                "token in <data_dir>/api-token)")


class BodyTooLarge(HTTPException):
    """A request body ran past its route's limit while it was read."""

    def __init__(self, limit: int, setting: str):
        super().__init__(413, f"the request body is larger than this server's limit of {limit} bytes for this "
                              f"route ({setting})")


@dataclass(frozen=True)
class GuardRules:
    """What the guard enforces; `token` is read per request (the lifespan may generate it)."""

    trusted_hosts: frozenset[str]
    token: Callable[[], str | None]
    max_body: int  # bytes, every route but uploads
    max_upload_body: int  # bytes, POST /uploads (the file plus its multipart framing)


def host_name(header: str) -> str:
    """The name of a Host header without its port (`[::1]:8000` -> `::1`), lowercase."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def is_public(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))


def bearer_matches(header: str | None, token: str | None) -> bool:
    if not header or not token:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware: trusted host, bearer token and body size, before the app sees the request."""

    def __init__(self, app: ASGIApp, rules: GuardRules):
        self.app, self.rules = app, rules

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no websockets here
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
            return
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        host = host_name(headers.get("host", ""))
        if host not in self.rules.trusted_hosts:
            await _answer(send, 400, f"the Host header {headers.get('host', '')!r} does not name this server; use "
                                     "http://127.0.0.1:PORT/ or http://localhost:PORT/, or have the operator add "
                                     "the name to AMC_ALLOWED_HOSTS (names are checked to stop DNS rebinding)")
            return
        method, path = scope["method"], scope["path"]
        if not is_public(method, path) and not bearer_matches(headers.get("authorization"), self.rules.token()):
            await _answer(send, 401, UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
            return
        upload = method == "POST" and path.rstrip("/") == "/uploads"
        limit = self.rules.max_upload_body if upload else self.rules.max_body
        setting = "AMC_MAX_UPLOAD_MB" if upload else "AMC_MAX_BODY_KB"
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _answer(send, 400, f"Content-Length {length!r} is not a number of bytes")
                return
            if int(length) > limit:
                await _answer(send, 413, BodyTooLarge(limit, setting).detail)
                return

        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:  # read outside a route's exception handlers (e.g. while parsing a form)
            if started:
                raise
            await _answer(send, 413, str(exc.detail))

