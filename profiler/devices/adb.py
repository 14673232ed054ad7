"""Phones (and anything else that speaks ADB) through the pure-Python `adb-shell` library: TCP
(`adb:HOST:PORT`) or USB (`adb:SERIAL`). The agent is pushed once per version of its sources, models
once per content hash; both live under /data/local/tmp/amc on the device."""

from __future__ import annotations

import logging
import posixpath
import re
import shlex
import socket
import threading
from pathlib import Path
from typing import Any

from profiler.devices.base import (
    DEVICE_ROOT,
    CommandResult,
    Device,
    Health,
    agent_files,
    agent_hash,
    agent_source_dir,
)
from profiler.devices.keys import load_signer
from profiler.errors import DeviceUnavailable

log = logging.getLogger(__name__)

_RC_MARK = "__AMC_RC="
_RC_RE = re.compile(re.escape(_RC_MARK) + r"(\d+)\s*$")


class AdbDevice(Device):
    """A device reached over ADB. Subclasses build the adb-shell transport (TCP or USB)."""

    kind = "adb"

    def __init__(self, spec: str, *, key_path: Path | None = None, python: str = "python3",
                 device_root: str = DEVICE_ROOT, benchmark_binary: str | None = None,
                 connect_timeout_s: float = 10.0, auth_timeout_s: float = 10.0):
        super().__init__(spec, benchmark_binary=benchmark_binary)
        self.key_path = key_path
        self.python = python
        self.device_root = device_root
        self.connect_timeout_s = connect_timeout_s
        self.auth_timeout_s = auth_timeout_s
        self._adb: Any = None
        self._conn_lock = threading.RLock()  # adb-shell connections are not thread-safe
        self._agent_ready: str | None = None
        self.model_pushes = 0
        self.agent_pushes = 0

    # -- connection ---------------------------------------------------------------------------
    def _make_adb(self) -> Any:
        raise NotImplementedError

    def _connected(self) -> Any:
        if self._adb is not None and self._adb.available:
            return self._adb
        from adb_shell.exceptions import DeviceAuthError

        # A broken key is this computer's problem, not the phone's: AdbKeyError goes to the caller as
        # it is instead of marking the phone unavailable (which would quarantine every phone).
        signer = load_signer(self.key_path)
        try:
            adb = self._make_adb()
            adb.connect(rsa_keys=[signer], auth_timeout_s=self.auth_timeout_s,
                        transport_timeout_s=self.connect_timeout_s)
        except DeviceAuthError as exc:
            raise DeviceUnavailable(self.spec, f"the device refused our ADB key ({exc})",
                                    hint="accept the 'Allow USB debugging' prompt on the phone") from exc
        except DeviceUnavailable:
            raise
        except Exception as exc:  # socket errors, USB errors, protocol errors
            raise DeviceUnavailable(self.spec, f"cannot connect over ADB: {type(exc).__name__}: {exc}") from exc
        self._adb = adb
        return adb

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an adb-shell call; a broken connection is dropped so the next call reconnects."""
        with self._conn_lock:
            adb = self._connected()
            try:
                return fn(adb, *args, **kwargs)
            except DeviceUnavailable:
                raise
            except Exception as exc:
                self._drop()
                raise DeviceUnavailable(self.spec, f"{what} failed: {type(exc).__name__}: {exc}") from exc

    def _drop(self) -> None:
        if self._adb is not None:
            try:
                self._adb.close()
            except Exception:  # already broken
                pass
        self._adb = None
        self._agent_ready = None
        # Whoever answers at this address next may be another phone.
        self.forget_identity()

    def close(self) -> None:
        with self._conn_lock:
            self._drop()

    def _peer_closed(self) -> bool:
        """Whether the device closed the connection (transports that cannot tell say no)."""
        return False

    def _check_connection(self) -> None:
        if self._adb is None or not self._peer_closed():
            return
        # A phone unplugged (or an emulator stopped) and another one answering at the address must not
        # inherit the first one's cached numbers: reconnect and identify afresh.
        if self._conn_lock.acquire(blocking=False):
            try:
                self._drop()
            finally:
                self._conn_lock.release()
        else:
            self.forget_identity()

    # -- primitives ---------------------------------------------------------------------------
    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        # adb's shell service merges streams and gives no exit status: print it ourselves.
        wrapped = f"{command}; echo {_RC_MARK}$?"
        out = self._call(f"shell {command[:80]!r}", lambda adb: adb.shell(
            wrapped, timeout_s=timeout_s, read_timeout_s=timeout_s, transport_timeout_s=timeout_s))
        text = out if isinstance(out, str) else out.decode("utf-8", "replace")
        text = text.rstrip()
        m = _RC_RE.search(text)
        if m is None:
            raise DeviceUnavailable(self.spec, f"the shell did not finish {command[:80]!r} (output {text[-200:]!r})")
        return CommandResult(int(m.group(1)), text[: m.start()])

    def push(self, local: Path, remote: str, *, timeout_s: float = 120.0) -> None:
        self._call(f"push {local.name}", lambda adb: adb.push(str(local), remote, transport_timeout_s=timeout_s,
                                                               read_timeout_s=timeout_s))

    def file_size(self, remote: str) -> int | None:
        """Size of a remote regular file, None when absent (ADB sync STAT: mode 0 means missing)."""
        mode, size, _ = self._call(f"stat {remote}", lambda adb: adb.stat(remote))
        return int(size) if mode and (mode & 0o170000) == 0o100000 else None

    def _mkdir(self, *remote_dirs: str) -> None:
        res = self.run("mkdir -p " + " ".join(shlex.quote(d) for d in remote_dirs), timeout_s=30)
        if res.rc != 0:
            raise DeviceUnavailable(self.spec, f"cannot create {remote_dirs}: {res.output.strip()[:200]}",
                                    hint="the device must allow writing under /data/local/tmp")

    # -- models and agent -----------------------------------------------------------------------
    def model_path_on_device(self, model_path: Path, sha256: str) -> str:
        """Content-addressed: models/<sha256><ext>. Pushed under a temporary name and renamed, so a
        half-pushed file is never mistaken for the model."""
        models = posixpath.join(self.device_root, "models")
        remote = posixpath.join(models, sha256 + Path(model_path).suffix.lower())
        size = Path(model_path).stat().st_size
        if self.file_size(remote) == size:
            log.debug("%s already holds %s", self.spec, remote)
            return remote
        self._mkdir(models)
        tmp = remote + ".part"
        self.push(Path(model_path), tmp)
        res = self.run(f"mv -f {shlex.quote(tmp)} {shlex.quote(remote)}", timeout_s=30)
        if res.rc != 0 or self.file_size(remote) != size:
            raise DeviceUnavailable(self.spec, f"pushing the model to {remote} did not complete ({res.output[:200]})",
                                    hint="check free space under /data/local/tmp")
        self.model_pushes += 1
        log.info("pushed %s to %s:%s", model_path, self.spec, remote)
        return remote

    def forget_model(self, remote: str) -> None:
        try:
            self.run(f"rm -f {shlex.quote(remote)}", timeout_s=30)
        except DeviceUnavailable as exc:
            log.warning("could not remove %s from %s: %s", remote, self.spec, exc)

    def ensure_agent(self) -> str:
        """Install device_agent under <root>/device_agent once per version of its sources."""
        root = agent_source_dir()
        version = agent_hash(root)
        if self._agent_ready == version:
            return version
        stamp = posixpath.join(self.device_root, "device_agent", ".version")
        res = self.run(f"cat {shlex.quote(stamp)} 2>/dev/null", timeout_s=30)
        if res.rc == 0 and res.stdout.strip() == version:
            self._agent_ready = version
            return version
        files = agent_files(root)
        dirs = sorted({posixpath.join(self.device_root, "device_agent", *p.relative_to(root).parts[:-1])
                       for p in files})
        self._mkdir(*dirs)
        for path in files:
            self.push(path, posixpath.join(self.device_root, "device_agent", *path.relative_to(root).parts))
        res = self.run(f"echo {version} > {shlex.quote(stamp)}", timeout_s=30)
        if res.rc != 0:
            raise DeviceUnavailable(self.spec, f"cannot write the agent stamp: {res.output[:200]}")
        self.agent_pushes += 1
        self._agent_ready = version
        log.info("installed device_agent %s on %s", version, self.spec)
        return version

    def agent_command(self) -> str:
        self.ensure_agent()
        root = shlex.quote(self.device_root)
        return f"cd {root} && PYTHONPATH={root} {shlex.quote(self.python)} -m device_agent"

    def health(self) -> Health:
        health = super().health()
        if health.ok:
            try:
                res = self.run(f"{shlex.quote(self.python)} -c 'import sys; print(sys.version.split()[0])'",
                               timeout_s=20)
                health.info["python"] = res.stdout.strip() if res.rc == 0 else None
                if res.rc != 0 and not self.benchmark_binary:
                    health.detail = "no python3 on the device: only --runtime benchmark_model can measure"
                res = self.run("getprop ro.product.model 2>/dev/null", timeout_s=10)
                if res.rc == 0 and res.stdout.strip():
                    health.info["model"] = res.stdout.strip()
            except DeviceUnavailable as exc:
                health.ok, health.detail = False, exc.reason
        return health


def _eof_aware_transport_class():
    from adb_shell.exceptions import AdbConnectionError
    from adb_shell.transport.tcp_transport import TcpTransport

    class EofAwareTcpTransport(TcpTransport):
        """adb-shell's TCP transport treats a closed socket as "no data yet" and spins until its read
        timeout (minutes during a long measurement); a vanished device should fail at once. And it leaves
        Nagle's algorithm on."""

        def connect(self, transport_timeout_s):
            super().connect(transport_timeout_s)
            # adb-shell sends a message's header and its payload in two writes: with Nagle's algorithm the
            # payload waits for the device's (delayed) ACK of the header, about 40 ms a message on Linux.
            # adb's own client turns Nagle off too (disable_tcp_nagle).
            self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def bulk_read(self, numbytes, transport_timeout_s):
            data = super().bulk_read(numbytes, transport_timeout_s)
            if not data:
                raise AdbConnectionError("the device closed the connection")
            return data

    return EofAwareTcpTransport


def _EofAwareTcpTransport(host: str, port: int):  # noqa: N802 - builds the class lazily (adb-shell import)
    return _eof_aware_transport_class()(host, port)


class AdbTcpDevice(AdbDevice):
    """`adb:HOST:PORT`: a phone with `adb tcpip` enabled, or the phone emulator."""

    def __init__(self, spec: str, *, host: str, port: int, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.host, self.port = host, port
        self._transport: Any = None

    def _peer_closed(self) -> bool:
        sock = getattr(self._transport, "_connection", None)
        if sock is None:
            return False
        try:  # a peek, never a read: nothing is taken from a stream another thread may be reading
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False  # open, nothing to read
        except OSError:
            return True

    def _make_adb(self) -> Any:
        from adb_shell.adb_device import AdbDevice as AdbDevice_

        try:  # fail fast with a clear message when nothing listens
            socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s).close()
        except OSError as exc:
            raise DeviceUnavailable(self.spec, f"nothing answers on {self.host}:{self.port} ({exc})",
                                    hint="is the phone on the network with `adb tcpip` enabled, "
                                         "or `amc phone-sim` running?") from exc
        self._transport = _EofAwareTcpTransport(self.host, self.port)
        return AdbDevice_(self._transport, default_transport_timeout_s=self.connect_timeout_s)


class AdbUsbDevice(AdbDevice):
    """`adb:SERIAL`: a phone on USB (needs libusb and the `usb1` Python binding)."""

    def __init__(self, spec: str, *, serial: str, **kwargs: Any):
        super().__init__(spec, **kwargs)
        self.serial = serial

    def _make_adb(self) -> Any:
        try:
            from adb_shell.adb_device import AdbDeviceUsb
        except ImportError as exc:
            raise DeviceUnavailable(self.spec, f"USB support is not installed ({exc})",
                                    hint="pip install 'adb-shell[usb]' and install libusb-1.0") from exc
        try:
            return AdbDeviceUsb(serial=self.serial, default_transport_timeout_s=self.connect_timeout_s)
        except Exception as exc:
            raise DeviceUnavailable(self.spec, f"no USB phone with serial {self.serial} ({exc})",
                                    hint="stop a running `adb server` (it holds the phone: `adb kill-server`) "
                                         "and check the cable") from exc


def list_usb_serials() -> tuple[list[str], str]:
    """Serials of ADB phones on USB, and a note when USB cannot be listed on this host."""
    try:
        from adb_shell.transport.usb_transport import UsbTransport
    except ImportError as exc:
        return [], f"USB listing unavailable: {exc} (pip install 'adb-shell[usb]')"
    try:
        found = UsbTransport.find_all_adb_devices()
        return sorted({t.serial_number for t in found if getattr(t, "serial_number", None)}), ""
    except Exception as exc:  # no libusb, no permission to /dev/bus/usb
        return [], f"USB listing failed: {type(exc).__name__}: {exc}"
