"""The device side of the ADB transport over TCP: handshake, RSA auth, and multiplexed streams.

One thread per client connection reads messages and routes them; every opened stream runs its service
in its own thread. Flow control follows the classic protocol: after each WRTE the sender waits for the
peer's OKAY, and we send OKAY for a client's WRTE once the service has taken the data.

What a client can make the emulator hold is bounded (`ServerLimits`): connections, streams per
connection, unacknowledged data per stream, message length (the negotiated max payload), the time to
finish the handshake and to finish a message once it has started. With auth keys, a client gets in only
by signing the token with an allow-listed key; a public key offered instead is refused unless the
operator asked for new keys to be accepted. The shell runs host commands as the emulator's user, so
listening beyond loopback requires auth keys.
"""

from __future__ import annotations

import getpass
import ipaddress
import itertools
import logging
import os
import queue
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import protocol as p
from .auth import AdbPublicKey, AuthKeyError, load_allow_list
from .sandbox import Sandbox
from .services import SERVICES, StreamClosed, parse_service

logger = logging.getLogger(__name__)

# Advertised in CNXN. shell_v2 makes adb use `shell,v2,...:` (with exit status); stat_v2 makes it use
# STA2/LST2 in sync. Anything advertised here is implemented in services.py.
FEATURES = ("shell_v2", "cmd", "stat_v2", "fixed_push_mkdir")
POLL_S = 0.5  # how often a waiting connection thread looks at the handshake deadline and at stop()
MAX_SIGNATURE_FAILURES = 10


class PhoneSimError(Exception):
    """The emulator could not start (bad port, bad auth keys file, unusable root, unsafe address)."""


@dataclass(frozen=True)
class ServerLimits:
    """What one client may make the emulator hold, and how long it may keep it waiting."""

    handshake_timeout_s: float = 20.0  # from accept to an authorised connection
    io_timeout_s: float = 60.0  # to finish a message once started, and for the client to take our data
    max_connections: int = 32
    max_streams: int = 64  # open streams per connection (each runs a thread, a shell a process)
    stream_backlog_bytes: int = 1024 * 1024  # data a client may send on a stream ahead of our OKAYs

    def __post_init__(self) -> None:
        for name in ("handshake_timeout_s", "io_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerLimits.{name} must be > 0 seconds, got {getattr(self, name)!r}")
        for name in ("max_connections", "max_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServerLimits.{name} must be at least 1, got {getattr(self, name)!r}")
        if self.stream_backlog_bytes < p.MAX_PAYLOAD:
            raise ValueError(
                f"ServerLimits.stream_backlog_bytes must hold one full message ({p.MAX_PAYLOAD} bytes), "
                f"got {self.stream_backlog_bytes}"
            )


def is_loopback(host: str) -> bool:
    """True if every address `host` names is a loopback address (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0]).is_loopback for info in infos)


@dataclass(frozen=True)
class DeviceIdentity:
    serial: str
    model_name: str = "AMC PhoneSim"
    abi: str = "arm64-v8a"
    manufacturer: str = "AMC"
    android_release: str = "14"
    sdk: str = "34"
    # ro.build.fingerprint; by default one per model name (two emulated phones of one model share it).
    fingerprint: str | None = None

    @property
    def device(self) -> str:
        return re.sub(r"[^a-z0-9]+", "_", self.model_name.lower()).strip("_") or "phonesim"

    @property
    def build_fingerprint(self) -> str:
        return self.fingerprint or (
            f"{self.manufacturer}/{self.device}/{self.device}:{self.android_release}/AMC.{self.sdk}/1:user/release-keys"
        )

    def props(self) -> dict[str, str]:
        return {
            "ro.product.model": self.model_name,
            "ro.product.name": self.device,
            "ro.product.device": self.device,
            "ro.product.brand": self.manufacturer,
            "ro.product.manufacturer": self.manufacturer,
            "ro.product.cpu.abi": self.abi,
            "ro.product.cpu.abilist": self.abi,
            "ro.serialno": self.serial,
            "ro.build.version.release": self.android_release,
            "ro.build.version.sdk": self.sdk,
            "ro.build.fingerprint": self.build_fingerprint,
            "ro.hardware": "phonesim",
        }

    def banner(self) -> bytes:
        return (
            f"device::ro.product.name={self.device};ro.product.model={self.model_name};"
            f"ro.product.device={self.device};features={','.join(FEATURES)}"
        ).encode()


class Stream:
    """One OPENed stream: the service reads the client's WRTE payloads and writes its own."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._backlog = 0  # bytes delivered and not yet taken by the service
        self._backlog_lock = threading.Lock()
        self._can_write = threading.Event()
        self._can_write.set()
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._on_close: list[Callable[[], None]] = []

    @property
    def max_payload(self) -> int:
        return self.conn.max_payload

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # service side -----------------------------------------------------------------------------------

    def read(self) -> bytes | None:
        """Next payload the client wrote (acknowledged on return), or None once the stream is closed."""
        if self.closed and self._inbox.empty():
            return None
        data = self._inbox.get()
        if data is None:
            return None
        with self._backlog_lock:
            self._backlog -= len(data)
        if not self.closed:
            self.conn.send(p.Message(p.A_OKAY, self.local_id, self.remote_id), quiet=True)
        return data

    def write(self, data: bytes) -> None:
        step = self.max_payload
        timeout = self.conn.sim.limits.io_timeout_s
        with self._write_lock:
            for start in range(0, len(data), step):
                if not self._can_write.wait(timeout):
                    raise StreamClosed(f"client did not acknowledge data within {timeout:.0f} s")
                if self.closed:
                    raise StreamClosed("stream closed by the client")
                self._can_write.clear()
                self.conn.send(p.Message(p.A_WRTE, self.local_id, self.remote_id, data[start : start + step]))

    def close(self) -> None:
        """Close from the device side (service finished)."""
        if self._mark_closed():
            self.conn.forget(self.local_id)
            self.conn.send(p.Message(p.A_CLSE, self.local_id, self.remote_id), quiet=True)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close.append(callback)
        if self.closed:
            callback()

    # connection side --------------------------------------------------------------------------------

    def _mark_closed(self) -> bool:
        if self._closed.is_set():
            return False
        self._closed.set()
        self._inbox.put(None)
        self._can_write.set()  # wake a writer so it sees the close
        return True

    def deliver(self, data: bytes) -> None:
        limit = self.conn.sim.limits.stream_backlog_bytes
        with self._backlog_lock:
            if self._backlog + len(data) > limit:
                raise p.ProtocolError(
                    f"client sent more than {limit} bytes on stream {self.local_id} without waiting for "
                    "OKAY (ADB flow control: one WRTE at a time per stream)"
                )
            self._backlog += len(data)
        self._inbox.put(data)

    def acknowledged(self) -> None:
        self._can_write.set()

    def closed_by_client(self) -> None:
        if self._mark_closed():
            self.conn.send(p.Message(p.A_CLSE, self.local_id, self.remote_id), quiet=True)
        for callback in self._on_close:
            try:
                callback()
            except Exception:  # a failing cleanup must not take the connection down
                logger.exception("stream close callback failed")


@dataclass(eq=False)
class Connection:
    """One client (an adb server, or adb-shell) connected over TCP."""

    sock: socket.socket
    peer: str
    sim: PhoneSimulator
    version: int = p.A_VERSION
    max_payload: int = p.MAX_PAYLOAD_LEGACY
    online: bool = False
    negotiated: bool = False  # CNXN seen: messages are bounded by max_payload from now on
    streams: dict[int, Stream] = field(default_factory=dict)
    _send_lock: threading.Lock = field(default_factory=threading.Lock)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _token: bytes = b""
    _signature_failures: int = 0
    _handshake_deadline: float = 0.0

    def send(self, message: p.Message, *, quiet: bool = False) -> None:
        logger.debug("%s <- %r", self.peer, message)
        try:
            with self._send_lock:
                self.sock.sendall(message.pack())
        except OSError as exc:
            # A message cut short (a client that stopped reading, past io_timeout_s) leaves the framing
            # broken: the connection cannot go on.
            self._shutdown()
            if not quiet:
                raise StreamClosed(f"connection to {self.peer} lost: {exc}") from exc

    def _shutdown(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def forget(self, local_id: int) -> None:
        with self._lock:
            self.streams.pop(local_id, None)

    # --- reading, with deadlines ----------------------------------------------------------------------

    def _wait_readable(self, poller: select.poll, deadline: float | None) -> bool:
        """Until the socket has data (True), the deadline passes or the emulator stops (False)."""
        while not self.sim.stopping:
            wait = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            if wait <= 0:
                return False
            if poller.poll(wait * 1000):
                return True
        return False

    def _recv_exact(self, poller: select.poll, size: int, deadline: float) -> bytes | None:
        """`size` bytes, or None at end of stream; ProtocolError if they do not arrive by `deadline`."""
        chunks = bytearray()
        while len(chunks) < size:
            if not self._wait_readable(poller, deadline):
                if self.sim.stopping:
                    return None
                raise p.ProtocolError(
                    f"a message stalled: {len(chunks)} of {size} bytes arrived within the time allowed "
                    f"({self.sim.limits.io_timeout_s:.0f} s for a message, "
                    f"{self.sim.limits.handshake_timeout_s:.0f} s for the handshake)"
                )
            try:
                data = self.sock.recv(size - len(chunks))
            except OSError:
                return None
            if not data:
                return None
            chunks += data
        return bytes(chunks)

    def _read_message(self, poller: select.poll) -> p.Message | None:
        limits = self.sim.limits
        # An authorised client may stay silent between messages as long as it likes (adb keeps idle
        # connections open); before that it has until the handshake deadline.
        first = None if self.online else self._handshake_deadline
        if not self._wait_readable(poller, first):
            if self.sim.stopping:
                return None
            raise p.ProtocolError(f"no authorised handshake within {limits.handshake_timeout_s:.0f} s")
        deadline = time.monotonic() + limits.io_timeout_s
        if not self.online:
            deadline = min(deadline, self._handshake_deadline)
        header = self._recv_exact(poller, p.HEADER_SIZE, deadline)
        if header is None:
            return None
        max_data = self.max_payload if self.negotiated else p.MAX_PAYLOAD
        command, arg0, arg1, length, _check = p.unpack_header(header, max_data=max_data)
        data = self._recv_exact(poller, length, deadline) if length else b""
        if data is None:
            return None
        return p.Message(command, arg0, arg1, data)

    def serve(self) -> None:
        self._handshake_deadline = time.monotonic() + self.sim.limits.handshake_timeout_s
        poller = select.poll()
        try:
            poller.register(self.sock, select.POLLIN)
            while not self.sim.stopping:
                message = self._read_message(poller)
                if message is None:
                    return
                logger.debug("%s -> %r", self.peer, message)
                self._handle(message)
        except p.ProtocolError as exc:
            logger.warning("dropping %s: %s", self.peer, exc)
        except StreamClosed:
            pass
        except Exception:  # a bug must cost this connection only, never the emulator
            logger.exception("connection from %s failed", self.peer)
        finally:
            self._teardown()

    def _teardown(self) -> None:
        with self._lock:
            streams = list(self.streams.values())
            self.streams.clear()
        for stream in streams:
            stream.closed_by_client()
        try:
            self.sock.close()
        except OSError:
            pass
        self.sim._forget(self)
        logger.info("%s disconnected", self.peer)

    # --- message handling ---------------------------------------------------------------------------

    def _handle(self, message: p.Message) -> None:
        handler = {
            p.A_CNXN: self._on_cnxn,
            p.A_AUTH: self._on_auth,
            p.A_OPEN: self._on_open,
            p.A_OKAY: self._on_okay,
            p.A_WRTE: self._on_wrte,
            p.A_CLSE: self._on_clse,
        }.get(message.command)
        if handler is None:
            logger.debug("ignoring %r", message)
            return
        if message.command not in (p.A_CNXN, p.A_AUTH) and not self.online:
            logger.debug("ignoring %r before the connection is authorised", message)
            return
        handler(message)

    def _on_cnxn(self, message: p.Message) -> None:
        if self.online:  # the client restarted the handshake: drop its old streams
            self._teardown_streams()
            self._handshake_deadline = time.monotonic() + self.sim.limits.handshake_timeout_s
        self.online = False
        self.negotiated = True
        self.version = max(p.A_VERSION_MIN, min(message.arg0, p.A_VERSION))
        self.max_payload = max(p.MAX_PAYLOAD_LEGACY, min(message.arg1, p.MAX_PAYLOAD))
        logger.info(
            "%s CNXN version 0x%08x maxdata %d: %r", self.peer, message.arg0, message.arg1, message.data[:200]
        )
        if self.sim.allowed_keys is None:
            self._go_online()
        else:
            self._send_token()

    def _send_token(self) -> None:
        self._token = os.urandom(p.TOKEN_SIZE)
        self.send(p.Message(p.A_AUTH, p.AUTH_TOKEN, 0, self._token))

    def _go_online(self) -> None:
        self.online = True
        self.send(p.Message(p.A_CNXN, self.version, self.max_payload, self.sim.identity.banner()))

    def _on_auth(self, message: p.Message) -> None:
        keys = self.sim.allowed_keys
        if self.online or keys is None or not self._token:
            logger.debug("ignoring unexpected %r", message)
            return
        if message.arg0 == p.AUTH_SIGNATURE:
            # The token is used once: a signature answers only the token it was made for.
            token, self._token = self._token, b""
            if any(key.verify(token, message.data) for key in keys):
                logger.info("%s authenticated by signature", self.peer)
                self._go_online()
                return
            self._signature_failures += 1
            if self._signature_failures > MAX_SIGNATURE_FAILURES:
                raise p.ProtocolError(f"more than {MAX_SIGNATURE_FAILURES} failed signatures")
            self._send_token()  # the client tries its next key, then offers its public key
        elif message.arg0 == p.AUTH_RSAPUBLICKEY:
            try:
                offered = AdbPublicKey.parse(message.data)
            except AuthKeyError as exc:
                raise p.ProtocolError(f"unusable public key offered: {exc}") from exc
            name = offered.comment or "(no comment)"
            if not self.sim.accept_new_keys:
                # A public key proves nothing (it is public): only a signature of our token does. A
                # phone would ask its user here; the emulator asks its operator, who said no in advance.
                listed = any(key.same_key(offered) for key in keys)
                raise p.ProtocolError(
                    f"refused public key {name}: "
                    + ("it is allow-listed, but the client did not sign the token with it"
                       if listed else "it is not in the allow-list")
                    + "; the emulator lets in only clients that sign its token with an allowed key "
                    "(start it with accept_new_keys / --accept-new-keys to trust offered keys)"
                )  # fmt: skip
            self.sim.trust(offered)
            logger.warning("%s authenticated by a newly accepted public key %s", self.peer, name)
            self._go_online()
        else:
            raise p.ProtocolError(f"unknown AUTH type {message.arg0}")

    def _on_open(self, message: p.Message) -> None:
        destination = message.data.rstrip(b"\x00").decode("utf-8", errors="replace")
        name, options, argument = parse_service(destination)
        service = SERVICES.get(name)
        if service is None or message.arg0 == 0:
            logger.info("%s refused service %r", self.peer, destination[:200])
            self.send(p.Message(p.A_CLSE, 0, message.arg0))
            return
        with self._lock:
            full = len(self.streams) >= self.sim.limits.max_streams
        if full:
            logger.warning(
                "%s refused service %r: %d streams already open (ServerLimits.max_streams)",
                self.peer, destination[:200], self.sim.limits.max_streams,
            )  # fmt: skip
            self.send(p.Message(p.A_CLSE, 0, message.arg0))
            return
        with self._lock:
            local_id = next(self._ids)
            stream = Stream(self, local_id, message.arg0)
            self.streams[local_id] = stream
        logger.info("%s opened %r as stream %d", self.peer, destination, local_id)
        self.send(p.Message(p.A_OKAY, local_id, message.arg0))

        def run() -> None:
            try:
                service(stream, options, argument, self.sim.sandbox)
            except StreamClosed:
                pass
            except Exception:
                logger.exception("service %r failed", destination)
            finally:
                stream.close()

        threading.Thread(target=run, name=f"phone-sim-{name}-{local_id}", daemon=True).start()

    def _stream(self, message: p.Message) -> Stream | None:
        with self._lock:
            stream = self.streams.get(message.arg1)
        if stream is None or stream.remote_id != message.arg0:
            return None
        return stream

    def _on_okay(self, message: p.Message) -> None:
        stream = self._stream(message)
        if stream is not None:
            stream.acknowledged()

    def _on_wrte(self, message: p.Message) -> None:
        stream = self._stream(message)
        if stream is None:
            # adbd answers data for an unknown stream with CLSE so the client stops waiting for OKAY.
            self.send(p.Message(p.A_CLSE, 0, message.arg0), quiet=True)
            return
        stream.deliver(message.data)

    def _on_clse(self, message: p.Message) -> None:
        with self._lock:
            stream = self.streams.get(message.arg1)
            if stream is not None and stream.remote_id == message.arg0:
                del self.streams[message.arg1]
            else:
                stream = None
        if stream is not None:
            stream.closed_by_client()

    def _teardown_streams(self) -> None:
        with self._lock:
            streams = list(self.streams.values())
            self.streams.clear()
        for stream in streams:
            stream.closed_by_client()


class PhoneSimulator:
    """An emulated Android phone reachable as `adb connect HOST:PORT`; `start()` serves in threads.

    Its shell runs commands on this host as the user running the emulator: it is a test device, not a
    sandbox. Without `auth_keys` anyone who reaches the port may do so, hence only loopback addresses
    are allowed then. `accept_new_keys` trusts any public key a client offers (a phone whose user always
    taps "Allow"); it is for loopback too.
    """

    def __init__(
        self,
        port: int,
        root: str | Path,
        serial: str | None = None,
        model_name: str = "AMC PhoneSim",
        abi: str = "arm64-v8a",
        auth_keys: str | Path | None = None,
        *,
        fingerprint: str | None = None,
        host: str = "127.0.0.1",
        accept_new_keys: bool = False,
        limits: ServerLimits | None = None,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.root = Path(root)
        self._serial = serial
        self.model_name = model_name
        self.abi = abi
        self.fingerprint = fingerprint
        self.auth_keys_path = Path(auth_keys) if auth_keys else None
        self.accept_new_keys = accept_new_keys
        self.limits = limits or ServerLimits()
        self.allowed_keys: list[AdbPublicKey] | None = None
        self.stopping = False
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self.sandbox: Sandbox
        self.identity: DeviceIdentity

    @property
    def port(self) -> int:
        if self._port is None:
            raise PhoneSimError("the phone emulator has not been started")
        return self._port

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _check_exposure(self) -> None:
        if is_loopback(self.host):
            return
        user = getpass.getuser()
        if self.auth_keys_path is None:
            raise PhoneSimError(
                f"refusing to listen on {self.host} without auth keys: the emulator's shell runs commands "
                f"on this host as {user}, for anyone who reaches the port. Pass --auth-keys FILE (the "
                "adbkey.pub of each client allowed in, one per line), or listen on 127.0.0.1"
            )
        if self.accept_new_keys:
            raise PhoneSimError(
                f"refusing to listen on {self.host} with --accept-new-keys: it trusts any key a client "
                f"offers, so anyone who reaches the port could run commands as {user}. Drop "
                "--accept-new-keys (list the clients' keys in --auth-keys), or listen on 127.0.0.1"
            )

    def start(self) -> PhoneSimulator:
        if self._listener is not None and not self.stopping:
            raise PhoneSimError(f"the phone emulator is already running on {self.address}")
        self._check_exposure()
        self.stopping = False
        if self.auth_keys_path is not None:
            try:
                self.allowed_keys = load_allow_list(self.auth_keys_path)
            except AuthKeyError as exc:
                raise PhoneSimError(str(exc)) from exc
        elif self.accept_new_keys:
            self.allowed_keys = []  # auth on; every offered key is trusted
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # A restarted emulator comes back on the port it had, like a phone reconnecting.
        port = self._port if self._port is not None else self.requested_port
        try:
            listener.bind((self.host, port))
        except OSError as exc:
            listener.close()
            raise PhoneSimError(
                f"cannot listen on {self.host}:{port}: {exc}; choose another --port (0 picks a free one)"
            ) from exc
        listener.listen(16)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self.identity = DeviceIdentity(
            serial=self._serial or f"PHONESIM{self.port}", model_name=self.model_name, abi=self.abi,
            fingerprint=self.fingerprint,
        )
        try:
            self.sandbox = Sandbox(self.root, props=self.identity.props())
        except OSError as exc:
            listener.close()
            raise PhoneSimError(f"cannot use {self.root} as the phone's /data/local/tmp: {exc}") from exc
        self._thread = threading.Thread(target=self._accept_loop, name=f"phone-sim-{self.port}", daemon=True)
        self._thread.start()
        logger.info(
            "phone emulator %s (%s, %s) on %s, /data/local/tmp = %s, auth %s",
            self.identity.serial,
            self.model_name,
            self.abi,
            self.address,
            self.sandbox.root,
            self.auth_mode,
        )
        return self

    @property
    def auth_mode(self) -> str:
        """"off", "on" (signatures of allowed keys) or "on+new-keys" (offered keys trusted too)."""
        if self.allowed_keys is None:
            return "off"
        return "on+new-keys" if self.accept_new_keys else "on"

    def trust(self, key: AdbPublicKey) -> None:
        """Add `key` to the allow-list for this run (what a phone does when its user taps "Allow")."""
        assert self.allowed_keys is not None
        with self._lock:
            if not any(known.same_key(key) for known in self.allowed_keys):
                self.allowed_keys.append(key)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._connections)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self.stopping:
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return
            peer = f"{addr[0]}:{addr[1]}"
            conn = Connection(sock=sock, peer=peer, sim=self)
            with self._lock:
                full = len(self._connections) >= self.limits.max_connections
                if not full:
                    self._connections.add(conn)
            if full:
                logger.warning(
                    "refused connection from %s: %d clients already connected (ServerLimits.max_connections)",
                    peer, self.limits.max_connections,
                )  # fmt: skip
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            # Bounds every send: a client that stops reading is dropped after io_timeout_s.
            sock.settimeout(self.limits.io_timeout_s)
            logger.info("connection from %s", peer)
            threading.Thread(target=conn.serve, name=f"phone-sim-conn-{addr[1]}", daemon=True).start()

    def _forget(self, conn: Connection) -> None:
        with self._lock:
            self._connections.discard(conn)

    def disconnect_all(self) -> int:
        """Drop every client connection (like pulling the cable) but keep listening; returns how many."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn._shutdown()  # its serve thread then kills the running commands and forgets it
        return len(connections)

    def stop(self) -> None:
        """Stop listening, drop all connections and kill their commands. `start()` may be called again."""
        self.stopping = True
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
            except OSError:
                pass
            self._listener.close()
        self.disconnect_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if hasattr(self, "sandbox"):
            self.sandbox.cleanup()

    def __enter__(self) -> PhoneSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
