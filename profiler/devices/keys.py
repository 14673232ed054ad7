"""The RSA key pair this host uses to authenticate to phones over ADB (a phone trusts whoever holds it).

Generated on first use: under an exclusive lock on `adbkey.lock` (so concurrent health checks, threads or
processes, generate one pair, not two that overwrite each other), each file written atomically with 0600
permissions, the public key first so a private key on disk always has its `.pub`. On load the pair is
checked: the `.pub` (what phones were told to trust) must be the private key's public half.
"""

from __future__ import annotations

import base64
import fcntl
import getpass
import logging
import os
import socket
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compressor.fileio import atomic_write
from profiler.errors import ProfilerError
from profiler.paths import config_dir

log = logging.getLogger(__name__)

KEY_BITS = 2048
_MODULUS_WORDS = KEY_BITS // 32
# Android's RSAPublicKey: word count, n0inv, modulus and R^2 as little-endian words, exponent.
_ANDROID_PUBKEY = struct.Struct(f"<II{KEY_BITS // 8}s{KEY_BITS // 8}sI")


class AdbKeyError(ProfilerError):
    """The ADB key pair cannot be used: unreadable, not an RSA key, or `.pub` not the private key's half."""


def default_key_path() -> Path:
    return Path(os.environ.get("AMC_ADB_KEY") or config_dir() / "adbkey")


def public_path(path: Path) -> Path:
    return Path(f"{path}.pub")


def android_public_key(private_key: Any) -> bytes:
    """The base64 `adbkey.pub` form of an RSA private key's public half (without the user@host comment)."""
    numbers = private_key.public_key().public_numbers()
    if numbers.n.bit_length() > KEY_BITS:
        raise AdbKeyError(f"the ADB key has {numbers.n.bit_length()} bits; adb uses {KEY_BITS}-bit RSA keys")
    r32 = 1 << 32
    n0inv = r32 - pow(numbers.n % r32, -1, r32)
    rr = pow(1 << KEY_BITS, 2, numbers.n)
    raw = _ANDROID_PUBKEY.pack(
        _MODULUS_WORDS,
        n0inv,
        numbers.n.to_bytes(KEY_BITS // 8, "little"),
        rr.to_bytes(KEY_BITS // 8, "little"),
        numbers.e,
    )
    return base64.b64encode(raw)


def _user_info() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f" {user}@{socket.gethostname() or 'unknown'}"


@contextmanager
def _key_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on `path.lock` (created 0600, never through a link)."""
    # Each caller opens the file itself: flock excludes other open file descriptions, so threads of one
    # process exclude each other as other processes do.
    lock = Path(f"{path}.lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AdbKeyError(
            f"cannot open the lock file {lock} ({exc.strerror}): it must be a regular file (not a link) in "
            "a folder this user can write; remove it if it is a link, or set AMC_ADB_KEY to a writable place"
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _load_private(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AdbKeyError(f"cannot read the ADB private key {path}: {exc}") from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AdbKeyError(
            f"{path} is not an unencrypted PEM private key ({exc}); restore it from a backup, or delete "
            f"{path} and {public_path(path)} to generate a new pair (phones must then trust the new .pub)"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AdbKeyError(f"{path} holds a {type(key).__name__}; ADB needs an RSA key")
    return key


def check_key_pair(path: Path) -> None:
    """Raise AdbKeyError unless `path.pub` is the public half of the private key `path`."""
    expected = android_public_key(_load_private(path))
    pub = public_path(path)
    try:
        text = pub.read_bytes()
    except OSError as exc:
        raise AdbKeyError(f"cannot read the ADB public key {pub}: {exc}") from exc
    if text.strip(b"\x00").split(maxsplit=1)[:1] != [expected]:
        raise AdbKeyError(
            f"{pub} is not the public half of {path}: phones that trust {pub} would refuse this host. "
            f"Put back the .pub that belongs to {path} (or the private key that belongs to {pub}); or "
            f"delete both to generate a new pair, which phones must then be told to trust"
        )


def _generate(path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    # The .pub first: a private key on disk then always has its public half next to it.
    atomic_write(public_path(path), android_public_key(key) + _user_info().encode(), mode=0o600)
    atomic_write(path, pem, mode=0o600)


def ensure_adb_key(path: Path | None = None) -> Path:
    """Create `path` (private key) and `path.pub` if absent, check they are a pair, tighten permissions
    to 0600; return `path`. Raises AdbKeyError for an unusable pair."""
    path = Path(path or default_key_path())
    # A complete pair is only read (its folder may be read-only); the lock is for writing one. Files
    # are replaced atomically and the private key is written last, so a private key seen here is final.
    if not (path.exists() and public_path(path).exists()):
        try:
            path.parent.mkdir(parents=True)
        except FileExistsError:
            pass  # an existing folder keeps its permissions (it may be shared, like /tmp)
        else:
            os.chmod(path.parent, 0o700)
        with _key_lock(path):
            if not path.exists():
                _generate(path)
                log.info("generated ADB key pair %s(.pub); phones will ask to trust it once", path)
            elif not public_path(path).exists():
                key = _load_private(path)
                atomic_write(public_path(path), android_public_key(key) + _user_info().encode(), mode=0o600)
                log.info("wrote the missing public key %s from %s", public_path(path), path)
    for file in (path, public_path(path)):
        if stat.S_IMODE(file.stat().st_mode) != 0o600:
            os.chmod(file, 0o600)
    check_key_pair(path)
    return path


def load_signer(path: Path | None = None) -> Any:
    """An adb-shell signer for the (created if needed, checked) key pair."""
    from adb_shell.auth.sign_cryptography import CryptographySigner

    return CryptographySigner(str(ensure_adb_key(path)))
