"""Device-side ADB services: shell (legacy and v2), exec, sync (file transfer), and reboot-like no-ops.

Each service is a function `(stream, options, argument, sandbox)` run in its own thread once the stream
is open; it talks to the client through the `Stream` (read/write/close) and returns when done.
`SERVICES` maps the service name (what comes before `:` and the first `,` in OPEN) to its function.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import stat
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from . import protocol as p
from .sandbox import Sandbox, SandboxError

logger = logging.getLogger(__name__)


class StreamClosed(Exception):
    """The client closed the stream (or the connection) while the service was still using it."""


class ServiceStream(Protocol):
    @property
    def max_payload(self) -> int: ...

    @property
    def closed(self) -> bool: ...

    def read(self) -> bytes | None: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None: ...


Service = Callable[[ServiceStream, list[str], str, Sandbox], None]


# --- processes ---------------------------------------------------------------------------------------


def _exit_status(returncode: int) -> int:
    # A shell reports death by signal N as 128+N.
    return 128 - returncode if returncode < 0 else returncode & 0xFF


def _spawn(command: str, sandbox: Sandbox, *, split_stderr: bool) -> subprocess.Popen[bytes]:
    if command.strip():
        argv = ["/bin/sh", "-c", sandbox.rewrite_command(command)]
    else:
        argv = ["/bin/sh", "-i"]  # `adb shell` without a command: an interactive shell
    logger.debug("spawn %s", argv)
    return subprocess.Popen(
        argv,
        cwd=sandbox.root,
        env=sandbox.environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
        start_new_session=True,  # so closing the stream can kill the whole process group
    )


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _pump_output(fd: int, chunk: int, sink: Callable[[bytes], None]) -> None:
    try:
        while True:
            data = os.read(fd, chunk)
            if not data:
                return
            sink(data)
    except (StreamClosed, OSError):
        return


def _close_quietly(file: object) -> None:
    try:
        file.close()  # type: ignore[attr-defined]
    except OSError:
        pass


# --- legacy shell and exec: raw bytes both ways, no exit status ---------------------------------------


def raw_shell_service(stream: ServiceStream, options: list[str], command: str, sandbox: Sandbox) -> None:
    proc = _spawn(command, sandbox, split_stderr=False)
    stream.on_close(lambda: _kill(proc))
    assert proc.stdin is not None and proc.stdout is not None

    def feed_stdin() -> None:
        stdin = proc.stdin
        while (data := stream.read()) is not None:
            try:
                stdin.write(data)
                stdin.flush()
            except OSError:
                break
        _close_quietly(stdin)

    threading.Thread(target=feed_stdin, name="phone-sim-stdin", daemon=True).start()
    _pump_output(proc.stdout.fileno(), stream.max_payload, stream.write)
    proc.wait()
    _close_quietly(proc.stdout)
    stream.close()


# --- shell protocol v2: framed stdin/stdout/stderr and the exit status --------------------------------


def shell_v2_service(stream: ServiceStream, options: list[str], command: str, sandbox: Sandbox) -> None:
    pty = "pty" in options  # a pty merges stderr into stdout; we do the same without a terminal
    proc = _spawn(command, sandbox, split_stderr=not pty)
    stream.on_close(lambda: _kill(proc))
    assert proc.stdin is not None and proc.stdout is not None
    write_lock = threading.Lock()
    body = stream.max_payload - p.SHELL_HEADER.size

    def send_packet(kind: int, data: bytes) -> None:
        for start in range(0, max(len(data), 1), body):
            piece = data[start : start + body]
            with write_lock:
                stream.write(p.SHELL_HEADER.pack(kind, len(piece)) + piece)

    def feed_stdin() -> None:
        stdin = proc.stdin
        buffer = b""
        while (data := stream.read()) is not None:
            buffer += data
            while len(buffer) >= p.SHELL_HEADER.size:
                kind, length = p.SHELL_HEADER.unpack_from(buffer)
                if len(buffer) < p.SHELL_HEADER.size + length:
                    break
                payload = buffer[p.SHELL_HEADER.size : p.SHELL_HEADER.size + length]
                buffer = buffer[p.SHELL_HEADER.size + length :]
                try:
                    if kind == p.SHELL_STDIN and payload:
                        stdin.write(payload)
                        stdin.flush()
                    elif kind == p.SHELL_CLOSE_STDIN:
                        stdin.close()
                except (OSError, ValueError):
                    pass  # the process stopped reading stdin; keep draining the client
        _close_quietly(stdin)

    threading.Thread(target=feed_stdin, name="phone-sim-stdin", daemon=True).start()
    pumps = [
        threading.Thread(
            target=_pump_output,
            args=(proc.stdout.fileno(), body, lambda d: send_packet(p.SHELL_STDOUT, d)),
            daemon=True,
        )
    ]
    if proc.stderr is not None:
        pumps.append(
            threading.Thread(
                target=_pump_output,
                args=(proc.stderr.fileno(), body, lambda d: send_packet(p.SHELL_STDERR, d)),
                daemon=True,
            )
        )
    for pump in pumps:
        pump.start()
    for pump in pumps:
        pump.join()
    status = _exit_status(proc.wait())
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            _close_quietly(pipe)
    try:
        send_packet(p.SHELL_EXIT, bytes([status]))
    except StreamClosed:
        return
    stream.close()


def shell_service(stream: ServiceStream, options: list[str], command: str, sandbox: Sandbox) -> None:
    if "v2" in options:
        shell_v2_service(stream, options, command, sandbox)
    else:
        raw_shell_service(stream, options, command, sandbox)


# --- sync: STAT/STA2/LST2/LIST/SEND/RECV/QUIT ---------------------------------------------------------


class _SyncReader:
    """Sync requests arrive split across WRTE packets arbitrarily; this reassembles them."""

    def __init__(self, stream: ServiceStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    def read_exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            data = self.stream.read()
            if data is None:
                return None
            self.buffer += data
        out = bytes(self.buffer[:size])
        del self.buffer[:size]
        return out


def _fail(message: str) -> bytes:
    data = message.encode("utf-8", errors="replace")
    return p.SYNC_HEADER.pack(b"FAIL", len(data)) + data


def _stat_v1(sandbox: Sandbox, path: str) -> bytes:
    try:
        st = os.stat(sandbox.map_path(path))
    except (OSError, SandboxError):
        return p.STAT_V1.pack(b"STAT", 0, 0, 0)
    return p.STAT_V1.pack(b"STAT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, int(st.st_mtime))


def _stat_v2(sandbox: Sandbox, path: str, *, follow: bool, reply: bytes) -> bytes:
    try:
        host = sandbox.map_path(path)
        st = os.stat(host) if follow else os.lstat(host)
    except SandboxError:
        return p.STAT_V2.pack(reply, errno.EACCES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    except OSError as exc:
        return p.STAT_V2.pack(reply, exc.errno or errno.ENOENT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return p.STAT_V2.pack(
        reply,
        0,
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        int(st.st_atime),
        int(st.st_mtime),
        int(st.st_ctime),
    )


def _list(sandbox: Sandbox, path: str) -> bytes:
    out = bytearray()
    try:
        folder = sandbox.map_path(path)
        names = [".", "..", *sorted(os.listdir(folder))]
    except (OSError, SandboxError):
        names, folder = [], Path()
    for name in names:
        try:
            st = os.lstat(folder / name)
        except OSError:
            continue
        encoded = name.encode("utf-8", errors="surrogateescape")
        out += p.DENT_V1.pack(b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(encoded))
        out += encoded
    out += p.DENT_V1.pack(b"DONE", 0, 0, 0, 0)
    return bytes(out)


def _receive_file(reader: _SyncReader, sandbox: Sandbox, spec: str) -> bytes | None:
    """SEND: `path,mode`, then DATA chunks and DONE(mtime). Returns the reply, or None if the stream ended."""
    path, _, mode_text = spec.rpartition(",")
    if not path:
        path, mode_text = spec, str(0o644)
    error: str | None = None
    handle = None
    target = temp = None
    try:
        mode = int(mode_text)
    except ValueError:
        mode, error = 0o644, f"bad mode {mode_text!r} in SEND request"
    is_link = stat.S_ISLNK(mode)
    link_target = bytearray()
    if error is None:
        try:
            target = sandbox.map_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            temp = target.with_name(f".{target.name}.phone-sim-part")
            if not is_link:
                handle = open(temp, "wb")  # noqa: SIM115 - closed below on every path
        except (OSError, SandboxError) as exc:
            error = f"couldn't create file: {exc}"
    try:
        while True:
            header = reader.read_exact(p.SYNC_HEADER.size)
            if header is None:
                return None
            kind, arg = p.SYNC_HEADER.unpack(header)
            if kind == b"DATA":
                data = reader.read_exact(arg)
                if data is None:
                    return None
                if error is None:
                    try:
                        if is_link:
                            link_target += data
                        else:
                            handle.write(data)  # type: ignore[union-attr]
                    except OSError as exc:
                        error = f"write failed: {exc}"
            elif kind == b"DONE":
                if error is not None:
                    return _fail(error)
                assert target is not None and temp is not None
                try:
                    if is_link:
                        if target.is_symlink() or target.exists():
                            target.unlink()
                        os.symlink(link_target.decode("utf-8", errors="surrogateescape"), target)
                    else:
                        handle.close()  # type: ignore[union-attr]
                        handle = None
                        os.chmod(temp, stat.S_IMODE(mode) or 0o644)
                        os.replace(temp, target)
                        os.utime(target, (arg, arg))
                except OSError as exc:
                    return _fail(f"couldn't finish {path}: {exc}")
                return p.SYNC_HEADER.pack(b"OKAY", 0)
            else:
                return _fail(f"unexpected {kind!r} while receiving {path}; expected DATA or DONE")
    finally:
        if handle is not None:
            handle.close()
        if temp is not None and temp.exists():
            temp.unlink()


def _send_file(stream: ServiceStream, sandbox: Sandbox, path: str) -> None:
    try:
        host = sandbox.map_path(path)
        handle = open(host, "rb")  # noqa: SIM115
    except SandboxError as exc:
        stream.write(_fail(str(exc)))
        return
    except OSError as exc:
        stream.write(_fail(f"open failed: {exc.strerror or exc}: {path}"))
        return
    # Batch several DATA records into one WRTE when they fit, as adbd does.
    chunk = min(p.SYNC_DATA_MAX, stream.max_payload - p.SYNC_HEADER.size)
    pending = bytearray()
    with handle:
        while data := handle.read(chunk):
            record = p.SYNC_HEADER.pack(b"DATA", len(data)) + data
            if len(pending) + len(record) > stream.max_payload:
                stream.write(bytes(pending))
                pending.clear()
            pending += record
    pending += p.SYNC_HEADER.pack(b"DONE", 0)
    stream.write(bytes(pending))


def sync_service(stream: ServiceStream, options: list[str], argument: str, sandbox: Sandbox) -> None:
    reader = _SyncReader(stream)
    while True:
        header = reader.read_exact(p.SYNC_HEADER.size)
        if header is None:
            return
        kind, length = p.SYNC_HEADER.unpack(header)
        if kind == b"QUIT":
            stream.close()
            return
        if length > p.SYNC_PATH_MAX:
            stream.write(_fail(f"path of {length} bytes is longer than {p.SYNC_PATH_MAX}"))
            stream.close()
            return
        raw_path = reader.read_exact(length)
        if raw_path is None:
            return
        path = raw_path.decode("utf-8", errors="surrogateescape")
        logger.debug("sync %s %s", kind.decode(errors="replace"), path)
        if kind == b"STAT":
            stream.write(_stat_v1(sandbox, path))
        elif kind in (b"STA2", b"LST2"):
            stream.write(_stat_v2(sandbox, path, follow=kind == b"STA2", reply=kind))
        elif kind == b"LIST":
            stream.write(_list(sandbox, path))
        elif kind == b"SEND":
            reply = _receive_file(reader, sandbox, path)
            if reply is None:
                return
            stream.write(reply)
        elif kind == b"RECV":
            _send_file(stream, sandbox, path)
        else:
            stream.write(_fail(f"unknown sync command {kind!r}"))
            stream.close()
            return


# --- things a phone answers that the emulator only acknowledges ---------------------------------------


def _message_service(message: str) -> Service:
    def service(stream: ServiceStream, options: list[str], argument: str, sandbox: Sandbox) -> None:
        if message:
            stream.write(message.encode())
        stream.close()

    return service


SERVICES: dict[str, Service] = {
    "shell": shell_service,
    "exec": raw_shell_service,
    "sync": sync_service,
    "reboot": _message_service(""),
    "root": _message_service("adbd is already running as root\n"),
    "unroot": _message_service("adbd not running as root\n"),
    "remount": _message_service("remount succeeded\n"),
    "usb": _message_service("restarting in USB mode\n"),
    "tcpip": _message_service("restarting in TCP mode\n"),
}


def parse_service(destination: str) -> tuple[str, list[str], str]:
    """'shell,v2,raw:echo hi' -> ('shell', ['v2', 'raw'], 'echo hi')."""
    head, _, argument = destination.partition(":")
    name, *options = head.split(",")
    return name, options, argument
