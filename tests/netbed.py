"""A multi-host test bed on one machine: network namespaces joined by veth links over a bridge, one
"host" per namespace, as the farm runs across real machines (docs/FARM.md, "The multi-host test bed").

    orch   10.231.7.1  the Ray head (token authentication), and every client: `amc devices`, `amc bench`,
                       the drivers of tests/netbed_driver.py (the orchestrator's side of the farm)
    hostA  10.231.7.2  a Ray node, `amc device-host`, and `amc phone-sim` phones on its own loopback
    hostB  10.231.7.3  the same, with other phones

The bridge lives in `orch`; each host's `eth0` is one end of a veth pair whose other end is a port of
that bridge, so `ip -n NS link set eth0 down` cuts a host off as a pulled cable would. Nothing is
routed outside: the addresses exist only inside namespaces this module made, so no traffic leaves
them. Every process starts in its own session (`setsid`) inside its namespace and is ended by session
id, then by `ip netns pids` of the bed's namespaces, before the namespaces (and with them the links)
are deleted; every wait has a deadline.

    python tests/netbed.py up [--state FILE]     # as root: make the bed, print how to reach it
    python tests/netbed.py down [--state FILE]   # end what `up` started and remove its namespaces

Needs root and `ip netns` (iproute2); `skip_reason()` says why not when they are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sessions import alive, end_sessions, new_session, session_pids

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.231.7"  # private; exists only inside the bed's namespaces
HEAD_IP = f"{SUBNET}.1"
RAY_PORT = 6379  # the namespace is the bed's own: the standard port collides with nothing
# Which phones each device host serves: (serial, ro.product.model). A Pixel 7 on both hosts, so a
# measurement can move to the other host; a Galaxy S23 only on hostB, so a measurement of that model
# asked for in `orch` runs on another host than the orchestrator's.
LAYOUT: dict[str, list[tuple[str, str]]] = {
    "hostA": [("NBA-P7", "Pixel 7")],
    "hostB": [("NBB-S23", "Galaxy S23"), ("NBB-P7", "Pixel 7")],
}
DEFAULT_STATE = Path(tempfile.gettempdir()) / "amc-netbed.json"


def skip_reason() -> str | None:
    """Why the bed cannot be made here, or None."""
    if os.geteuid() != 0:
        return "the network test bed needs root (ip netns add, veth links)"
    if shutil.which("ip") is None:
        return "`ip` (iproute2) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()[:200]}"
    if shutil.which("ray", path=str(BIN)) is None:
        return "the farm extra is not installed (pip install -e '.[farm]')"
    return None


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: rc {out.returncode}: {out.stderr.strip()}")
    return out


def netns_pids(ns: str) -> list[int]:
    out = _run("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in out.stdout.split() if p.isdigit() and alive(int(p))]


def end_namespaces(sids: Sequence[int], namespaces: Sequence[str], *, grace_s: float = 5.0) -> None:
    """End every process of the sessions `sids` and any process left in `namespaces` (all the bed's own)."""
    end_sessions(sids, also=lambda: [p for ns in namespaces for p in netns_pids(ns)], grace_s=grace_s)


@dataclass
class NetBed:
    """The namespaces, links and processes of one bed; `up()` makes them, `down()` removes them all."""

    root: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    sessions: dict[str, int] = field(default_factory=dict)  # what -> session id (= the leader's pid)
    phones: dict[str, dict[str, str]] = field(default_factory=dict)  # serial -> host, model, spec, port
    made: list[str] = field(default_factory=list)  # the namespaces made, in order

    # -- names --------------------------------------------------------------------------------------
    def ns(self, host: str) -> str:
        return f"amcnb-{self.tag}-{host}"

    @property
    def hosts(self) -> list[str]:
        return list(LAYOUT)

    def ip(self, host: str) -> str:
        return HEAD_IP if host == "orch" else f"{SUBNET}.{2 + self.hosts.index(host)}"

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{RAY_PORT}"

    @property
    def work_dir(self) -> Path:
        """AMC_RAY_WORK_DIR of the bed's server: one path, each host's own folder behind it (`ray_node`)."""
        return self.root / "node-work"

    @property
    def key(self) -> Path:
        return self.root / "cfg" / "adbkey"

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "RAY_USAGE_STATS_ENABLED": "0",
               "AMC_CONFIG_DIR": str(self.root / "cfg"), "AMC_CACHE_DIR": str(self.root / "cache"),
               "TMPDIR": str(self.root / "tmp"), "AMC_RAY_ADDRESS": self.address, "PYTHONUNBUFFERED": "1",
               # A node cut off is declared dead within seconds (defaults: tens of seconds); the head reads these.
               "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
               "RAY_health_check_failure_threshold": "5"}
        for name in ("AMC_RAY_INSECURE", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
            env.pop(name, None)
        return env

    def host_env(self, host: str, env: dict[str, str] | None = None) -> dict[str, str]:
        """`env` (default: the bed's) for a process in `host`'s namespace: its drivers attach to the Ray node
        of their own host (profiler/farm/cluster.py, AMC_RAY_NODE_IP), not to the head's."""
        return {**(self.env if env is None else env), "AMC_RAY_NODE_IP": self.ip(host)}

    # -- the network --------------------------------------------------------------------------------
    def make_network(self) -> None:
        orch = self.ns("orch")
        for host in ["orch", *self.hosts]:
            _run("ip", "netns", "add", self.ns(host))
            self.made.append(self.ns(host))
            _run("ip", "-n", self.ns(host), "link", "set", "lo", "up")
        _run("ip", "-n", orch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", orch, "addr", "add", f"{HEAD_IP}/24", "dev", "br0")
        _run("ip", "-n", orch, "link", "set", "br0", "up")
        for i, host in enumerate(self.hosts):
            port = f"v{i}"
            _run("ip", "link", "add", "name", port, "netns", orch, "type", "veth", "peer", "name", "eth0",
                 "netns", self.ns(host))
            _run("ip", "-n", orch, "link", "set", port, "master", "br0")
            _run("ip", "-n", orch, "link", "set", port, "up")
            _run("ip", "-n", self.ns(host), "addr", "add", f"{self.ip(host)}/24", "dev", "eth0")
            _run("ip", "-n", self.ns(host), "link", "set", "eth0", "up")
            # Ray finds a process's own address from the route out (a UDP connect: nothing is sent); without
            # one, a driver here takes 127.0.0.1 and attaches to the head's node, not this host's.
            _run("ip", "-n", self.ns(host), "route", "add", "default", "via", HEAD_IP)

    def link(self, host: str, state: str) -> None:
        """Take a host's cable out (`down`) or put it back (`up`)."""
        _run("ip", "-n", self.ns(host), "link", "set", "eth0", state)

    @contextmanager
    def cut_off(self, host: str) -> Iterator[None]:
        """The host's cable out for the block, and back in after it however the block ends."""
        self.link(host, "down")
        try:
            yield
        finally:
            self.link(host, "up")

    # -- processes ----------------------------------------------------------------------------------
    def start(self, what: str, host: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """`args` in `host`'s namespace, in a session of its own; output to ROOT/<what>.log."""
        out = open(self.root / f"{what}.log", "w")  # noqa: SIM115 - the child holds it
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *args], cwd=self.root,
                                env=self.host_env(host, env), stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=new_session)
        out.close()
        self.sessions[what] = proc.pid
        return proc

    def log(self, what: str) -> str:
        path = self.root / f"{what}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def exec(self, host: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
             ) -> subprocess.CompletedProcess:
        """Run `args` in `host`'s namespace to completion (its own session, killed whole on timeout)."""
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(host), *args], cwd=self.root,
                                env=self.host_env(host, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=new_session)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_sessions([proc.pid])
            stdout, stderr = proc.communicate()
            raise AssertionError(f"{args} did not finish within {timeout:.0f} s: {stderr[-2000:]}") from None
        finally:
            end_sessions([proc.pid], grace_s=1.0)  # what it left behind, if anything
        return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)

    def _ray_tmp(self, host: str) -> str:
        path = Path(f"/tmp/nb{self.tag}{host[-1]}")  # short: Ray's socket paths have a length limit
        path.mkdir(exist_ok=True)
        return str(path)

    def ray_node(self, host: str) -> None:
        what = f"ray-{host}"
        # The head has no CPU to give: a job's Ray task (server/ray_jobs.py) runs on a device host's node.
        cpus = "0" if host == "orch" else "1"
        common = ["--node-ip-address", self.ip(host), "--num-cpus", cpus, "--temp-dir", self._ray_tmp(host)]
        if host == "orch":
            args = ["--head", "--port", str(RAY_PORT), "--include-dashboard", "false", "--disable-usage-stats"]
        else:
            args = ["--address", self.address]
        # Each host has a disk of its own for the jobs' folders (AMC_RAY_WORK_DIR names the same path on every
        # node): its own folder bound over WORK_DIR in the mount namespace `ip netns exec` gives the node's
        # processes, as separate machines would have; one shared folder would let a cut-off node's attempt of
        # a job hold the folder lock its restarted attempt on another node waits for.
        disk = self.root / f"disk-{host}"
        disk.mkdir(exist_ok=True)
        self.work_dir.mkdir(exist_ok=True)
        proc = self.start(what, host, "sh", "-c", 'mount --bind "$0" "$1" && shift 1 && exec "$@"', str(disk),
                          str(self.work_dir), str(BIN / "ray"), "start", *args, *common)
        rc = proc.wait(timeout=600)  # (minutes on a 2-core machine busy with other work)
        if rc != 0:
            raise RuntimeError(f"ray start in {host}: rc {rc}: {self.log(what)[-3000:]}")

    def phone(self, host: str, serial: str, model: str, port: int = 0) -> str:
        """Start an emulated phone on `host`'s loopback (as a USB phone, it is reachable from its host only)."""
        (self.root / serial).mkdir(exist_ok=True)
        what = f"phone-{serial}"
        self.start(what, host, str(BIN / "amc"), "phone-sim", "--port", str(port), "--root", str(self.root / serial),
                   "--serial", serial, "--model-name", model, "--auth-keys", f"{self.key}.pub")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.log(what))
            if m:
                spec = f"adb:127.0.0.1:{m.group(1)}"
                self.phones[serial] = {"host": host, "model": model, "spec": spec, "port": m.group(1)}
                return spec
            time.sleep(0.2)
        raise RuntimeError(f"phone {serial} did not start: {self.log(what)[-2000:]}")

    def device_host(self, host: str) -> subprocess.Popen:
        args = [str(BIN / "amc"), "device-host", "--address", self.address, "--no-usb", "--name", host,
                "--scan-s", "1", "--adb-key", str(self.key)]
        for p in self.phones.values():
            if p["host"] == host:
                args += ["--device", p["spec"]]
        return self.start(f"device-host-{host}", host, *args)

    def server(self, token: str, *, port: int = 8000, factory: str = "server.main:create_app", **settings: str) -> str:
        """`amc serve`'s app (uvicorn) in `orch` on its loopback, its jobs as Ray tasks on the bed's cluster;
        its URL (reachable from `orch` only). `settings`: more AMC_* variables; `factory`: the app's maker
        (benchmarks/bench_memory.py passes one that changes a part of it)."""
        data = self.root / "server-data"
        env = {**self.env, "AMC_DATA_DIR": str(data), "AMC_API_TOKEN": token, "AMC_JOBS_ON_RAY": "1",
               "AMC_RAY_WORK_DIR": str(self.work_dir), "AMC_WORKER_THREADS": "1",
               "AMC_MAX_WORKERS": "1", "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", **settings}
        self.start("server", "orch", sys.executable, "-m", "uvicorn", "--factory", factory,
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            probe = self.exec("orch", sys.executable, "-c", f"import httpx; httpx.get('{url}/healthz').raise_for_status()",
                              timeout=60)
            if probe.returncode == 0:
                return url
            time.sleep(1.0)
        raise RuntimeError(f"the server in orch did not answer within 120 s: {self.log('server')[-3000:]}")

    def stop(self, what: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to every process of `what`'s session (a fault), or end it (SIGTERM then KILL)."""
        sid = self.sessions.pop(what)
        if sig == signal.SIGTERM:
            end_sessions([sid])
            return
        for pid in session_pids(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def restart_host(self, host: str) -> None:
        """A host back after a fault: its Ray node and device host, anew (its phones are left running)."""
        for what in (f"device-host-{host}", f"ray-{host}"):
            if what in self.sessions:
                self.stop(what, signal.SIGTERM)
        self.link(host, "up")
        self.ray_node(host)
        self.device_host(host)

    def restore(self, *, within: float = 20.0) -> None:
        """The bed whole again after a test that failed halfway through a fault: links up, dead phone
        emulators started again on their ports, and the Ray node and device host of every host whose phones
        are not all served within `within` s started anew; then every phone served. (A cut longer than the
        head's health check gets a node declared dead, and its raylet exits when the link is back.)"""
        for host in self.hosts:
            self.link(host, "up")
        for serial, p in self.phones.items():
            what = f"phone-{serial}"
            if what not in self.sessions or not any(alive(pid) for pid in session_pids(self.sessions[what])):
                self.sessions.pop(what, None)
                self.phone(p["host"], serial, p["model"], port=int(p["port"]))
        deadline = time.monotonic() + within
        missing = set(self.hosts)
        while missing and time.monotonic() < deadline:
            ok = {d["serial"] for d in self.listing() or [] if d["health"] == "ok"}
            missing = {p["host"] for serial, p in self.phones.items() if serial not in ok}
            time.sleep(2.0)
        for host in sorted(missing):
            self.restart_host(host)
        self.wait_served()

    # -- the whole bed ------------------------------------------------------------------------------
    def up(self) -> NetBed:
        from profiler.devices.keys import ensure_adb_key

        for sub in ("cfg", "cache", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ensure_adb_key(self.key)
        try:
            self.make_network()
            self.ray_node("orch")
            for host in self.hosts:
                self.ray_node(host)
            for host, phones in LAYOUT.items():
                for serial, model in phones:
                    self.phone(host, serial, model)
            for host in self.hosts:
                self.device_host(host)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """End every process the bed started and remove its namespaces (with them, its links). Safe to repeat."""
        end_namespaces(list(self.sessions.values()), [ns for ns in self.made if ns in _namespaces()])
        self.sessions.clear()
        for ns in reversed(self.made):
            if ns in _namespaces():
                _run("ip", "netns", "del", ns, check=False)
        self.made = [ns for ns in self.made if ns in _namespaces()]
        for host in ["orch", *self.hosts]:
            shutil.rmtree(f"/tmp/nb{self.tag}{host[-1]}", ignore_errors=True)

    def listing(self) -> list[dict] | None:
        """The farm's phones as `amc devices --json` in `orch` lists them; None when it printed no listing."""
        out = self.exec("orch", str(BIN / "amc"), "devices", "--ray", self.address, "--json", timeout=120)
        try:
            return json.loads(out.stdout)["devices"] if out.returncode == 0 else None
        except (json.JSONDecodeError, KeyError, TypeError):
            return None

    def wait_served(self, *, within: float = 240.0) -> list[dict]:
        """Block until every phone of LAYOUT is listed healthy by the farm (asked from `orch`)."""
        deadline = time.monotonic() + within
        listed: list[dict] = []
        while time.monotonic() < deadline:
            listed = self.listing() or listed
            if {d["serial"] for d in listed if d["health"] == "ok"} >= set(self.phones):
                return listed
            time.sleep(1.0)
        raise AssertionError(f"not every phone was served within {within:.0f} s: {listed}; "
                             + "; ".join(f"{w}: {self.log(w)[-800:]}" for w in self.sessions if "device-host" in w))

    def state(self) -> dict:
        return {"root": str(self.root), "tag": self.tag, "token": self.token, "sessions": self.sessions,
                "phones": self.phones, "made": self.made, "address": self.address}

    @classmethod
    def from_state(cls, data: dict) -> NetBed:
        return cls(root=Path(data["root"]), tag=data["tag"], token=data["token"], sessions=dict(data["sessions"]),
                   phones=dict(data["phones"]), made=list(data["made"]))


def _namespaces() -> set[str]:
    out = _run("ip", "netns", "list", check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tests/netbed.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help=f"the bed's state file ({DEFAULT_STATE})")
    args = parser.parse_args(argv)
    if args.action == "up":
        reason = skip_reason()
        if reason:
            print(f"error: {reason}", file=sys.stderr)
            return 1
        if args.state.exists():
            print(f"error: {args.state} exists: a bed is up (`down` first)", file=sys.stderr)
            return 1
        bed = NetBed(root=Path(tempfile.mkdtemp(prefix="amc-netbed-")))
        bed.up()
        args.state.write_text(json.dumps(bed.state(), indent=2))
        bed.wait_served()
        print(f"up: head {bed.address} in {bed.ns('orch')}; hosts "
              + ", ".join(f"{h} {bed.ip(h)} in {bed.ns(h)}" for h in bed.hosts))
        for serial, p in bed.phones.items():
            print(f"  {serial}: {p['model']} on {p['host']} ({p['spec']})")
        print(f"  try: RAY_AUTH_MODE=token RAY_AUTH_TOKEN={bed.token} ip netns exec {bed.ns('orch')} "
              f"{BIN / 'amc'} devices --ray {bed.address}")
        print(f"state: {args.state}; logs: {bed.root}")
        return 0
    if not args.state.exists():
        print(f"nothing to do: {args.state} is absent", file=sys.stderr)
        return 0
    bed = NetBed.from_state(json.loads(args.state.read_text()))
    bed.down()
    if bed.made:
        print(f"error: namespaces left: {bed.made}", file=sys.stderr)
        return 1
    args.state.unlink()
    shutil.rmtree(bed.root, ignore_errors=True)
    print("down: every process ended, namespaces removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
