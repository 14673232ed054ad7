"""ADB transport framing: 24-byte little-endian headers, command constants, the sync and shell v2 ids.

Reference: AOSP system/core/adb/protocol.txt, SYNC.TXT and shell_protocol.h. Only the standard library.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


def _wire(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


A_SYNC = _wire(b"SYNC")
A_CNXN = _wire(b"CNXN")
A_AUTH = _wire(b"AUTH")
A_OPEN = _wire(b"OPEN")
A_OKAY = _wire(b"OKAY")
A_CLSE = _wire(b"CLSE")
A_WRTE = _wire(b"WRTE")
A_STLS = _wire(b"STLS")
COMMAND_NAMES = {
    value: name
    for name, value in {
        "SYNC": A_SYNC, "CNXN": A_CNXN, "AUTH": A_AUTH, "OPEN": A_OPEN,
        "OKAY": A_OKAY, "CLSE": A_CLSE, "WRTE": A_WRTE, "STLS": A_STLS,
    }.items()
}  # fmt: skip

# A_VERSION of adbd since Android 9: checksums are no longer computed by the sender nor checked.
A_VERSION = 0x01000001
A_VERSION_MIN = 0x01000000
VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 256 * 1024  # what we offer; the connection uses min(ours, the client's)
MAX_PAYLOAD_LEGACY = 4096
# A message's data may be at most the connection's max payload (adbd drops the peer otherwise); before
# CNXN has settled it, at most what we offer.

AUTH_TOKEN = 1
AUTH_SIGNATURE = 2
AUTH_RSAPUBLICKEY = 3
TOKEN_SIZE = 20

HEADER = struct.Struct("<6I")
HEADER_SIZE = HEADER.size  # 24

# sync: requests and responses are an id plus a u32 length/argument
SYNC_HEADER = struct.Struct("<4sI")
SYNC_DATA_MAX = 64 * 1024  # the longest DATA record adb sends; a longer one fails the sync
SYNC_PATH_MAX = 1024
STAT_V1 = struct.Struct("<4sIII")  # id, mode, size, mtime
STAT_V2 = struct.Struct(
    "<4sIQQIIIIQqqq"
)  # id, error, dev, ino, mode, nlink, uid, gid, size, atime, mtime, ctime
DENT_V1 = struct.Struct("<4sIIII")  # id, mode, size, mtime, namelen

# shell protocol v2: 1-byte id + u32 length + data, in both directions
SHELL_HEADER = struct.Struct("<BI")
SHELL_PACKET_MAX = MAX_PAYLOAD  # a longer packet could not have come from one of adb's buffers
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW_SIZE = range(6)


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


@dataclass(frozen=True)
class Message:
    command: int
    arg0: int
    arg1: int
    data: bytes = b""

    @property
    def name(self) -> str:
        return COMMAND_NAMES.get(self.command, f"0x{self.command:08x}")

    def pack(self) -> bytes:
        # Always fill the checksum: clients older than 0x01000001 (and adb-shell) verify it.
        header = HEADER.pack(
            self.command,
            self.arg0,
            self.arg1,
            len(self.data),
            checksum(self.data),
            self.command ^ 0xFFFFFFFF,
        )
        return header + self.data

    def __repr__(self) -> str:
        return f"Message({self.name}, {self.arg0}, {self.arg1}, {len(self.data)} bytes)"


class ProtocolError(Exception):
    """The peer sent something that is not ADB; the connection is dropped."""


def unpack_header(header: bytes, *, max_data: int = MAX_PAYLOAD) -> tuple[int, int, int, int, int]:
    """(command, arg0, arg1, data length, checksum) of a 24-byte header; ProtocolError if it is not one
    or announces more than `max_data` bytes of data."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError(f"an ADB header is {HEADER_SIZE} bytes, got {len(header)}")
    command, arg0, arg1, length, check, magic = HEADER.unpack(header)
    if magic != command ^ 0xFFFFFFFF:
        raise ProtocolError(
            f"bad magic 0x{magic:08x} for command 0x{command:08x}; is the peer an ADB client?"
        )
    if length > max_data:
        raise ProtocolError(
            f"{COMMAND_NAMES.get(command, hex(command))} message announces {length} bytes of data, "
            f"more than the connection's maximum of {max_data}"
        )
    return command, arg0, arg1, length, check
