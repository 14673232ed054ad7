"""The bearer token that guards every endpoint but `/healthz`, `/docs` and the status page's files."""

from __future__ import annotations

import logging
import os
import secrets
import stat
from pathlib import Path

from server.core.config import Settings, is_loopback

log = logging.getLogger(__name__)


class InsecureBindError(RuntimeError):
    """Listening outside loopback without an explicitly configured token."""


class TokenFileError(RuntimeError):
    """The stored token file cannot be trusted (readable by others, a link, not a file)."""


def _read_token_file(path: Path) -> str | None:
    """The token stored at `path`, None when there is none; TokenFileError when it is not private."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link
        raise TokenFileError(f"{path} cannot be opened safely ({exc.strerror}); it must be a regular file, not a "
                             f"link: remove it (rm {path}) and a new token is generated on the next start") from None
    with os.fdopen(fd) as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise TokenFileError(f"{path} is not a regular file; remove it (rm {path}) and start again")
        if st.st_uid != os.getuid():
            raise TokenFileError(f"{path} belongs to another user (uid {st.st_uid}); remove it, or run the server "
                                 "as the owner of its data dir")
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TokenFileError(f"{path} is readable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                                 f"run `chmod 600 {path}` (and consider the token leaked: remove the file to "
                                 "get a new one)")
        return fh.read().strip() or None


def ensure_token(settings: Settings) -> tuple[str, bool]:
    """The API token and whether it was generated just now.

    `AMC_API_TOKEN` wins; otherwise the token stored in `<data_dir>/api-token` (mode 0600), created
    on first start. A stored file that others may read, or a link, is refused (TokenFileError).
    """
    if settings.api_token:
        return settings.api_token, False
    path = settings.token_file
    token = _read_token_file(path)
    if token:
        return token, False
    settings.prepare_dirs()
    token = secrets.token_urlsafe(32)
    # O_EXCL + O_NOFOLLOW + 0600: never readable by others, not even for an instant, and never written
    # through a link someone placed there. An empty file left by a crash is replaced the same way.
    path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # another server created it just now: use that one
        again = _read_token_file(path)
        if again:
            return again, False
        raise TokenFileError(f"{path} appeared empty while this server started; remove it and start again") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
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
