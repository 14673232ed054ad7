"""The phone farm on a real Ray cluster started here (head with token authentication, in its own session
so that every process it starts is ended by session id, never `ray stop`), two `amc device-host`
processes as two USB hosts, and `amc phone-sim` emulators as their phones: the listing shows host, model,
Android version and lease; two measurements on one phone model at once never share a phone; a phone
killed mid-measurement is replaced by the other phone of its model; a host that dies takes its phones
with it. Without Ray, the lease logic of a phone actor and the address policy are checked directly."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sessions import end_sessions, new_session
from torch import nn

from compressor.errors import ConfigError
from compressor.latency import KernelSpec
from profiler.devices import LocalDevice, open_device, parse_device_spec
from profiler.export import export_onnx
from profiler.farm.names import check_ray_address, model_slug, parse_model_spec
from profiler.farm.phone import PhoneServer
from profiler.lut import LatencyTable
from profiler.protocol import MeasureConfig

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# -- without Ray ------------------------------------------------------------------------------------


def test_names_and_policy(monkeypatch) -> None:
    assert model_slug("Pixel 7 Pro") == "Pixel_7_Pro" and parse_model_spec("model:Pixel 7") == "Pixel_7"
    assert parse_model_spec("adb:1.2.3.4:5555") is None
    with pytest.raises(ConfigError, match="names no phone model"):
        parse_model_spec("model:")
    assert parse_device_spec("model:Pixel 7").text == "model:Pixel_7"
    monkeypatch.delenv("AMC_RAY_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="AMC_RAY_ADDRESS"):
        open_device("model:Pixel_7")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token"):
        check_ray_address("127.0.0.1:6379")
    assert check_ray_address("10.0.0.5:6379", insecure=True) == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert check_ray_address("10.0.0.5:6379") == "10.0.0.5:6379"
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_ray_address("ray://10.0.0.5:10001")


def test_the_node_to_attach_to_is_an_address_or_ray_s_choice(monkeypatch) -> None:
    from profiler.farm.cluster import node_ip_address

    monkeypatch.delenv("AMC_RAY_NODE_IP", raising=False)
    assert node_ip_address() is None
    monkeypatch.setenv("AMC_RAY_NODE_IP", " 10.231.7.2 ")
    assert node_ip_address() == "10.231.7.2"
    monkeypatch.setenv("AMC_RAY_NODE_IP", "hostA")
    with pytest.raises(ConfigError, match="AMC_RAY_NODE_IP: 'hostA' is not an IP address"):
        node_ip_address()


def test_the_cluster_s_notices_go_to_stderr_not_into_a_command_s_output() -> None:
    """Ray prints a notice such as "node marked dead" to a driver's stdout, where `amc devices --json` writes
    its JSON (seen in CI: the listing followed by a raylet's stack trace); after the hook ray_init installs,
    Ray's own printer sends it to stderr. In a process of its own: Ray is imported there, not here."""
    code = ("from profiler.farm.cluster import _cluster_notices_to_stderr as hook; hook(); hook()\n"
            "from ray._private import worker\n"
            "worker.print_to_stdstream({'lines': ['node 1234 marked dead'], 'pid': 'raylet', 'is_err': False},"
            " ignore_prefix=False)\n"
            "print('{\"devices\": []}')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == {"devices": []}
    assert out.stderr.count("node 1234 marked dead") == 1, out.stderr[-2000:]


def test_a_device_host_opens_its_own_phones_directly_whatever_farm_its_environment_names(monkeypatch) -> None:
    """A phone actor inherits its host's AMC_RAY_ADDRESS; through the farm it would look its own phone
    up among the farm's phones (which it is about to serve) and never find it."""
    from profiler.devices.adb import AdbDevice

    monkeypatch.setenv("AMC_RAY_ADDRESS", "127.0.0.1:1")
    device = open_device("adb:127.0.0.1:5555", direct=True)  # constructing connects to nothing
    assert isinstance(device, AdbDevice) and device.spec == "adb:127.0.0.1:5555"


def test_device_host_refuses_ray_without_authentication(tmp_path: Path) -> None:
    env = {**os.environ, "AMC_CONFIG_DIR": str(tmp_path)}
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "AMC_RAY_INSECURE"):
        env.pop(name, None)
    out = subprocess.run([str(BIN / "amc"), "device-host", "--address", "127.0.0.1:6379", "--no-usb"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "RAY_AUTH_MODE=token" in out.stderr and "--insecure-ray-network" in out.stderr, out.stderr


def test_server_settings_refuse_an_unauthenticated_farm(tmp_path: Path, monkeypatch) -> None:
    from pydantic import ValidationError

    from server.core.config import Settings
    from server.devices import DeviceDirectory

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("AMC_RAY_INSECURE", raising=False)
    with pytest.raises(ValidationError, match="AMC_RAY_ADDRESS: .*RAY_AUTH_MODE=token"):
        Settings(data_dir=tmp_path, ray_address="10.0.0.5:6379")
    trusted = Settings(data_dir=tmp_path, ray_address="10.0.0.5:6379", ray_insecure=True)
    assert DeviceDirectory.for_settings(trusted).farm is not None
    assert DeviceDirectory.for_settings(Settings(data_dir=tmp_path)).farm is None


def test_embedded_default_never_imports_ray() -> None:
    code = ("import sys; from profiler.devices import open_device; from server.devices import DeviceDirectory; "
            "open_device('local').close(); assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "AMC_RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


class _CountingDevice(LocalDevice):
    def __init__(self) -> None:
        super().__init__("local")
        self.health_calls = 0

    def health(self):
        self.health_calls += 1
        return super().health()


def test_a_phone_times_several_models_under_one_lease(tmp_path: Path) -> None:
    model = export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    wide = export_onnx(nn.Sequential(nn.Conv2d(3, 32, 3)), torch.randn(1, 3, 8, 8), tmp_path / "w.onnx")
    phone = PhoneServer(LocalDevice("local"), host="h")
    cfg = {"threads": 1, "warmup": 1, "runs": 3, "cpu_mask": None, "cooldown_s": 0.0}
    models = [(model.read_bytes(), ".onnx"), (b"not a model", ".onnx"), (wide.read_bytes(), ".onnx")]
    refused = phone.measure_many("not-the-token", models, cfg, "onnxruntime", 60)
    assert refused["ok"] is False and "lease" in refused["message"]
    token = phone.lease("a")
    assert token
    done = phone.measure_many(token, models, cfg, "onnxruntime", 60)
    assert done["ok"] and [r["ok"] for r in done["results"]] == [True, False, True], done
    first, bad, last = done["results"]
    assert bad["error_type"] == "MeasurementError" and bad["model_fault"] and "ModelLoadError" in bad["message"]
    assert first["measurement"]["model_sha256"] != last["measurement"]["model_sha256"]
    assert first["measurement"]["raw"]["farm"]["phone"] == "local"
    assert (phone.measurements, phone.failures) == (2, 1) and phone.info()["lease"]["measuring"] is False


def test_phone_lease_is_exclusive_and_health_never_disturbs_a_leased_phone(tmp_path: Path) -> None:
    model = export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    device = _CountingDevice()
    phone = PhoneServer(device, host="h", lease_ttl_s=2.0)
    token = phone.lease("a")
    assert token and phone.lease("b") is None
    assert phone.info()["lease"]["holder"] == "a"
    phone.health()
    assert device.health_calls == 0  # leased: the last health is returned, the device is not asked
    cfg = {"threads": 1, "warmup": 1, "runs": 3, "cpu_mask": None, "cooldown_s": 0.0}
    refused = phone.measure("not-the-token", model.read_bytes(), ".onnx", cfg, "onnxruntime", 60)
    assert refused["ok"] is False and "lease" in refused["message"]
    done = phone.measure(token, model.read_bytes(), ".onnx", cfg, "onnxruntime", 60)
    assert done["ok"], done
    assert phone.release(token) and phone.lease("b") is not None
    time.sleep(2.1)  # b never measures: its lease lapses and c gets the phone
    assert phone.lease("c") is not None
    assert phone.info()["lease"]["holder"] == "c"


class _EmptyFarm:
    """A farm whose phones have all left (what `Farm.phones()` answers once their host stopped serving them)."""

    def __init__(self) -> None:
        self.asked = 0

    def phones(self, check_health: bool = False) -> list:
        self.asked += 1
        return []


def test_a_phone_absent_from_the_farm_is_not_waited_for_silently(tmp_path: Path) -> None:
    """`FarmDevice` gives up after `absent_s` when no phone of its model is in the farm (a job's own wait,
    which says so on its page, takes over); `FarmPool` without `absent_s` waits up to its deadline."""
    from profiler.errors import DeviceUnavailable
    from profiler.farm.client import FarmDevice, FarmPool

    was_imported = "ray" in sys.modules
    model = export_onnx(nn.Sequential(nn.Conv2d(3, 4, 3)), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")
    farm = _EmptyFarm()
    device = FarmDevice("model:Pixel_7", farm=farm, absent_s=0.5)  # type: ignore[arg-type]
    t0 = time.monotonic()
    with pytest.raises(DeviceUnavailable, match="no healthy phone matching model:Pixel_7 has been in the farm"):
        device.measure(model, MeasureConfig(runs=1))
    assert time.monotonic() - t0 < 10 and farm.asked >= 2  # asked again while it waited, then gave up
    pool = FarmPool(farm, "model:Pixel_7", poll_s=0.05)  # type: ignore[arg-type]
    t0 = time.monotonic()
    assert pool.measure(model, MeasureConfig(runs=1), deadline_s=1.0) is None
    assert time.monotonic() - t0 >= 1.0 and "within 1 s" in pool.events[-1]
    # Ray is imported only once there is a phone to call (it reads RAY_AUTH_MODE when first imported, and
    # the cluster tests below set it): nothing here imported it.
    assert "ray" not in sys.modules or was_imported


# -- a real cluster ------------------------------------------------------------------------------------


class Cluster:
    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0", "AMC_CONFIG_DIR": str(root / "cfg"),
                    "AMC_CACHE_DIR": str(root / "cache"),
                    # what a phone actor killed mid-measurement leaves is removed with the test's folder
                    "TMPDIR": str(root / "tmp")}
        (root / "tmp").mkdir()
        self.env.pop("AMC_RAY_ADDRESS", None)
        self.sessions: list[int] = []
        self.address = ""
        self.key = root / "cfg" / "adbkey"
        self.ray_tmp: Path | None = None

    def start(self, *args: str, log: str) -> subprocess.Popen:
        out = open(self.root / log, "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=new_session)
        self.sessions.append(proc.pid)  # setsid: the session id is the pid
        return proc

    def head(self) -> None:
        tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.ray_tmp = tmp
        proc = self.start(str(BIN / "ray"), "start", "--head", "--port", "0", "--num-cpus", "2",
                          "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(tmp),
                          log="head.log")
        # (minutes on a 2-core machine whose cores a benchmark holds at a higher priority)
        assert proc.wait(timeout=600) == 0, (self.root / "head.log").read_text()[-3000:]
        m = re.search(r"ray start --address='([^']+)'", (self.root / "head.log").read_text())
        assert m, (self.root / "head.log").read_text()[-3000:]
        self.address = m.group(1)

    def phone(self, name: str, model: str) -> tuple[subprocess.Popen, str]:
        (self.root / name).mkdir()
        proc = self.start(str(BIN / "amc"), "phone-sim", "--port", "0", "--root", str(self.root / name),
                          "--serial", name, "--model-name", model, "--auth-keys", f"{self.key}.pub",
                          log=f"{name}.log")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", (self.root / f"{name}.log").read_text())
            if m:
                return proc, f"adb:127.0.0.1:{m.group(1)}"
            time.sleep(0.2)
        raise AssertionError((self.root / f"{name}.log").read_text())

    def host(self, name: str, *specs: str) -> subprocess.Popen:
        args = [str(BIN / "amc"), "device-host", "--address", self.address, "--no-usb", "--name", name,
                "--scan-s", "1", "--adb-key", str(self.key)]
        for spec in specs:
            args += ["--device", spec]
        return self.start(*args, log=f"host-{name}.log")

    def close(self) -> None:
        end_sessions(self.sessions)
        if self.ray_tmp is not None:
            shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from profiler.devices.keys import ensure_adb_key

    # Not importorskip: Ray reads RAY_AUTH_MODE once, when imported, so it is imported after the token is set.
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the farm extra is not installed (pip install -e '.[farm]')")
    with tempfile.TemporaryDirectory(prefix="amc-farm-") as tmp:
        c = Cluster(Path(tmp))
        ensure_adb_key(c.key)
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")}
        try:
            c.head()
            os.environ.update({k: c.env[k] for k in saved})
            yield c
        finally:
            import ray

            ray.shutdown()
            c.close()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _wait_for(predicate, what: str, within: float, every: float = 0.5):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def slow_onnx(tmp_path_factory) -> Path:
    """A model of a few ms per run: 1,500 runs take long enough (seconds even on a fast machine) to kill a phone
    in the middle; 150 did not always (a CI run finished one before its phone was killed)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())
    return export_onnx(model, torch.randn(1, 16, 56, 56), tmp_path_factory.mktemp("m") / "slow.onnx")


def test_farm_listing_leases_and_faults(cluster: Cluster, slow_onnx: Path) -> None:
    from profiler.farm.client import Farm, FarmPool
    # (one scenario, in order: starting a cluster, hosts and phones costs more than all the checks together)

    sims = {name: cluster.phone(name, model) for name, model in
            (("P7A", "Pixel 7"), ("P7B", "Pixel 7"), ("S23", "Galaxy S23"))}
    host_a = cluster.host("hostA", sims["P7A"][1], sims["S23"][1])
    host_b = cluster.host("hostB", sims["P7B"][1])
    farm = Farm(cluster.address)
    phones = _wait_for(lambda: (ps := farm.phones()) and len(ps) == 3 and ps, "3 phones served", 150)
    by_serial = {p.serial: p for p in phones}
    assert {p.host for p in phones} == {"hostA", "hostB"}
    assert by_serial["P7A"].host == "hostA" and by_serial["P7B"].host == "hostB"
    assert by_serial["P7A"].model == "Pixel 7" and by_serial["S23"].model_slug == "Galaxy_S23"
    assert all(p.android and p.health == "ok" and p.lease is None for p in phones)
    assert by_serial["P7A"].key == by_serial["P7B"].key != by_serial["S23"].key

    # The CLI lists the cluster's phones too.
    out = subprocess.run([str(BIN / "amc"), "devices", "--ray", cluster.address, "--json"], env=cluster.env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)["devices"]
    assert {(d["spec"], d["host"], d["model"]) for d in listed} == {(p.spec, p.host, p.model) for p in phones}

    # A job's `device: model:Pixel_7` opens as one Device standing for the phones of that model.
    as_device = open_device("model:Pixel 7", farm=cluster.address)
    assert as_device.id == by_serial["P7A"].key and as_device.health().ok

    # The orchestrator's listing (GET /devices) and job validation see the same phones.
    from server.devices import DeviceDirectory
    from server.schemas import DeviceOut

    directory = DeviceDirectory(farm=farm)
    found, notes = directory.list(refresh=True)
    out_rows = [DeviceOut(**d.to_dict()) for d in found]
    assert {(d.spec, d.host) for d in out_rows if d.source == "farm"} == {(p.spec, p.host) for p in phones}
    assert all(d.info["android"] and d.health == "ok" for d in out_rows if d.source == "farm")
    directory.check("model:Pixel_7")
    directory.check(by_serial["S23"].spec)
    with pytest.raises(ConfigError, match="model:Galaxy_S23"):
        directory.check("model:Pixel_9")

    # A leased phone shows its holder, and nobody else can measure on it meanwhile.
    phone_s23 = by_serial["S23"]
    token = phone_s23.handle.lease.remote("test-holder")
    import ray

    token = ray.get(token)
    listed_s23 = next(p for p in farm.phones(check_health=True) if p.serial == "S23")
    assert listed_s23.lease and listed_s23.lease["holder"] == "test-holder" and listed_s23.health == "ok"
    quick = MeasureConfig(warmup=1, runs=3)
    assert FarmPool(farm, "model:Galaxy_S23").measure(slow_onnx, quick, deadline_s=3) is None
    ray.get(phone_s23.handle.release.remote(token))

    # A latency table's kernels: several models in one agent run on one phone of the model, leased once.
    from profiler.farm.client import FarmDevice
    from profiler.lut import build_lut

    before = phone_s23.handle.info.remote()
    table = build_lut(FarmDevice("model:Galaxy_S23", farm=farm),
                      [KernelSpec("conv", 3, c, k=3, h=8, w=8) for c in (8, 16)], max_points=4, round_to=4,
                      table=LatencyTable(device_id=by_serial["S23"].key or "", runtime="onnxruntime", threads=1))
    assert len(table) >= 2 and all(v > 0 for pts in table.entries.values() for v in pts.values())
    after = next(p for p in farm.phones() if p.serial == "S23")
    assert after.measurements - ray.get(before)["measurements"] == len(table) + 1  # and the runtime's overhead

    # Two measurements of one model at once: both run, on different phones, at the same time.
    config = MeasureConfig(warmup=2, runs=60)
    results: dict[int, object] = {}

    def measure(i: int) -> None:
        results[i] = FarmPool(farm, "model:Pixel_7").measure(slow_onnx, config, deadline_s=120)

    threads = [threading.Thread(target=measure, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    m0, m1 = results[0], results[1]
    assert m0 is not None and m1 is not None
    w0, w1 = m0.raw["farm"], m1.raw["farm"]
    assert w0["phone"] != w1["phone"]
    assert max(w0["started"], w1["started"]) < min(w0["finished"], w1["finished"]), "they did not run at once"
    assert {m0.raw["farm"]["phone"], m1.raw["farm"]["phone"]} == {sims["P7A"][1], sims["P7B"][1]}
    assert m0.min_ms <= m0.median_ms <= m0.max_ms

    # A phone killed mid-measurement: the measurement finishes on the other phone of its model.
    pool = FarmPool(farm, "model:Pixel_7")
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.update(m=pool.measure(slow_onnx, MeasureConfig(warmup=2, runs=1500),
                                                                           deadline_s=240)))
    worker.start()
    busy = _wait_for(lambda: next((p for p in farm.phones() if p.lease and p.lease.get("measuring")), None),
                     "a Pixel 7 measuring", 60, every=0.2)
    time.sleep(1.0)  # into the timed runs
    killed = next(name for name, (_, spec) in sims.items() if spec == busy.spec)
    end_sessions([sims[killed][0].pid])
    worker.join(300)
    m = outcome.get("m")
    assert m is not None, pool.events
    assert m.raw["farm"]["phone"] != busy.spec
    assert any(busy.spec in e and ("vanished" in e or "unavailable" in e or "failed" in e) for e in pool.events), pool.events
    # The host notices the phone is gone and drops it from the listing.
    _wait_for(lambda: busy.spec not in {p.spec for p in farm.phones()}, "the killed phone to leave", 30)

    # The host of the last Pixel dies (SIGKILL: no goodbye) while that phone measures: no Pixel is left, so the
    # caller gets None (the lookup table answers) and the pool says why; the host's phones leave the listing.
    last = next(spec for name, (_, spec) in sims.items() if name != killed and name != "S23")
    victim_name = next(p.host for p in farm.phones() if p.spec == last)
    victim = host_a if victim_name == "hostA" else host_b
    pool = FarmPool(farm, "model:Pixel_7")
    outcome.clear()
    worker = threading.Thread(target=lambda: outcome.update(m=pool.measure(slow_onnx, MeasureConfig(warmup=2, runs=1500),
                                                                           deadline_s=120)))
    worker.start()
    _wait_for(lambda: any(p.spec == last and p.lease and p.lease.get("measuring") for p in farm.phones()),
              "the last Pixel measuring", 60, every=0.2)
    os.kill(victim.pid, signal.SIGKILL)
    worker.join(150)
    assert not worker.is_alive() and outcome["m"] is None, outcome
    assert any(last in e and "vanished" in e for e in pool.events), pool.events
    assert "lookup table answers" in pool.events[-1]
    _wait_for(lambda: all(p.host != victim_name for p in farm.phones()), f"{victim_name}'s phones to leave", 60)


def test_without_a_farm_the_report_says_the_jobs_device_is_the_only_one(tmp_path: Path) -> None:
    from server.phone_models import KEY, add_to_report, phone_model_latencies

    (tmp_path / "report.md").write_text("# report\n")
    section = phone_model_latencies(tmp_path, device="adb:SERIAL1", farm=None)
    assert section["models"] == [] and section["farm"] is None and "adb:SERIAL1 is the only one" in section["note"]
    report = add_to_report(tmp_path, {"model": "demo-cnn"}, section)
    assert json.loads((tmp_path / "report.json").read_text())[KEY] == report[KEY] == section
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# report") and "## Latency on every phone model" in md and "only one" in md
    env = {k: v for k, v in os.environ.items() if k != "AMC_RAY_ADDRESS"}
    out = subprocess.run([str(BIN / "amc"), "bench", "demo-cnn", "--all-models"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1 and "no farm is set" in out.stderr and "--device SPEC" in out.stderr, out.stderr


def test_one_search_latency_on_every_phone_model(cluster: Cluster, tmp_path: Path) -> None:
    """`amc bench --all-models` and a finished job time the model on each phone model the farm serves."""
    from test_server_harness import ServerProcess, wait_for

    from profiler.farm.client import Farm

    sims = {name: cluster.phone(name, model) for name, model in (("PM7", "Pixel 7"), ("PMS", "Galaxy S23"))}
    cluster.host("hostM", *(spec for _, spec in sims.values()))
    farm = Farm(cluster.address)
    specs = {spec for _, spec in sims.values()}
    _wait_for(lambda: specs <= {p.spec for p in farm.phones() if p.health == "ok"}, "both phones served", 150)
    served: dict[str, set[str]] = {}
    for p in farm.phones():  # (phones an earlier test left are served too)
        served.setdefault(f"model:{p.model_slug}", set()).add(p.spec)

    out = subprocess.run([str(BIN / "amc"), "bench", "demo-cnn", "--all-models", "--ray", cluster.address, "--json",
                          "--runs", "5", "--warmup", "1", "--no-cache"], env=cluster.env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = {r["device"]: r for r in json.loads(out.stdout)["phone_models"]}
    assert set(rows) == set(served) >= {"model:Pixel_7", "model:Galaxy_S23"}
    for device, r in rows.items():
        assert r["error"] is None and 0 < r["min_ms"] <= r["median_ms"] <= r["p90_ms"], r
        assert r["measured_on"] in served[device] and r["phones"] == len(served[device])  # a phone of that model

    # A finished job on a server with the farm: the final model's latency per phone model in its report.
    server = ServerProcess(tmp_path / "data", env={"AMC_RAY_ADDRESS": cluster.address,
                                                   "AMC_CACHE_DIR": str(tmp_path / "cache"),
                                                   "RAY_AUTH_MODE": "token",
                                                   "RAY_AUTH_TOKEN": cluster.env["RAY_AUTH_TOKEN"]}).start()
    try:
        with server.client() as c:
            r = c.post("/jobs", json={"model": "demo-cnn", "data": "digits", "target": "flops=0.5",
                                      "strategy": "random", "episodes": 2, "device": "local", "seed": 0})
            assert r.status_code == 201, r.text
            job = wait_for(c, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
            assert job["state"] == "succeeded", (job, server.log()[-3000:])
            section = job["report"]["latency_per_phone_model"]
            assert section["farm"] == cluster.address
            by_model = {m["device"]: m for m in section["models"]}
            assert set(by_model) == set(rows)
            for m in by_model.values():
                assert m["median_ms"] > 0 and m["baseline_median_ms"] > 0
                assert m["measured_on"] in served[m["device"]] or m["cached"]
            report_json = c.get(job["links"]["artifacts"]["report.json"]).json()
            assert report_json["latency_per_phone_model"] == section
            md = c.get(job["links"]["artifacts"]["report.md"]).text
            assert "## Latency on every phone model" in md and "| Galaxy S23 |" in md and "| Pixel 7 |" in md

            # A frontier job: each target's model, in that target's report.json and report.md, and the
            # frontier's own table with the reference a user could pick instead, by phone model.
            import io

            import torch

            from compressor.zoo import DemoCNN

            weights = io.BytesIO()
            torch.save(DemoCNN().state_dict(), weights)
            up = c.post("/uploads", files={"file": ("demo.pt", weights.getvalue())})
            assert up.status_code == 201, up.text
            r = c.post("/jobs", json={"model": "demo-cnn", "data": "digits", "targets": ["flops=0.6", "flops=0.3"],
                                      "references": [f"demo-cnn={up.json()['id']}"],
                                      "strategy": "random", "episodes": 2, "device": "local", "seed": 0})
            assert r.status_code == 201, r.text
            job = wait_for(c, r.json()["id"], {"succeeded", "failed", "cancelled"}, timeout=600)
            assert job["state"] == "succeeded", (job, server.log()[-3000:])
            links = job["links"]["artifacts"]
            for target in ("flops-0.6", "flops-0.3"):
                section = c.get(links[f"{target}/report.json"]).json()["latency_per_phone_model"]
                assert section["farm"] == cluster.address
                assert {m["device"] for m in section["models"]} == set(rows)
                assert all(m["median_ms"] > 0 and m["baseline_median_ms"] > 0 for m in section["models"])
                md = c.get(links[f"{target}/report.md"]).text
                assert "## Latency on every phone model" in md and "| Pixel 7 |" in md
            section = job["report"]["latency_per_phone_model"]
            assert {m["device"] for m in section["models"]} == set(rows)
            assert [(r["kind"], r["name"]) for r in section["rows"]] == [
                ("unpruned", "demo-cnn"), ("point", "flops=0.6"), ("point", "flops=0.3"), ("reference", "demo-cnn")]
            assert all(v > 0 for r in section["rows"] for v in r["ms"].values()) and all(
                set(r["ms"]) == set(rows) for r in section["rows"]), section
            top = c.get(links["report.md"]).text
            assert "Pixel 7 (" in top and "Galaxy S23 (" in top and "| demo-cnn (reference) |" in top
    finally:
        server.stop()


def test_a_farm_device_waits_for_its_only_phone(cluster: Cluster, slow_onnx: Path, tmp_path: Path,
                                                monkeypatch) -> None:
    """The only phone of a model killed while it measures: a job's device (`PatientDevice` over `model:NAME`)
    waits for it, and measures on it once its host serves it again; killed between measurements, the same."""
    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))  # measured afresh, never from a cache
    from profiler.farm.client import Farm
    from profiler.waiting import PatientDevice

    proc, spec = cluster.phone("ONLY", "Lone Phone")
    port = spec.rpartition(":")[2]
    cluster.host("hostW", spec)
    farm = Farm(cluster.address)
    _wait_for(lambda: any(p.spec == spec and p.health == "ok" for p in farm.phones()), "the phone served", 150)
    device = PatientDevice(open_device("model:Lone_Phone", farm=cluster.address), wait_s=240, poll_s=1.0)
    outcome: dict[str, object] = {}
    worker = threading.Thread(target=lambda: outcome.update(m=device.measure(slow_onnx, MeasureConfig(warmup=2,
                                                                                                       runs=1500))))
    worker.start()
    _wait_for(lambda: any(p.spec == spec and p.lease and p.lease.get("measuring") for p in farm.phones()),
              "the phone measuring", 60, every=0.2)
    time.sleep(1.0)
    end_sessions([proc.pid])
    _wait_for(lambda: [w.state for w in device.waits] == ["waiting"], "the device to wait", 120, every=0.2)
    assert worker.is_alive()
    again = cluster.start(str(BIN / "amc"), "phone-sim", "--port", port, "--root", str(cluster.root / "ONLY"),
                          "--serial", "ONLY", "--model-name", "Lone Phone", "--auth-keys", f"{cluster.key}.pub",
                          log="ONLY-again.log")
    worker.join(300)
    assert not worker.is_alive() and again.poll() is None
    m = outcome["m"]
    assert m.min_ms <= m.median_ms <= m.max_ms and m.raw["farm"]["phone"] == spec  # type: ignore[attr-defined]
    assert [w.state for w in device.waits] == ["waiting", "back"], device.waits

    # Between measurements: the phone leaves and the farm no longer serves it healthy. The next measurement's
    # wait (which a job's page shows) starts within FarmDevice's absent_s, not after the measurement deadline.
    end_sessions([again.pid])
    _wait_for(lambda: not any(p.spec == spec and p.health == "ok" for p in farm.phones()), "the phone gone", 90)
    t0 = time.monotonic()
    worker = threading.Thread(target=lambda: outcome.update(m2=device.measure(slow_onnx, MeasureConfig(warmup=1,
                                                                                                        runs=3))))
    worker.start()
    _wait_for(lambda: [w.state for w in device.waits] == ["waiting", "back", "waiting"], "the wait again", 90,
              every=0.2)
    assert time.monotonic() - t0 < 60, "the wait started only after the measurement deadline"
    third = cluster.start(str(BIN / "amc"), "phone-sim", "--port", port, "--root", str(cluster.root / "ONLY"),
                          "--serial", "ONLY", "--model-name", "Lone Phone", "--auth-keys", f"{cluster.key}.pub",
                          log="ONLY-third.log")
    worker.join(300)
    assert not worker.is_alive() and third.poll() is None
    assert outcome["m2"].raw["farm"]["phone"] == spec  # type: ignore[attr-defined]
    assert [w.state for w in device.waits] == ["waiting", "back", "waiting", "back"], device.waits


# -- the farm's own costs (benchmarks.bench_farm runs this and writes docs/BENCHMARKS.md) ---------------


def _measure_until(pool, model: Path, config: MeasureConfig, end: float, used: list[str]) -> int:
    """Measure `model` through `pool` back to back until `end`; the phones used go to `used`."""
    done = 0
    while time.monotonic() < end:
        m = pool.measure(model, config, fresh=True, deadline_s=120)
        assert m is not None
        used.append(m.raw["farm"]["phone"])
        done += 1
    return done


@pytest.mark.slow
def test_farm_overhead_and_measurements_per_minute(cluster: Cluster, tmp_path: Path, monkeypatch) -> None:
    """What Ray adds to one measurement (the same emulated phone timed directly over ADB and through the
    farm, alternately, both warm), and measurements per minute through the farm with 1, 2 and 4 phones of a
    model on two hosts. Results go to $AMC_FARM_BENCH_OUT (JSON) when set."""
    import statistics
    from concurrent.futures import ThreadPoolExecutor

    from profiler.farm.client import Farm, FarmPool
    from profiler.measure import measure

    monkeypatch.setenv("AMC_CACHE_DIR", str(tmp_path / "cache"))
    rounds = int(os.environ.get("AMC_FARM_BENCH_ROUNDS", "10"))
    seconds = float(os.environ.get("AMC_FARM_BENCH_SECONDS", "20"))
    torch.manual_seed(0)
    small = export_onnx(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)),
                        torch.randn(1, 3, 32, 32), tmp_path / "small.onnx")
    config = MeasureConfig(warmup=2, runs=10)
    # Phone models "Bench 1", "Bench 2", "Bench 4": that many phones, spread over two hosts.
    layout = {"Bench 1": ("benchA",), "Bench 2": ("benchA", "benchB"), "Bench 4": ("benchA", "benchB") * 2}
    specs: dict[str, list[str]] = {"benchA": [], "benchB": []}
    phones: dict[str, list[str]] = {}
    for model, hosts in layout.items():
        for i, host in enumerate(hosts):
            _, spec = cluster.phone(f"{model.replace(' ', '')}-{i}", model)
            specs[host].append(spec)
            phones.setdefault(model, []).append(spec)
    for host, host_specs in specs.items():
        cluster.host(host, *host_specs)
    farm = Farm(cluster.address)
    _wait_for(lambda: sum(p.model.startswith("Bench") and p.health == "ok" for p in farm.phones()) == 7,
              "7 bench phones served", 180)

    # Overhead: one phone, directly and through the farm, alternately (the first of each is a warm-up:
    # agent and model pushed once).
    spec = phones["Bench 1"][0]
    direct_device = open_device(spec, direct=True, key_path=cluster.key)
    pool = FarmPool(farm, "model:Bench_1")
    direct, through = [], []
    for i in range(rounds + 1):
        t = time.perf_counter()
        measure(direct_device, small, config, cache=None)
        d = time.perf_counter() - t
        t = time.perf_counter()
        got = pool.measure(small, config, fresh=True, deadline_s=120)
        f = time.perf_counter() - t
        assert got is not None and got.raw["farm"]["phone"] == spec  # type: ignore[attr-defined]
        if i:
            direct.append(d * 1000)
            through.append(f * 1000)
    direct_device.close()
    # The bare cost of one call to a phone's actor (a measurement through the farm makes three: lease,
    # measure with the model's bytes, release), timed on its own: the pairs above cannot resolve it.
    import ray

    handle = next(p.handle for p in farm.phones() if p.spec == spec)
    ray.get(handle.info.remote())
    calls = []
    for _ in range(50):
        t = time.perf_counter()
        ray.get(handle.info.remote())
        calls.append((time.perf_counter() - t) * 1000)

    # Throughput: 2 clients per phone, measuring back to back for `seconds`.
    per_minute: dict[int, dict[str, float]] = {}
    for model, hosts in layout.items():
        n = len(hosts)
        selector = FarmPool(farm, f"model:{model.replace(' ', '_')}")
        end = time.monotonic() + seconds
        used: list[str] = []
        started = time.monotonic()
        with ThreadPoolExecutor(2 * n) as ex:
            done = sum(ex.map(lambda _, s=selector, e=end, u=used: _measure_until(s, small, config, e, u),
                              range(2 * n)))
        wall = time.monotonic() - started
        per_minute[n] = {"measurements": done, "seconds": wall, "per_minute": done / wall * 60,
                         "phones_used": len(set(used))}
        assert set(used) <= set(phones[model]) and len(set(used)) == n, (model, set(used))

    result = {"rounds": rounds, "direct_ms": direct, "farm_ms": through, "actor_call_ms": calls,
              "actor_call_median_ms": statistics.median(calls),
              "direct_median_ms": statistics.median(direct), "farm_median_ms": statistics.median(through),
              "overhead_median_ms": statistics.median(through) - statistics.median(direct),
              "runs_per_measurement": config.runs, "per_minute": per_minute, "cpus": os.cpu_count()}
    if os.environ.get("AMC_FARM_BENCH_OUT"):
        Path(os.environ["AMC_FARM_BENCH_OUT"]).write_text(json.dumps(result, indent=2))
    assert all(v["measurements"] > 0 for v in per_minute.values())
