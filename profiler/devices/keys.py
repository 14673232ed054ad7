"""The RSA key pair this host uses to authenticate to phones over ADB. Generated on first use with
adb-shell's keygen, stored with 0600 permissions (a phone trusts whoever holds it)."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from profiler.paths import config_dir

log = logging.getLogger(__name__)


def default_key_path() -> Path:
    return Path(os.environ.get("AMC_ADB_KEY") or config_dir() / "adbkey")


def ensure_adb_key(path: Path | None = None) -> Path:
    """Create `path` (private key) and `path.pub` if absent; tighten permissions; return `path`."""
    path = Path(path or default_key_path())
    if not path.is_file():
        from adb_shell.auth.keygen import keygen

        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        old_umask = os.umask(0o077)
        try:
            keygen(str(path))
        finally:
            os.umask(old_umask)
        log.info("generated ADB key pair %s(.pub); phones will ask to trust it once", path)
    for p in (path, Path(str(path) + ".pub")):
        if p.exists() and stat.S_IMODE(p.stat().st_mode) != 0o600:
            os.chmod(p, 0o600)
    return path


def load_signer(path: Path | None = None):
    """An adb-shell signer for the (created if needed) key pair."""
    from adb_shell.auth.sign_cryptography import CryptographySigner

    return CryptographySigner(str(ensure_adb_key(path)))
