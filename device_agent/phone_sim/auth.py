"""ADB RSA authentication, device side: the allow-list of public keys and token signature checks.

A key in adb's `adbkey.pub` format is the base64 of Android's `RSAPublicKey` struct (u32 word count,
u32 n0inv, modulus and R^2 as little-endian u32 words, u32 exponent) followed by ` user@host`. The client
signs the 20-byte token as if it were a SHA-1 digest, with PKCS#1 v1.5 padding.
"""

from __future__ import annotations

import base64
import binascii
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


class AuthKeyError(ValueError):
    """An allow-list entry or an offered public key is not in adb's public key format."""


@dataclass(frozen=True)
class AdbPublicKey:
    modulus: int
    exponent: int
    comment: str = ""

    @classmethod
    def parse(cls, text: str | bytes) -> AdbPublicKey:
        if isinstance(text, bytes):
            text = text.decode("ascii", errors="replace")
        text = text.strip().strip("\x00").strip()
        if not text:
            raise AuthKeyError("empty public key")
        b64, _, comment = text.partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise AuthKeyError(
                f"public key is not base64 ({exc}); expected the contents of adbkey.pub"
            ) from exc
        if len(raw) < 8:
            raise AuthKeyError("public key is too short to be an Android RSAPublicKey")
        words, _n0inv = struct.unpack_from("<II", raw, 0)
        expected = 8 + 2 * 4 * words + 4
        if words == 0 or len(raw) != expected:
            raise AuthKeyError(
                f"public key holds {len(raw)} bytes, expected {expected} for a {words * 32}-bit RSAPublicKey"
            )
        modulus = int.from_bytes(raw[8 : 8 + 4 * words], "little")
        (exponent,) = struct.unpack_from("<I", raw, 8 + 8 * words)
        return cls(modulus=modulus, exponent=exponent, comment=comment.strip())

    def verify(self, token: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        key = rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()
        try:
            key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        except (InvalidSignature, ValueError):
            return False
        return True

    def same_key(self, other: AdbPublicKey) -> bool:
        return self.modulus == other.modulus and self.exponent == other.exponent


def load_allow_list(path: str | Path) -> list[AdbPublicKey]:
    """Keys from an `adb_keys`-style file: one `adbkey.pub` line per key; blank and # lines are skipped."""
    file = Path(path)
    try:
        lines = file.read_text().splitlines()
    except OSError as exc:
        raise AuthKeyError(f"cannot read auth keys file {file}: {exc}") from exc
    keys = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            keys.append(AdbPublicKey.parse(line))
        except AuthKeyError as exc:
            raise AuthKeyError(f"{file}:{number}: {exc}") from exc
    if not keys:
        raise AuthKeyError(
            f"auth keys file {file} holds no key; put the contents of ~/.android/adbkey.pub in it"
        )
    return keys
