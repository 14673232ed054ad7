"""The farm across network boundaries (tests/netbed.py): the Ray head and the orchestrator's clients in
one network namespace, two device hosts with emulated phones in two others, joined over veth links with
token-authenticated Ray. Every phone is listed by model and host; a phone model asked for from the
orchestrator is measured on the host that has it; Ray listens only inside the bed; a process without the
cluster's token is refused; and faults: a host's link cut mid-measurement, a host killed mid-table-build, a
phone emulator killed while a model is pushed to it.
Skipped unless root with `ip netns`."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from netbed import BIN, HEAD_IP, LAYOUT, NetBed, netns_pids, skip_reason

pytestmark = pytest.mark.netbed


@pytest.fixture(scope="module")
def bed() -> Iterator[NetBed]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with tempfile.TemporaryDirectory(prefix="amc-netbed-") as tmp:
        b = NetBed(root=Path(tmp))
        try:
            b.up()
            b.wait_served()
            yield b
        finally:
            b.down()
            assert not b.made, f"namespaces left behind: {b.made}"


@pytest.fixture(autouse=True)
def whole_after_a_failure(bed: NetBed, request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that fails halfway through its fault leaves the bed whole for the next (one host cut off and
    never brought back once failed every test after it)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        bed.restore()


@pytest.fixture(scope="module")
def heavy_onnx(bed: NetBed) -> Path:
    """A model of 64 MB of weights and little work: its push lasts long enough to kill the phone during it."""
    import torch
    from torch import nn

    from profiler.export import export_onnx

    torch.manual_seed(0)
    return export_onnx(nn.Sequential(nn.Linear(4096, 4096), nn.ReLU()), torch.randn(1, 4096), bed.root / "heavy.onnx")


@pytest.fixture(scope="module")
def slow_onnx(bed: NetBed) -> Path:
    """A model of a few ms per run: 1,500 runs last long enough to cut a host off in the middle."""
    import torch
    from torch import nn

    from profiler.export import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
    return export_onnx(model, torch.randn(1, 16, 56, 56), bed.root / "slow.onnx")


class Driver:
    """tests/netbed_driver.py in the `orch` namespace; its JSON lines arrive on `lines`."""

    def __init__(self, bed: NetBed, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen(["ip", "netns", "exec", bed.ns("orch"), sys.executable,
                                      str(Path(__file__).with_name("netbed_driver.py")), *args],
                                     cwd=bed.root, env={**bed.host_env("orch"), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        bed.sessions[f"driver-{self.proc.pid}"] = self.proc.pid
        self.lines: queue.Queue[dict] = queue.Queue()
        self.all: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def wait(self, key: str, within: float, *, at_least: int | None = None) -> dict:
        """The next line with `key` (with a value of `at_least` or more, when given) within `within` s."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                item = self.lines.get(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.all.append(item)
            if key in item and (at_least is None or item[key] >= at_least):
                return item
        err = self.proc.stderr.read()[-3000:] if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"no {key!r} from the driver within {within:.0f} s: {self.all}; {err}")


def _listing(bed: NetBed) -> list[dict]:
    out = bed.exec("orch", str(BIN / "amc"), "devices", "--ray", bed.address, "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    try:
        return json.loads(out.stdout)["devices"]
    except json.JSONDecodeError as exc:  # stdout is the listing alone: Ray's notices go to stderr (cluster.py)
        raise AssertionError(f"`amc devices --json` printed no JSON: {out.stdout[-2000:]!r}; "
                             f"stderr {out.stderr[-2000:]!r}") from exc


def test_every_phone_is_listed_by_model_and_host(bed: NetBed) -> None:
    listed = _listing(bed)
    assert {(d["serial"], d["model"], d["host"]) for d in listed} == {
        (serial, model, host) for host, phones in LAYOUT.items() for serial, model in phones}
    assert all(d["health"] == "ok" and d["android"] for d in listed), listed


def test_a_phone_model_is_measured_on_the_host_that_has_it(bed: NetBed) -> None:
    out = bed.exec("orch", str(BIN / "amc"), "bench", "demo-cnn", "--device", "model:Galaxy_S23", "--json",
                   "--runs", "5", "--warmup", "1", "--no-cache", timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    farm = result.get("farm") or result["raw"]["farm"]
    s23 = bed.phones["NBB-S23"]
    assert (farm["host"], farm["phone"]) == ("hostB", s23["spec"])  # not the orchestrator's namespace
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]


def _listeners(bed: NetBed, host: str | None) -> list[tuple[str, str]]:
    """(local address:port, process) of every listening TCP socket in `host`'s namespace (None: the machine's)."""
    cmd = ["ss", "-Hltnp"] if host is None else ["ip", "netns", "exec", bed.ns(host), "ss", "-Hltnp"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        rows.append((parts[3], " ".join(parts[5:])))
    return rows


def test_ray_listens_only_inside_the_bed(bed: NetBed) -> None:
    """Ray binds its ports on every interface of a node; here the head's namespace has only loopback and the
    bed's link, so its ports are reachable only from the bed; no dashboard, no client server; and none of the
    bed's processes listens in the machine's own namespace."""
    addrs = subprocess.run(["ip", "-n", bed.ns("orch"), "-4", "-o", "addr", "show"], capture_output=True, text=True,
                           timeout=30, check=True).stdout
    assert sorted(line.split()[3] for line in addrs.splitlines()) == ["10.231.7.1/24", "127.0.0.1/8"], addrs
    head = _listeners(bed, "orch")
    assert head, "nothing listens in the head's namespace"
    for local, proc in head:
        address, _, port = local.rpartition(":")
        assert address in ("*", "0.0.0.0", "[::]", HEAD_IP, "127.0.0.1"), (local, proc)
        assert any(name in proc for name in ("gcs_server", "raylet", "ray::", "python")), (local, proc)
        assert port not in ("8265", "10001"), f"Ray's dashboard or client server listens: {local} {proc}"
    assert any(local.endswith(":6379") and "gcs_server" in proc for local, proc in head), head
    ours = {pid for ns in bed.made for pid in netns_pids(ns)}
    outside = [(local, proc) for local, proc in _listeners(bed, None)
               if any(f"pid={pid}," in proc for pid in ours)]
    assert not outside, f"the bed's processes listen in the machine's namespace: {outside}"


def test_a_process_without_the_token_is_refused(bed: NetBed) -> None:
    """From a device host's namespace: with a wrong token, and with no authentication at all (the project's
    own check turned off with AMC_RAY_INSECURE), the head refuses to let the process join."""
    wrong = {**bed.env, "RAY_AUTH_TOKEN": "0" * 32}
    none = {k: v for k, v in bed.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    none["AMC_RAY_INSECURE"] = "1"
    outcomes: dict[str, subprocess.CompletedProcess] = {}

    def attempt(name: str, env: dict[str, str]) -> None:
        outcomes[name] = bed.exec("hostA", str(BIN / "amc"), "devices", "--ray", bed.address, "--json", env=env,
                                  timeout=180)

    threads = [threading.Thread(target=attempt, args=a) for a in (("wrong", wrong), ("none", none))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(200)
    for name, out in outcomes.items():
        assert out.returncode != 0 and '"devices"' not in out.stdout, (name, out.stdout[-500:])
        assert "cannot join the Ray cluster" in out.stderr, (name, out.stderr[-2000:])
    assert "InvalidAuthToken" in outcomes["wrong"].stderr or "Unauthenticated" in outcomes["wrong"].stderr, \
        outcomes["wrong"].stderr[-2000:]
    assert set(outcomes) == {"wrong", "none"}
    # And the cluster still serves whoever has the token.
    assert len(_listing(bed)) == sum(len(p) for p in LAYOUT.values())


# -- faults ---------------------------------------------------------------------------------------------


def test_a_host_cut_off_mid_measurement(bed: NetBed, slow_onnx: Path) -> None:
    """The link of the host whose Pixel 7 measures goes down: the measurement moves to the other host's
    Pixel 7 and says why; the link comes back and the host serves its phone again."""
    driver = Driver(bed, "measure", "model:Pixel_7", "--model", str(slow_onnx), "--runs", "1500",
                    "--deadline-s", "180")
    first = driver.wait("measuring", 120)
    cut = first["host"]
    time.sleep(1.0)  # into the timed runs
    with bed.cut_off(cut):
        done = driver.wait("done", 240)
    other = next(h for h in LAYOUT if h != cut)
    assert done["done"] is not None, done
    assert done["done"]["host"] == other and done["done"]["runs"] == 1500, done
    events = " | ".join(done["events"])
    assert f"{first['measuring']} on {cut}" in events and ("vanished" in events or "did not answer" in events), events
    assert driver.proc.wait(60) == 0
    _back_after_a_fault(bed, cut)


def _back_after_a_fault(bed: NetBed, host: str) -> None:
    """The host serves its phones again: on its own when its device host survived; else restarted."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if {d["serial"] for d in _listing(bed) if d["host"] == host and d["health"] == "ok"} >= {
                s for s, _ in LAYOUT[host]}:
            return
        time.sleep(2)
    bed.restart_host(host)
    bed.wait_served()


def test_a_host_killed_mid_table_build(bed: NetBed) -> None:
    """SIGKILL to the device host whose Pixel 7 times a latency table's kernels: the table is finished on
    the other Pixel 7, every kernel timed (none lost), and the pool says which phone vanished."""
    # 300 runs a kernel: each lease lasts long enough that the kill lands inside one (with the table's own
    # few runs, CI once killed the host between two kernels, and the pool never saw the phone fail)
    driver = Driver(bed, "lut", "model:Pixel_7", "--kernels", "24", "--runs", "300", "--deadline-s", "180")
    first = driver.wait("measuring", 180)
    victim = first["host"]
    bed.stop(f"device-host-{victim}", signal.SIGKILL)
    done = driver.wait("done", 300)
    table = done["done"]
    assert table["points"] == table["entries"] == table["expected"] > 0 and table["positive"], done
    events = " | ".join(done["events"])
    assert first["measuring"] in events and "vanished" in events, events
    assert driver.proc.wait(60) == 0
    bed.device_host(victim)
    bed.wait_served()


def _pushed_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def test_a_phone_killed_mid_push(bed: NetBed, heavy_onnx: Path) -> None:
    """SIGKILL to a Pixel 7's emulator while the model is being pushed to it: the measurement is made on the
    other Pixel 7 (the other host), every run of it, and the pool says which phone failed; the phone, started
    again on its port, is served again by its host without a restart of the host."""
    folders = {serial: bed.root / serial for serial, model in
               (s for phones in LAYOUT.values() for s in phones) if model == "Pixel 7"}
    before = {serial: _pushed_bytes(folder) for serial, folder in folders.items()}
    driver = Driver(bed, "measure", "model:Pixel_7", "--model", str(heavy_onnx), "--runs", "20",
                    "--deadline-s", "240")
    size = heavy_onnx.stat().st_size
    victim = None
    deadline = time.monotonic() + 180
    while victim is None and time.monotonic() < deadline:  # the first bytes of the push land in its folder
        for serial, folder in folders.items():
            if 0 < _pushed_bytes(folder) - before[serial] < size:
                victim = serial
                break
        else:
            time.sleep(0.005)
    assert victim is not None, f"no push was seen within 180 s: {driver.all}"
    bed.stop(f"phone-{victim}", signal.SIGKILL)
    done = driver.wait("done", 300)
    host = bed.phones[victim]["host"]
    other = next(h for h in LAYOUT if h != host)
    assert done["done"] is not None, done
    assert done["done"]["host"] == other and done["done"]["runs"] == 20, done
    events = " | ".join(done["events"])
    assert bed.phones[victim]["spec"] in events, events
    assert driver.proc.wait(60) == 0
    bed.phone(host, victim, bed.phones[victim]["model"], port=int(bed.phones[victim]["port"]))
    bed.wait_served(within=120)


JOB_EPISODES = 120
JOB_SETTINGS = {"AMC_RAY_CHECKPOINT_EVERY_S": "0.5", "AMC_MAX_WORKER_RESTARTS": "2"}


@contextmanager
def _job_on_the_bed(bed: NetBed) -> Iterator[tuple[Driver, str]]:
    """The orchestrator in `orch` (jobs on Ray) and a driver following one job of JOB_EPISODES episodes,
    its first attempt running; yields (driver, API token), and stops the orchestrator afterwards."""
    import secrets

    token = secrets.token_hex(16)
    url = bed.server(token, **JOB_SETTINGS)
    try:
        driver = Driver(bed, "job", url, "--episodes", str(JOB_EPISODES), "--deadline-s", "420",
                        env={"AMC_API_TOKEN": token})
        yield driver, token
    finally:
        if "server" in bed.sessions:
            bed.stop("server", signal.SIGTERM)


def _some_episodes_in(driver: Driver) -> None:
    """Episodes recorded and a checkpoint come back since (the fault must have something to resume from: a
    fixed wait was once shorter than the attempt's start on a busy machine, and the job began anew)."""
    driver.wait("episodes_done", 180, at_least=5)
    time.sleep(4 * float(JOB_SETTINGS["AMC_RAY_CHECKPOINT_EVERY_S"]))


def _finished_whole(driver: Driver) -> dict:
    """The job's end: succeeded, each of its episodes recorded once, resumed from its checkpoint; the job."""
    done = driver.wait("done", 420)
    job = done["done"]
    assert job["state"] == "succeeded", (job, done["log"])
    assert done["episodes"] == list(range(1, JOB_EPISODES + 1)) and job["episodes_done"] == JOB_EPISODES
    assert done["resumed"], done["log"]  # the log's tail alone may have lost the line
    assert driver.proc.wait(60) == 0
    return job


def test_the_node_running_a_job_cut_off(bed: NetBed) -> None:
    """A job runs as a Ray task (the orchestrator in `orch`, `--jobs-on-ray`) on a device host's node; that
    host's link goes down mid-search. Ray declares the node dead, the orchestrator restarts the job on the
    other host from the checkpoint that came back, and the job finishes: every episode once, none lost, and
    its events say the Ray task failed and was restarted. The host, back, is served again."""
    with _job_on_the_bed(bed) as (driver, _token):
        first = driver.wait("running_on", 180)
        cut = next(h for h in LAYOUT if bed.ip(h) == first["running_on"])
        _some_episodes_in(driver)
        with bed.cut_off(cut):
            second = driver.wait("running_on", 180)
        other = next(h for h in LAYOUT if h != cut)
        assert second["running_on"] == bed.ip(other), (first, second)
        job = _finished_whole(driver)
        restarts = [e for e in job["events"] if e["kind"] == "worker-restart"]
        assert restarts and "Ray task failed" in restarts[0]["message"], job["events"]
    _back_after_a_fault(bed, cut)


def test_the_orchestrator_killed_mid_job(bed: NetBed) -> None:
    """SIGKILL to the orchestrator while its job runs as a Ray task on a device host: the task, its relay
    gone, stops; the orchestrator started again resumes the job from the checkpoint that came back, and
    the job finishes with every episode once; its events say the server stopped under it."""
    with _job_on_the_bed(bed) as (driver, token):
        driver.wait("running_on", 180)
        _some_episodes_in(driver)
        bed.stop("server", signal.SIGKILL)
        bed.server(token, **JOB_SETTINGS)
        second = driver.wait("running_on", 240)
        assert second["running_on"] in {bed.ip(h) for h in LAYOUT}, second
        job = _finished_whole(driver)
        assert any(e["kind"] == "server-restart" for e in job["events"]), job["events"]
        assert any("server_error" in item for item in driver.all)  # it was down in between
