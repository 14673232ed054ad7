"""The phone emulator as an attacker would try it (issue #9), each exploit written as a test that now fails
to exploit: auth by public key alone, an exposed bind, sync through links out of its root, setuid bits,
oversized or endless input. Then property tests: arbitrary bytes on the wire or in a sync stream never
crash the emulator nor touch anything outside its root."""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_agent.phone_sim import PhoneSimError, PhoneSimulator
from device_agent.phone_sim import protocol as p
from device_agent.phone_sim.sandbox import Sandbox
from device_agent.phone_sim.server import ServerLimits
from device_agent.phone_sim.services import sync_service

REPO = Path(__file__).resolve().parents[1]
FAST = ServerLimits(handshake_timeout_s=1.0, io_timeout_s=1.0)


# --- a raw ADB client: sends exactly what a test says, nothing a library would add -------------------------


class Raw:
    def __init__(self, port: int, *, timeout: float = 3.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)

    def send(self, command: int, arg0: int = 0, arg1: int = 0, data: bytes = b"") -> None:
        self.sock.sendall(p.Message(command, arg0, arg1, data).pack())

    def recv(self) -> p.Message | None:
        """The next message; None if the emulator closed the connection (or did not answer in time)."""
        try:
            header = self._exact(p.HEADER_SIZE)
            if header is None:
                return None
            command, arg0, arg1, length, _ = p.unpack_header(header, max_data=1 << 20)
            data = self._exact(length) if length else b""
        except (TimeoutError, ConnectionResetError):
            return None
        return None if data is None else p.Message(command, arg0, arg1, data)

    def _exact(self, size: int) -> bytes | None:
        out = b""
        while len(out) < size:
            chunk = self.sock.recv(size - len(out))
            if not chunk:
                return None
            out += chunk
        return out

    def closed_by_peer(self, within: float = 5.0) -> bool:
        """True if the emulator closes the connection within `within` seconds (anything it sends is read)."""
        self.sock.settimeout(within)
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        return False

    def cnxn(self) -> p.Message | None:
        self.send(p.A_CNXN, p.A_VERSION, p.MAX_PAYLOAD, b"host::features=shell_v2\x00")
        return self.recv()

    def open(self, local_id: int, destination: bytes) -> p.Message | None:
        self.send(p.A_OPEN, local_id, 0, destination + b"\x00")
        return self.recv()

    def close(self) -> None:
        self.sock.close()


def online(port: int) -> Raw:
    client = Raw(port)
    answer = client.cnxn()
    assert answer is not None and answer.command == p.A_CNXN, answer
    return client


class SyncClient:
    """One `sync:` stream over a Raw connection."""

    def __init__(self, client: Raw, local_id: int = 7) -> None:
        self.client = client
        self.local_id = local_id
        okay = client.open(local_id, b"sync:")
        assert okay is not None and okay.command == p.A_OKAY, okay
        self.remote_id = okay.arg0
        self.pending = b""

    def write(self, data: bytes) -> None:
        self.client.send(p.A_WRTE, self.local_id, self.remote_id, data)
        ack = self.client.recv()
        assert ack is not None and ack.command == p.A_OKAY, ack

    def read(self, size: int) -> bytes:
        while len(self.pending) < size:
            message = self.client.recv()
            assert message is not None, "connection closed"
            if message.command == p.A_CLSE:
                raise EOFError("stream closed")
            assert message.command == p.A_WRTE, message
            self.client.send(p.A_OKAY, self.local_id, self.remote_id)
            self.pending += message.data
        out, self.pending = self.pending[:size], self.pending[size:]
        return out

    def request(self, kind: bytes, path: str) -> None:
        encoded = path.encode()
        self.write(p.SYNC_HEADER.pack(kind, len(encoded)) + encoded)

    def status(self) -> tuple[bytes, str]:
        """(OKAY or FAIL, message) after a SEND."""
        kind, length = p.SYNC_HEADER.unpack(self.read(p.SYNC_HEADER.size))
        return kind, self.read(length).decode() if kind == b"FAIL" else ""

    def push(self, path: str, data: bytes, mode: int = 0o100644) -> tuple[bytes, str]:
        self.request(b"SEND", f"{path},{mode}")
        body = b"".join(
            p.SYNC_HEADER.pack(b"DATA", len(data[i : i + 4096])) + data[i : i + 4096] for i in range(0, len(data), 4096)
        )
        self.write(body + p.SYNC_HEADER.pack(b"DONE", 1_700_000_000))
        return self.status()

    def link(self, path: str, target: str) -> tuple[bytes, str]:
        return self.push(path, target.encode(), mode=stat.S_IFLNK | 0o777)

    def pull(self, path: str) -> tuple[bytes, bytes]:
        """(b"DONE", content) or (b"FAIL", message)."""
        self.request(b"RECV", path)
        content = b""
        while True:
            kind, length = p.SYNC_HEADER.unpack(self.read(p.SYNC_HEADER.size))
            if kind == b"DONE":
                return kind, content
            if kind == b"FAIL":
                return kind, self.read(length)
            assert kind == b"DATA", kind
            content += self.read(length)

    def list(self, path: str) -> list[str]:
        self.request(b"LIST", path)
        names = []
        while True:
            kind, _mode, _size, _mtime, length = p.DENT_V1.unpack(self.read(p.DENT_V1.size))
            if kind == b"DONE":
                return names
            names.append(self.read(length).decode())

    def stat2(self, path: str) -> tuple[int, int]:
        """(errno, mode) of STA2."""
        self.request(b"STA2", path)
        fields = p.STAT_V2.unpack(self.read(p.STAT_V2.size))
        return fields[1], fields[4]


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(phone root, a folder next to it that must stay untouched, the secret in it)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = b"SECRET-" + secrets.token_hex(8).encode()
    (outside / "secret.txt").write_bytes(secret)
    return tmp_path / "phone", outside, secret


@pytest.fixture
def sim(layout) -> Iterator[PhoneSimulator]:
    root, _outside, _secret = layout
    simulator = PhoneSimulator(0, root, limits=FAST).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory):
    """(allow-list file, the allowed private key, its adbkey.pub line, another private key)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from profiler.devices.keys import android_public_key

    folder = tmp_path_factory.mktemp("keys")
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    good_pub = android_public_key(good) + b" good@test"
    allowed = folder / "adb_keys"
    allowed.write_bytes(good_pub + b"\n")
    return allowed, good, good_pub, other


def sign(key, token: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils

    return key.sign(token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))


def token_of(client: Raw) -> bytes:
    message = client.cnxn()
    assert message is not None and (message.command, message.arg0) == (p.A_AUTH, p.AUTH_TOKEN), message
    return message.data


# --- authentication -----------------------------------------------------------------------------------------


def test_allow_listed_public_key_alone_does_not_get_in(keys, tmp_path: Path) -> None:
    allowed, _good, good_pub, _other = keys
    with PhoneSimulator(0, tmp_path / "phone", auth_keys=allowed, limits=FAST) as simulator:
        client = Raw(simulator.port)
        token_of(client)
        # The exploit: answer the token with the allow-listed *public* key instead of a signature.
        client.send(p.A_AUTH, p.AUTH_RSAPUBLICKEY, 0, good_pub + b"\x00")
        client.send(p.A_OPEN, 1, 0, b"shell:id > pwned\x00")
        assert client.closed_by_peer(), "the emulator kept a client that only showed a public key"
        assert not (simulator.sandbox.root / "pwned").exists()


def test_public_key_after_failed_signature_is_refused(keys, tmp_path: Path) -> None:
    allowed, _good, good_pub, other = keys
    with PhoneSimulator(0, tmp_path / "phone", auth_keys=allowed, limits=FAST) as simulator:
        client = Raw(simulator.port)
        token = token_of(client)
        client.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, sign(other, token))
        again = client.recv()
        assert again is not None and (again.command, again.arg0) == (p.A_AUTH, p.AUTH_TOKEN)
        client.send(p.A_AUTH, p.AUTH_RSAPUBLICKEY, 0, good_pub + b"\x00")
        assert client.closed_by_peer()


def test_signature_gets_in_and_a_replayed_signature_does_not(keys, tmp_path: Path) -> None:
    allowed, good, _good_pub, _other = keys
    with PhoneSimulator(0, tmp_path / "phone", auth_keys=allowed, limits=FAST) as simulator:
        client = Raw(simulator.port)
        token = token_of(client)
        signature = sign(good, token)
        client.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, signature)
        answer = client.recv()
        assert answer is not None and answer.command == p.A_CNXN, answer
        client.close()

        # A recorded signature answers only its own token: a new connection gets a fresh one.
        replay = Raw(simulator.port)
        fresh = token_of(replay)
        assert fresh != token
        replay.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, signature)
        answer = replay.recv()
        assert answer is not None and (answer.command, answer.arg0) == (p.A_AUTH, p.AUTH_TOKEN), answer
        replay.close()


def test_too_many_wrong_signatures_drop_the_client(keys, tmp_path: Path) -> None:
    allowed, _good, _good_pub, other = keys
    with PhoneSimulator(0, tmp_path / "phone", auth_keys=allowed, limits=FAST) as simulator:
        client = Raw(simulator.port)
        token = token_of(client)
        for _ in range(20):
            try:
                client.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, sign(other, token))
            except OSError:
                break
            answer = client.recv()
            if answer is None:
                break
            token = answer.data
        assert client.closed_by_peer(within=2)


def test_offered_key_is_trusted_only_when_the_operator_asked(keys, tmp_path: Path) -> None:
    _allowed, _good, _good_pub, other = keys
    from profiler.devices.keys import android_public_key

    other_pub = android_public_key(other) + b" new@test\x00"
    with PhoneSimulator(0, tmp_path / "phone", accept_new_keys=True, limits=FAST) as simulator:
        assert simulator.auth_mode == "on+new-keys"
        client = Raw(simulator.port)
        token_of(client)
        client.send(p.A_AUTH, p.AUTH_RSAPUBLICKEY, 0, other_pub)
        answer = client.recv()
        assert answer is not None and answer.command == p.A_CNXN, answer
        client.close()
        # Once trusted, the key signs its way in like an allow-listed one.
        again = Raw(simulator.port)
        again.send(p.A_AUTH, p.AUTH_SIGNATURE, 0, sign(other, token_of(again)))
        answer = again.recv()
        assert answer is not None and answer.command == p.A_CNXN, answer
        again.close()


def test_emulator_refuses_to_listen_beyond_loopback_without_auth_keys(keys, tmp_path: Path) -> None:
    allowed = keys[0]
    with pytest.raises(PhoneSimError, match=r"--auth-keys FILE.*or listen on 127\.0\.0\.1"):
        PhoneSimulator(0, tmp_path / "phone", host="0.0.0.0").start()
    with pytest.raises(PhoneSimError, match="--accept-new-keys"):
        PhoneSimulator(0, tmp_path / "phone", host="0.0.0.0", auth_keys=allowed, accept_new_keys=True).start()
    with PhoneSimulator(0, tmp_path / "phone", host="0.0.0.0", auth_keys=allowed) as simulator:
        assert simulator.auth_mode == "on"
    for loopback in ("127.0.0.1", "localhost", "127.0.0.2"):
        PhoneSimulator(0, tmp_path / "phone", host=loopback).start().stop()


def test_cli_refuses_exposed_bind_and_says_what_to_do(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "device_agent.phone_sim", "--port", "0", "--root", str(tmp_path), "--host", "0.0.0.0"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "without auth keys" in proc.stderr and "--auth-keys" in proc.stderr, proc.stderr


def test_help_and_readme_say_the_shell_runs_host_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "device_agent.phone_sim", "--help"], cwd=REPO, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    text = " ".join(proc.stdout.split())
    assert "runs commands on this host as the user running the emulator" in text
    assert "not a sandbox" in text and "--accept-new-keys" in text
    readme = " ".join((REPO / "device_agent" / "README.md").read_text().split())
    assert "runs commands on this host as the user running the emulator" in readme
    assert "not a sandbox" in readme


# --- sync stays inside the root -----------------------------------------------------------------------------


def test_pushed_link_out_of_the_root_is_refused(sim: PhoneSimulator, layout) -> None:
    _root, outside, secret = layout
    sync = SyncClient(online(sim.port))
    # The exploit: a link to a folder outside, then a push and a pull through it.
    kind, message = sync.link("/data/local/tmp/esc", str(outside))
    assert kind == b"FAIL" and "outside" in message
    kind, message = sync.link("/data/local/tmp/rel", "../outside")
    assert kind == b"FAIL" and "above" in message
    kind, message = sync.link("/data/local/tmp/sys", "/etc")
    assert kind == b"FAIL"
    assert not any(path.is_symlink() for path in sim.sandbox.root.rglob("*"))
    assert sync.push("/data/local/tmp/esc/planted", b"x")[0] == b"OKAY"  # a plain folder now, inside
    assert sync.pull("/data/local/tmp/rel/secret.txt")[0] == b"FAIL"
    assert sorted(os.listdir(outside)) == ["secret.txt"] and (outside / "secret.txt").read_bytes() == secret


def test_links_planted_by_the_shell_are_not_followed_out(sim: PhoneSimulator, layout) -> None:
    root, outside, secret = layout
    # The shell runs host commands (it is not a sandbox), so it can plant links; sync must not use them.
    os.symlink(outside, sim.sandbox.root / "planted")
    os.symlink("../outside/secret.txt", sim.sandbox.root / "file_link")
    sync = SyncClient(online(sim.port))
    kind, message = sync.pull("/data/local/tmp/planted/secret.txt")
    assert kind == b"FAIL" and secret not in message
    assert sync.pull("/data/local/tmp/file_link")[0] == b"FAIL"
    assert sync.push("/data/local/tmp/planted/new.txt", b"written outside?")[0] == b"FAIL"
    assert sync.push("/data/local/tmp/planted/sub/new.txt", b"written outside?")[0] == b"FAIL"
    assert sync.list("/data/local/tmp/planted") == []
    errno_, _mode = sync.stat2("/data/local/tmp/planted/secret.txt")
    assert errno_ != 0
    # Pushing over a link replaces the link, never writes through it.
    assert sync.push("/data/local/tmp/file_link", b"replaced")[0] == b"OKAY"
    assert not (sim.sandbox.root / "file_link").is_symlink()
    assert sorted(os.listdir(outside)) == ["secret.txt"] and (outside / "secret.txt").read_bytes() == secret


def test_links_inside_the_root_work_and_cannot_be_turned_outward(sim: PhoneSimulator, layout) -> None:
    root, outside, secret = layout
    sync = SyncClient(online(sim.port))
    assert sync.push("/data/local/tmp/a/b/file.txt", b"inside")[0] == b"OKAY"
    assert sync.link("/data/local/tmp/to_b", "a/b") == (b"OKAY", "")
    assert sync.link("/data/local/tmp/abs_b", "/data/local/tmp/a/b") == (b"OKAY", "")
    assert sync.pull("/data/local/tmp/to_b/file.txt") == (b"DONE", b"inside")
    assert sync.pull("/data/local/tmp/abs_b/file.txt") == (b"DONE", b"inside")
    assert sync.list("/data/local/tmp/to_b") == [".", "..", "file.txt"]
    # A device path link target is stored as the host path, so the shell sees the same file.
    assert os.readlink(sim.sandbox.root / "abs_b") == str(sim.sandbox.root / "a" / "b")
    # s -> a/b makes l -> s/../.. the root; re-pointing s at "." would make l the root's parent.
    assert sync.link("/data/local/tmp/s", "a/b")[0] == b"OKAY"
    assert sync.link("/data/local/tmp/l", "s/../..")[0] == b"OKAY"
    assert sync.link("/data/local/tmp/s", ".")[0] == b"OKAY"
    kind, message = sync.pull("/data/local/tmp/l/outside/secret.txt")
    assert kind == b"FAIL" and secret not in message
    assert sync.push("/data/local/tmp/l/outside/x", b"x")[0] == b"FAIL"
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_pushed_modes_lose_setuid_setgid_and_sticky(sim: PhoneSimulator) -> None:
    sync = SyncClient(online(sim.port))
    for name, mode in {"suid": 0o104755, "sgid": 0o102755, "sticky": 0o101777, "zero": 0o100000}.items():
        assert sync.push(f"/data/local/tmp/{name}", b"#!/bin/sh\n", mode=mode)[0] == b"OKAY"
    modes = {name: stat.S_IMODE((sim.sandbox.root / name).stat().st_mode) for name in ("suid", "sgid", "sticky", "zero")}
    assert modes == {"suid": 0o755, "sgid": 0o755, "sticky": 0o777, "zero": 0o644}


def test_sync_limits_oversized_data_and_paths(sim: PhoneSimulator) -> None:
    sync = SyncClient(online(sim.port))
    long_path = "/data/local/tmp/" + "x" * 2000
    sync.request(b"STAT", long_path)
    kind, length = p.SYNC_HEADER.unpack(sync.read(p.SYNC_HEADER.size))
    assert kind == b"FAIL" and b"longer than 1024" in sync.read(length)

    sync = SyncClient(online(sim.port), local_id=8)
    sync.request(b"SEND", "/data/local/tmp/big,33188")
    # A DATA record announcing more than 64 KiB fails the sync and closes the stream.
    sync.write(p.SYNC_HEADER.pack(b"DATA", p.SYNC_DATA_MAX + 1) + b"\x00" * 1000)
    kind, message = sync.status()
    assert kind == b"FAIL" and "65536" in message
    with pytest.raises(EOFError):
        sync.read(1)
    assert not (sim.sandbox.root / "big").exists()
    assert not [path for path in sim.sandbox.root.iterdir() if "phone-sim-part" in path.name]


# --- resource limits ----------------------------------------------------------------------------------------


def test_silent_and_stalled_clients_are_dropped(sim: PhoneSimulator) -> None:
    silent = Raw(sim.port)
    assert silent.closed_by_peer(within=5)  # no handshake within handshake_timeout_s (1 s here)
    stalled = online(sim.port)
    stalled.sock.sendall(p.Message(p.A_OPEN, 1, 0, b"sync:\x00").pack()[:10])  # half a header, then nothing
    assert stalled.closed_by_peer(within=5)  # io_timeout_s is 1 s here (60 s by default)
    idle = online(sim.port)  # an authorised client may stay idle between messages
    assert not idle.closed_by_peer(within=2)
    assert idle.open(1, b"sync:") is not None


def test_connections_are_capped(layout) -> None:
    root = layout[0]
    limits = ServerLimits(handshake_timeout_s=5, io_timeout_s=5, max_connections=2)
    with PhoneSimulator(0, root, limits=limits) as simulator:
        first, second = online(simulator.port), online(simulator.port)
        third = Raw(simulator.port)
        assert third.closed_by_peer(within=3)
        first.close()
        deadline = time.monotonic() + 5
        while simulator.connection_count > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        online(simulator.port).close()  # a slot is free again
        second.close()


def test_streams_per_connection_are_capped(layout) -> None:
    limits = ServerLimits(handshake_timeout_s=5, io_timeout_s=5, max_streams=2)
    with PhoneSimulator(0, layout[0], limits=limits) as simulator:
        client = online(simulator.port)
        for local_id in (1, 2):
            answer = client.open(local_id, b"sync:")
            assert answer is not None and answer.command == p.A_OKAY
        refused = client.open(3, b"sync:")
        assert refused is not None and (refused.command, refused.arg1) == (p.A_CLSE, 3)


def test_messages_longer_than_the_negotiated_payload_drop_the_client(sim: PhoneSimulator) -> None:
    before = Raw(sim.port)
    # Announcing 2 GiB before the handshake: dropped at once, nothing is allocated or awaited.
    before.sock.sendall(struct.pack("<6I", p.A_CNXN, 0, 0, 1 << 31, 0, p.A_CNXN ^ 0xFFFFFFFF))
    assert before.closed_by_peer(within=2)
    client = Raw(sim.port)
    client.send(p.A_CNXN, p.A_VERSION, 4096, b"host::\x00")  # the client asks for 4 KiB messages
    answer = client.recv()
    assert answer is not None and answer.arg1 == 4096
    client.send(p.A_WRTE, 1, 1, b"x" * 5000)
    assert client.closed_by_peer(within=2)


def test_flow_control_breakers_are_dropped_and_their_command_killed(sim: PhoneSimulator) -> None:
    client = online(sim.port)
    opened = client.open(1, b"shell,v2,raw:echo $$ > pid; exec sleep 60")
    assert opened is not None and opened.command == p.A_OKAY
    pid = _pid_written(sim, "pid")
    chunk = p.SHELL_HEADER.pack(p.SHELL_STDIN, 60_000) + b"y" * 60_000
    try:
        for _ in range(200):  # 12 MB ahead of any OKAY; `sleep` reads none of it
            client.send(p.A_WRTE, 1, opened.arg0, chunk)
    except OSError:
        pass  # reset by the emulator while we were still sending
    assert client.closed_by_peer(within=5)
    _wait_dead(pid)


def test_oversized_shell_packet_closes_the_stream(sim: PhoneSimulator) -> None:
    client = online(sim.port)
    opened = client.open(1, b"shell,v2,raw:cat")
    assert opened is not None and opened.command == p.A_OKAY
    client.send(p.A_WRTE, 1, opened.arg0, p.SHELL_HEADER.pack(p.SHELL_STDIN, 1 << 31) + b"z" * 100)
    closed = None
    for _ in range(10):
        message = client.recv()
        if message is None or message.command == p.A_CLSE:
            closed = message
            break
    assert closed is not None and closed.command == p.A_CLSE


def test_a_client_that_stops_reading_is_let_go(sim: PhoneSimulator) -> None:
    client = online(sim.port)
    opened = client.open(1, b"shell,v2,raw:echo $$ > pid2; exec yes")
    assert opened is not None and opened.command == p.A_OKAY
    # Never acknowledge: after io_timeout_s (1 s) the stream is closed and its command killed.
    _wait_dead(_pid_written(sim, "pid2"))


def _pid_written(sim: PhoneSimulator, name: str, within: float = 10) -> int:
    """The process id a shell command wrote to `name` in the emulator's root (waits for the file)."""
    path = sim.sandbox.root / name
    deadline = time.monotonic() + within
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return int(path.read_text())


def _wait_dead(pid: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # a zombie is dead too; the entry can vanish while read (reaped in between)
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return
        except (FileNotFoundError, ProcessLookupError):
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} outlived its stream")


def test_server_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_connections must be at least 1"):
        ServerLimits(max_connections=0)
    with pytest.raises(ValueError, match="io_timeout_s must be > 0"):
        ServerLimits(io_timeout_s=0)
    with pytest.raises(ValueError, match="stream_backlog_bytes"):
        ServerLimits(stream_backlog_bytes=10)


# --- property tests: the message codec ----------------------------------------------------------------------

u32 = st.integers(min_value=0, max_value=0xFFFFFFFF)


@settings(max_examples=200, deadline=None)
@given(command=u32, arg0=u32, arg1=u32, data=st.binary(max_size=2048))
def test_codec_round_trips(command: int, arg0: int, arg1: int, data: bytes) -> None:
    packed = p.Message(command, arg0, arg1, data).pack()
    assert len(packed) == p.HEADER_SIZE + len(data)
    assert p.unpack_header(packed[: p.HEADER_SIZE]) == (command, arg0, arg1, len(data), p.checksum(data))


@settings(max_examples=200, deadline=None)
@given(header=st.binary(min_size=0, max_size=40), max_data=st.integers(min_value=0, max_value=1 << 20))
def test_codec_rejects_what_is_not_a_header(header: bytes, max_data: int) -> None:
    try:
        _command, _a0, _a1, length, _check = p.unpack_header(header, max_data=max_data)
    except p.ProtocolError:
        return
    assert len(header) == p.HEADER_SIZE and length <= max_data


# --- property tests: arbitrary bytes against a running emulator ---------------------------------------------

# Destinations that never reach the host shell: the fuzzer must not run random shell commands.
destinations = st.one_of(
    st.sampled_from([b"sync:", b"reboot:", b"root:", b"usb:", b"nosuch:", b"shell", b""]),
    st.binary(max_size=40).filter(lambda d: not d.lstrip().startswith((b"shell", b"exec"))),
)
messages = st.tuples(
    st.sampled_from([p.A_CNXN, p.A_AUTH, p.A_OPEN, p.A_OKAY, p.A_WRTE, p.A_CLSE, p.A_SYNC, p.A_STLS, 0]),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=4),
    st.one_of(st.binary(max_size=300), destinations),
).filter(lambda m: m[0] != p.A_OPEN or not m[3].lstrip().startswith((b"shell", b"exec")))


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PhoneSimulator, Path, bytes]]:
    base = tmp_path_factory.mktemp("fuzz")
    (base / "outside").mkdir()
    secret = b"SECRET-" + secrets.token_hex(8).encode()
    (base / "outside" / "secret.txt").write_bytes(secret)
    limits = ServerLimits(handshake_timeout_s=2, io_timeout_s=2)
    simulator = PhoneSimulator(0, base / "phone", limits=limits).start()
    os.symlink(base / "outside", simulator.sandbox.root / "esc")
    yield simulator, base / "outside", secret
    simulator.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    garbage=st.binary(max_size=200),
    script=st.lists(messages, max_size=8),
    handshake=st.booleans(),
    split=st.integers(min_value=1, max_value=64),
)
def test_arbitrary_bytes_never_crash_the_emulator(
    fuzz_target, caplog, garbage: bytes, script: list, handshake: bool, split: int
) -> None:
    simulator, outside, secret = fuzz_target
    wire = b""
    if handshake:
        wire += p.Message(p.A_CNXN, p.A_VERSION, p.MAX_PAYLOAD, b"host::\x00").pack()
    wire += b"".join(p.Message(c, a0, a1, d).pack() for c, a0, a1, d in script) + garbage
    received = b""
    with caplog.at_level(logging.WARNING, logger="device_agent.phone_sim"):
        with socket.create_connection(("127.0.0.1", simulator.port), timeout=3) as sock:
            try:
                for start in range(0, len(wire), split):
                    sock.sendall(wire[start : start + split])
                sock.shutdown(socket.SHUT_WR)
                sock.settimeout(0.3)
                while chunk := sock.recv(65536):
                    received += chunk
            except OSError:  # it hung up on us, mid-send or before our shutdown (ENOTCONN): the checks follow
                pass
        # Still serving: a new client completes the handshake.
        fresh = online(simulator.port)
        fresh.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert secret not in received
    assert sorted(os.listdir(outside)) == ["secret.txt"] and (outside / "secret.txt").read_bytes() == secret


# --- property tests: the sync protocol, in process ----------------------------------------------------------


class FakeStream:
    """A ServiceStream fed from a list of chunks, recording what the service writes."""

    max_payload = 4096

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.written = bytearray()
        self.closed = False

    def read(self) -> bytes | None:
        if self.closed or not self.chunks:
            return None
        return self.chunks.pop(0)

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def on_close(self, callback) -> None:
        pass


# Names that exist in the reset root (sub, the planted links esc and lnk) or outside it are drawn most
# often, so short paths through the planted links are tried often; prefixes favour the sandbox's own.
# (Weights are repetitions in a sampled_from list: one_of would fold identical branches together.)
PARTS = 4 * ["lnk", "esc", "secret.txt", "file.txt", "..", "sub"] + [".", "", "outside", "a", "x" * 300, "\udcff", "a\x00b"]
PREFIXES = 4 * ["/data/local/tmp/", ""] + ["/data/local/tmp/sub/../", "/sdcard/", "/", "/etc/", "/data/local/tmp/../../../"]
KINDS = 4 * [b"RECV", b"LIST", b"SEND"] + 2 * [b"STA2", b"STAT", b"LST2"] + [b"QUIT", b"JUNK"]  # the last two end it


@st.composite
def sync_paths(draw) -> str:
    return draw(st.sampled_from(PREFIXES)) + "/".join(draw(st.lists(st.sampled_from(PARTS), max_size=3)))


@st.composite
def link_targets(draw, outside: str) -> bytes:
    choice = draw(st.sampled_from(["path", "outside", "relative", "raw"]))
    if choice == "outside":
        return (outside + draw(st.sampled_from(["", "/secret.txt", "/.."]))).encode()
    if choice == "relative":
        return "/".join(draw(st.lists(st.sampled_from(["..", ".", "a", "esc", "outside", "sub"]), max_size=6))).encode()
    if choice == "raw":
        return draw(st.binary(max_size=50))
    return draw(sync_paths()).encode("utf-8", errors="surrogateescape")


def sync_request(draw, outside: str) -> bytes:
    kind = draw(st.sampled_from(KINDS))
    path = draw(sync_paths()).encode("utf-8", errors="surrogateescape")
    if kind != b"SEND":
        return p.SYNC_HEADER.pack(kind, len(path)) + path
    modes = [0o100644, 0o104755, 0o102777, 0o101777, 0o120777, 0o120777, 0o040755]
    mode = draw(st.one_of(st.sampled_from(modes), st.integers(0, 0xFFFFFFFF)))
    spec = path + b"," + str(mode).encode()
    body = p.SYNC_HEADER.pack(b"SEND", len(spec)) + spec
    payload = draw(link_targets(outside)) if stat.S_ISLNK(mode) else draw(st.binary(max_size=300))
    body += p.SYNC_HEADER.pack(b"DATA", len(payload)) + payload
    extra = draw(st.one_of(st.binary(max_size=300), st.none(), st.integers(p.SYNC_DATA_MAX + 1, 0xFFFFFFFF)))
    if isinstance(extra, bytes):
        body += p.SYNC_HEADER.pack(b"DATA", len(extra)) + extra
    elif extra is not None:  # oversized: fails the sync and closes the stream
        body += p.SYNC_HEADER.pack(b"DATA", extra) + draw(st.binary(max_size=20))
    return body + p.SYNC_HEADER.pack(b"DONE", draw(u32))


@st.composite
def sync_sessions(draw, outside: str) -> list[bytes]:
    requests = [sync_request(draw, outside) for _ in range(draw(st.integers(1, 6)))]
    wire = b"".join(requests) + draw(st.binary(max_size=64))
    sizes = draw(st.lists(st.integers(1, 700), min_size=1, max_size=8))
    chunks, start, index = [], 0, 0
    while start < len(wire):
        size = sizes[index % len(sizes)]
        chunks.append(wire[start : start + size])
        start, index = start + size, index + 1
    return chunks


@pytest.fixture(scope="module")
def sync_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Sandbox, Path, bytes, str]]:
    """(a sandbox, a folder next to its root, the secret in it, a file name found only there)."""
    base = tmp_path_factory.mktemp("sync-prop")
    outside = base / "outside"
    outside.mkdir()
    secret = b"SECRET-" + secrets.token_hex(8).encode()
    hidden = f"hidden-{secrets.token_hex(8)}"
    for name in ("secret.txt", "file.txt", hidden):  # the names a path through a planted link may reach
        (outside / name).write_bytes(secret)
    sandbox = Sandbox(base / "phone", props={})
    yield sandbox, outside, secret, hidden
    sandbox.cleanup()


def _reset(root: Path, outside: Path) -> None:
    shutil.rmtree(root)
    (root / ".sdcard").mkdir(parents=True)
    (root / "sub").mkdir()
    (root / "sub" / "file.txt").write_bytes(b"inside")
    os.symlink(outside, root / "esc")  # as the shell could have planted it
    os.symlink("../outside", root / "lnk")


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        out[str(path)] = (mode, path.read_bytes() if stat.S_ISREG(mode) else b"")
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_sync_never_reads_nor_writes_outside_its_root(sync_sandbox, data) -> None:
    sandbox, outside, secret, hidden = sync_sandbox
    _reset(sandbox.root, outside)
    outside_before = _snapshot(outside)
    base_before = sorted(os.listdir(outside.parent))
    if data.draw(st.sampled_from([True, True, True, False])):
        chunks = data.draw(sync_sessions(str(outside)))
    else:
        chunks = data.draw(st.lists(st.binary(max_size=300), max_size=6))
    stream = FakeStream(chunks)
    sync_service(stream, [], "", sandbox)  # returns; an exception here fails the property
    assert secret not in stream.written
    assert hidden.encode() not in stream.written  # no listing of the outside folder either
    assert _snapshot(outside) == outside_before
    assert sorted(os.listdir(outside.parent)) == base_before
    for path in sandbox.root.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISREG(mode):
            assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX), (path, oct(mode))
        assert "phone-sim-part" not in path.name and "phone-sim-link" not in path.name
