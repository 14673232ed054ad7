"""Device-side ADB services: shell (legacy and v2), exec, sync (file transfer), and reboot-like no-ops.

Each service is a function `(stream, options, argument, sandbox)` run in its own thread once the stream
is open; it talks to the client through the `Stream` (read/write/close) and returns when done.
`SERVICES` maps the service name (what comes before `:` and the first `,` in OPEN) to its function.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import signal
import stat
import struct
import subprocess
import termios
import threading
from collections.abc import Callable
from typing import Protocol

from . import protocol as p
from .sandbox import LINK_TARGET_MAX, Sandbox, SandboxError

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


def _argv(command: str, sandbox: Sandbox) -> list[str]:
    if command.strip():
        return ["/bin/sh", "-c", sandbox.rewrite_command(command)]
    return ["/bin/sh", "-i"]  # `adb shell` without a command: an interactive shell


def _make_controlling_tty() -> None:  # runs in the child, after setsid()
    try:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    except OSError:
        pass


class Child:
    """A shell command run for a stream, on pipes (raw) or on a pseudo-terminal (pty).

    `outputs` lists (fd, shell v2 packet id) to pump; a pty has one output that carries stderr too.
    """

    def __init__(
        self, command: str, sandbox: Sandbox, *, pty: bool, split_stderr: bool, term: str | None
    ) -> None:
        argv = _argv(command, sandbox)
        env = sandbox.environment()
        self._master: int | None = None
        self._master_lock = threading.Lock()  # the fd must not be written after close (its number is reused)
        self.is_pty = pty
        logger.debug("spawn %s (pty=%s)", argv, pty)
        if pty:
            master, slave = os.openpty()
            env["TERM"] = term or env.get("TERM", "xterm-256color")
            try:
                self.proc = subprocess.Popen(
                    argv,
                    cwd=sandbox.root,
                    env=env,
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    start_new_session=True,
                    preexec_fn=_make_controlling_tty,  # noqa: PLW1509 - only an ioctl, no locks
                )
            finally:
                os.close(slave)
            self._master = master
            self.outputs = [(master, p.SHELL_STDOUT)]
            return
        self.proc = subprocess.Popen(
            argv,
            cwd=sandbox.root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if split_stderr else subprocess.STDOUT,
            start_new_session=True,  # so closing the stream can kill the whole process group
        )
        assert self.proc.stdout is not None
        self.outputs = [(self.proc.stdout.fileno(), p.SHELL_STDOUT)]
        if self.proc.stderr is not None:
            self.outputs.append((self.proc.stderr.fileno(), p.SHELL_STDERR))

    def write_stdin(self, data: bytes) -> None:
        if self.is_pty:
            with self._master_lock:
                if self._master is not None:
                    os.write(self._master, data)
        elif self.proc.stdin is not None:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.is_pty:
            return  # a terminal has no end of input; the user types exit or ^D
        if self.proc.stdin is not None:
            _close_quietly(self.proc.stdin)

    def resize(self, spec: bytes) -> None:
        """Shell v2 window-size packet: b"ROWSxCOLS,XPIXELSxYPIXELS"."""
        match = re.fullmatch(rb"(\d+)x(\d+),(\d+)x(\d+)\x00?", spec)
        if not self.is_pty or match is None:
            return
        rows, cols, xpix, ypix = (int(v) for v in match.groups())
        with self._master_lock:
            if self._master is not None:
                fcntl.ioctl(self._master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, xpix, ypix))

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait(self) -> int:
        status = _exit_status(self.proc.wait())
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                _close_quietly(pipe)
        with self._master_lock:
            if self._master is not None:
                os.close(self._master)
                self._master = None
        return status


def _pump_output(fd: int, chunk: int, sink: Callable[[bytes], None]) -> None:
    try:
        while True:
            data = os.read(fd, chunk)
            if not data:
                return
            sink(data)
    except (StreamClosed, OSError):  # EIO on a pty master once the shell has exited
        return


def _killing_on_failure(write: Callable[..., None], child: Child) -> Callable[..., None]:
    """`write`, except that a client that stops taking output (or goes away) gets the command killed:
    otherwise it would block on a full pipe for ever, holding its process and this stream's thread."""

    def guarded(*args: object) -> None:
        try:
            write(*args)
        except StreamClosed:
            child.kill()
            raise

    return guarded


def _close_quietly(file: object) -> None:
    try:
        file.close()  # type: ignore[attr-defined]
    except OSError:
        pass


def _start(target: Callable[..., None], *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, name="phone-sim-io", daemon=True)
    thread.start()
    return thread


def _pty_wanted(options: list[str], command: str) -> bool:
    # adbd: an explicit raw/pty option wins; otherwise an interactive shell gets a pty and a command does not.
    if "pty" in options:
        return True
    if "raw" in options:
        return False
    return not command.strip()


def _term(options: list[str]) -> str | None:
    return next((o.partition("=")[2] for o in options if o.startswith("TERM=")), None)


# --- legacy shell and exec: raw bytes both ways, no exit status ---------------------------------------


def raw_shell_service(stream: ServiceStream, options: list[str], command: str, sandbox: Sandbox) -> None:
    child = Child(
        command, sandbox, pty=_pty_wanted(options, command), split_stderr=False, term=_term(options)
    )
    stream.on_close(child.kill)

    def feed_stdin() -> None:
        while (data := stream.read()) is not None:
            try:
                child.write_stdin(data)
            except (OSError, ValueError):
                break
        child.close_stdin()

    _start(feed_stdin)
    (fd, _kind) = child.outputs[0]
    _pump_output(fd, stream.max_payload, _killing_on_failure(stream.write, child))
    child.wait()
    stream.close()


def exec_service(stream: ServiceStream, options: list[str], command: str, sandbox: Sandbox) -> None:
    raw_shell_service(stream, ["raw", *options], command, sandbox)


# --- shell protocol v2: framed stdin/stdout/stderr and the exit status --------------------------------


def shell_v2_service(stream: ServiceStream, options: list[str], command: str, sandbox: Sandbox) -> None:
    child = Child(command, sandbox, pty=_pty_wanted(options, command), split_stderr=True, term=_term(options))
    stream.on_close(child.kill)
    write_lock = threading.Lock()
    body = stream.max_payload - p.SHELL_HEADER.size

    def send_packet(kind: int, data: bytes) -> None:
        for start in range(0, max(len(data), 1), body):
            piece = data[start : start + body]
            with write_lock:
                stream.write(p.SHELL_HEADER.pack(kind, len(piece)) + piece)

    send_output = _killing_on_failure(send_packet, child)

    def feed_stdin() -> None:
        buffer = b""
        while (data := stream.read()) is not None:
            buffer += data
            while len(buffer) >= p.SHELL_HEADER.size:
                kind, length = p.SHELL_HEADER.unpack_from(buffer)
                if length > p.SHELL_PACKET_MAX:
                    # adbd's shell packets fit its buffer; a longer one would grow ours without bound.
                    logger.warning(
                        "shell packet of %d bytes is longer than %d; closing the stream", length, p.SHELL_PACKET_MAX
                    )
                    child.kill()
                    stream.close()
                    return
                if len(buffer) < p.SHELL_HEADER.size + length:
                    break
                payload = buffer[p.SHELL_HEADER.size : p.SHELL_HEADER.size + length]
                buffer = buffer[p.SHELL_HEADER.size + length :]
                try:
                    if kind == p.SHELL_STDIN and payload:
                        child.write_stdin(payload)
                    elif kind == p.SHELL_CLOSE_STDIN:
                        child.close_stdin()
                    elif kind == p.SHELL_WINDOW_SIZE:
                        child.resize(payload)
                except (OSError, ValueError):
                    pass  # the process stopped reading stdin; keep draining the client
        child.close_stdin()

    _start(feed_stdin)
    pumps = [
        _start(_pump_output, fd, body, lambda data, kind=kind: send_output(kind, data))
        for fd, kind in child.outputs
    ]
    for pump in pumps:
        pump.join()
    status = child.wait()
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
    # adbd answers STAT with lstat, and all zeros for anything it cannot stat.
    try:
        st = sandbox.lstat(path, follow=False)
    except (OSError, ValueError):
        return p.STAT_V1.pack(b"STAT", 0, 0, 0)
    return p.STAT_V1.pack(b"STAT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, _u32_time(st.st_mtime))


def _u32_time(seconds: float) -> int:
    return int(seconds) & 0xFFFFFFFF


def _stat_v2(sandbox: Sandbox, path: str, *, follow: bool, reply: bytes) -> bytes:
    try:
        st = sandbox.lstat(path, follow=follow)
    except SandboxError:
        return p.STAT_V2.pack(reply, errno.EACCES, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    except OSError as exc:
        return p.STAT_V2.pack(reply, exc.errno or errno.ENOENT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    except ValueError:
        return p.STAT_V2.pack(reply, errno.EINVAL, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
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


def _list(stream: ServiceStream, sandbox: Sandbox, path: str) -> None:
    """DENT records of a folder (none if it cannot be listed), sent in batches, then DONE."""
    batch = bytearray()
    try:
        for name, st in sandbox.list_dir(path):
            encoded = name.encode("utf-8", errors="surrogateescape")
            batch += p.DENT_V1.pack(
                b"DENT", st.st_mode & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF, _u32_time(st.st_mtime), len(encoded)
            )
            batch += encoded
            if len(batch) >= stream.max_payload:
                stream.write(bytes(batch))
                batch.clear()
    except (OSError, ValueError) as exc:
        logger.debug("cannot list %s: %s", path, exc)
    batch += p.DENT_V1.pack(b"DONE", 0, 0, 0, 0)
    stream.write(bytes(batch))


class SyncProtocolError(Exception):
    """The client broke the sync protocol (an oversized DATA record); the stream is failed and closed."""


def _parse_send_spec(spec: str) -> tuple[str, int]:
    """SEND's `path,mode` (mode in decimal, as adb sends it)."""
    path, comma, mode_text = spec.rpartition(",")
    if not comma:
        return spec, stat.S_IFREG | 0o644
    if not re.fullmatch(r"[0-9]{1,10}", mode_text):
        raise ValueError(f"bad mode {mode_text[:20]!r} in SEND request; expected PATH,MODE with a decimal MODE")
    return path, int(mode_text)


def _receive_file(reader: _SyncReader, sandbox: Sandbox, spec: str) -> bytes | None:
    """SEND: `path,mode`, then DATA chunks and DONE(mtime). Returns the reply, or None if the stream ended.

    Raises SyncProtocolError for a DATA record longer than SYNC_DATA_MAX (adbd fails the sync then too).
    Permission bits are masked to 0o777; a link is created only if it points inside the root.
    """
    error: str | None = None
    pending = None
    path, mode = spec, 0
    try:
        path, mode = _parse_send_spec(spec)
    except ValueError as exc:
        error = str(exc)
    is_link = stat.S_ISLNK(mode)
    link_target = bytearray()
    if error is None and not is_link:
        try:
            pending = sandbox.create_file(path)
        except (OSError, ValueError) as exc:
            error = f"couldn't create file: {exc}"
    try:
        while True:
            header = reader.read_exact(p.SYNC_HEADER.size)
            if header is None:
                return None
            kind, arg = p.SYNC_HEADER.unpack(header)
            if kind == b"DATA":
                if arg > p.SYNC_DATA_MAX:
                    raise SyncProtocolError(
                        f"DATA record of {arg} bytes is longer than the sync limit of {p.SYNC_DATA_MAX}"
                    )
                data = reader.read_exact(arg)
                if data is None:
                    return None
                if error is not None:
                    continue  # keep draining until DONE, then report the first error
                if is_link:
                    link_target += data
                    if len(link_target) > LINK_TARGET_MAX:
                        error = f"link target is longer than {LINK_TARGET_MAX} bytes"
                    continue
                try:
                    pending.write(data)  # type: ignore[union-attr]
                except OSError as exc:
                    error = f"write failed: {exc}"
            elif kind == b"DONE":
                if error is not None:
                    return _fail(error)
                try:
                    if is_link:
                        sandbox.make_symlink(path, link_target.decode("utf-8", errors="surrogateescape"))
                    else:
                        assert pending is not None
                        pending.commit(mode, arg)
                except SandboxError as exc:
                    return _fail(f"couldn't create {path}: {exc}")
                except (OSError, ValueError) as exc:
                    return _fail(f"couldn't finish {path}: {exc}")
                return p.SYNC_HEADER.pack(b"OKAY", 0)
            else:
                return _fail(f"unexpected {kind!r} while receiving {path}; expected DATA or DONE")
    finally:
        if pending is not None:
            pending.discard()


def _send_file(stream: ServiceStream, sandbox: Sandbox, path: str) -> None:
    try:
        handle = sandbox.open_read(path)
    except SandboxError as exc:
        stream.write(_fail(str(exc)))
        return
    except OSError as exc:
        stream.write(_fail(f"open failed: {exc.strerror or exc}: {path}"))
        return
    except ValueError as exc:
        stream.write(_fail(f"open failed: {exc}: {path}"))
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
        logger.debug("sync %s %r", kind.decode(errors="replace"), path)
        if kind == b"STAT":
            stream.write(_stat_v1(sandbox, path))
        elif kind in (b"STA2", b"LST2"):
            stream.write(_stat_v2(sandbox, path, follow=kind == b"STA2", reply=kind))
        elif kind == b"LIST":
            _list(stream, sandbox, path)
        elif kind == b"SEND":
            try:
                reply = _receive_file(reader, sandbox, path)
            except SyncProtocolError as exc:
                stream.write(_fail(str(exc)))
                stream.close()
                return
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
    "exec": exec_service,
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
