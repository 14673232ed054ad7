"""The bearer token that guards every endpoint that changes anything."""

from __future__ import annotations

import logging
import os
import secrets

from server.core.config import Settings, is_loopback

log = logging.getLogger(__name__)


class InsecureBindError(RuntimeError):
    """Listening outside loopback without an explicitly configured token."""


def ensure_token(settings: Settings) -> tuple[str, bool]:
    """The API token and whether it was generated just now.

    `AMC_API_TOKEN` wins; otherwise the token stored in `<data_dir>/api-token` (mode 0600), created
    on first start.
    """
    if settings.api_token:
        return settings.api_token, False
    path = settings.token_file
    if path.is_file():
        token = path.read_text().strip()
        if token:
            return token, False
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL + 0600 so that the token is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    os.chmod(path, 0o600)
    log.warning("generated an API token and stored it in %s (mode 0600)", path)
    return token, True


def check_bind(host: str, settings: Settings) -> None:
    """Refuse a non-loopback address unless the operator set a token on purpose (AMC_API_TOKEN)."""
    if not is_loopback(host) and not settings.api_token:
        raise InsecureBindError(
            f"refusing to listen on {host}, which is not a loopback address, without a configured token; "
            "set AMC_API_TOKEN (16+ characters) or listen on 127.0.0.1"
        )


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())
