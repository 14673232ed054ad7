"""Jobs as Ray tasks (AMC_JOBS_ON_RAY): a real Ray cluster started here, a head with no CPUs and one more
node joined with `ray start --address` (so a job can only run on that other node), each in its own session
so that every process they start is ended by session id, never `ray stop`; and a real server (uvicorn)
with jobs on Ray, whose data dir is apart from the node's work dir (AMC_RAY_WORK_DIR). A job's state,
episodes, log and files come back to the server's store and job folder; its report is the local worker's
for the same seed; uploaded weights travel with it; a job whose node dies resumes on a node that joins, from
the checkpoint that came back; a cancel stops it. Without Ray: the settings' rules, the file shipping's checks, the relay's records,
and a task with its orchestrator through a relay in this process."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from sessions import end_sessions, new_session  # (a session per Ray process, ended by session id)
from test_server_harness import SMALL_JOB, TOKEN

from compressor.config import SearchConfig
from compressor.errors import ConfigError
from server.core.config import Settings
from server.store import Job, JobEventKind, JobState, Store

BIN = Path(sys.executable).parent
FINISHED = {"succeeded", "failed", "cancelled"}


# -- without Ray ------------------------------------------------------------------------------------


def test_settings_need_a_cluster_and_an_absolute_work_dir(tmp_path: Path, monkeypatch) -> None:
    from pydantic import ValidationError

    monkeypatch.setenv("AMC_RAY_INSECURE", "1")
    with pytest.raises(ValidationError, match="AMC_JOBS_ON_RAY: .*AMC_RAY_ADDRESS"):
        Settings(data_dir=tmp_path, jobs_on_ray=True)
    with pytest.raises(ValidationError, match="AMC_RAY_WORK_DIR: .*absolute"):
        Settings(data_dir=tmp_path, ray_work_dir="scratch")
    on_ray = Settings(data_dir=tmp_path, jobs_on_ray=True, ray_address="10.0.0.5:6379", ray_insecure=True,
                      worker_threads=2)
    assert on_ray.job_cpus == 2.0  # a job reserves the threads it runs
    assert Settings(data_dir=tmp_path, ray_job_cpus=0.5).job_cpus == 0.5
    assert Settings(data_dir=tmp_path).jobs_on_ray is False  # the default stays local processes


def test_amc_serve_refuses_jobs_on_ray_without_a_cluster(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMC_")}
    out = subprocess.run([str(BIN / "amc"), "serve", "--jobs-on-ray", "--data-dir", str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "AMC_RAY_ADDRESS" in out.stderr, out.stderr


def test_inputs_travel_bounded_and_land_inside_the_node_folder(tmp_path: Path) -> None:
    from server.frontier import FrontierPlan, Reference
    from server.ray_jobs import check_inputs, job_inputs, node_config, pack_inputs, write_files

    data = tmp_path / "sets" / "imgs"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "a.png").write_bytes(b"x" * 1000)
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"w" * 100)
    ref = tmp_path / "ref.onnx"
    ref.write_bytes(b"r" * 10)
    config = SearchConfig(model="demo-cnn", data=f"imagefolder:{data}", weights=str(weights))
    plan = FrontierPlan(targets=("flops=0.5",), references=(Reference("ref", "ref", str(ref), True),))
    inputs = job_inputs(config, plan)
    assert [i.key for i in inputs] == ["data", "weights", "references[0]"]
    assert job_inputs(SearchConfig(model="demo-cnn", data="digits"), None) == []  # the embedded set: nothing to send
    assert check_inputs(inputs, limit=2000) == 1110
    with pytest.raises(ConfigError, match="AMC_RAY_MAX_INPUT_MB") as err:
        check_inputs(inputs, limit=1000)
    assert err.value.field == "data"
    with pytest.raises(ConfigError, match="does not exist"):
        check_inputs(job_inputs(SearchConfig(model="demo-cnn", data=f"cifar10:{tmp_path / 'gone.npz'}"), None), 10)

    root = PurePosixPath("/scratch/amc-ray-j1")
    cfg, node_plan = node_config(config.to_dict(), plan, inputs, root)
    assert cfg["data"] == "imagefolder:/scratch/amc-ray-j1/inputs/data/imgs"
    assert cfg["weights"] == "/scratch/amc-ray-j1/inputs/weights/w.pt"
    assert node_plan is not None and node_plan.references[0].path == "/scratch/amc-ray-j1/inputs/references-0/ref.onnx"
    files = pack_inputs(inputs, root)
    assert set(files) == {"inputs/data/imgs/cat/a.png", "inputs/weights/w.pt", "inputs/references-0/ref.onnx"}
    node = tmp_path / "node"
    write_files(node, files)
    assert (node / "inputs/data/imgs/cat/a.png").read_bytes() == b"x" * 1000
    for bad in ("../escape", "/etc/x", "a/../../b"):
        with pytest.raises(ValueError, match="folder"):
            write_files(node, {bad: b""})


def test_post_jobs_refuses_inputs_a_job_on_ray_could_not_send(tmp_path: Path, monkeypatch) -> None:
    """Checked at submit (422 naming the field), not when the job starts; nothing connects to Ray for it."""
    from test_server_harness import in_process_app

    monkeypatch.setenv("AMC_CONFIG_DIR", str(tmp_path / "config"))
    with in_process_app(tmp_path / "data", jobs_on_ray=True, ray_address="10.0.0.5:6379", ray_insecure=True,
                        ray_max_input_mb=0.01) as api:
        import io

        import torch

        from compressor import zoo

        buf = io.BytesIO()
        torch.save(zoo.load_model("demo-cnn").model.state_dict(), buf)  # ~250 kB, over 0.01 MB
        up = api.client.post("/uploads", files={"file": ("demo.pt", buf.getvalue())}).json()
        r = api.client.post("/jobs", json={**SMALL_JOB, "weights": up["id"]})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "weights"], r.text
        assert "AMC_RAY_MAX_INPUT_MB" in r.json()["detail"][0]["msg"]
        assert api.client.post("/jobs", json=SMALL_JOB).status_code == 201  # the embedded data set: nothing to send


def test_the_relay_class_and_the_job_task_are_made_once_per_process(monkeypatch) -> None:
    # Made per job, each new class and function stayed in the orchestrator's Ray driver: about 27 KB a job
    # (docs/BENCHMARKS.md, "Orchestrator memory over many jobs").
    ray = pytest.importorskip("ray")
    from server import ray_jobs

    made: list[Any] = []
    real = ray.remote

    def counting(*args: Any, **kwargs: Any) -> Any:
        made.append(args or kwargs)
        return real(*args, **kwargs)

    ray_jobs._remotes.cache_clear()
    monkeypatch.setattr(ray, "remote", counting)
    try:
        first = ray_jobs._remotes()
        for _ in range(50):  # fifty jobs
            relay_class, task = ray_jobs._remotes()
            assert relay_class is first[0] and task is first[1]
        assert len(made) == 2, made  # one actor class, one remote function
        assert task._default_options["max_calls"] == 1  # still a fresh worker process per job
    finally:
        ray_jobs._remotes.cache_clear()


def test_relay_records_keep_order_carry_signals_and_stop_when_the_orchestrator_is_gone(tmp_path: Path) -> None:
    import threading

    from server.ray_jobs import RelayRecords, apply_records
    from server.store import InvalidTransition

    sent: list[list[tuple[Any, ...]]] = []
    answer = ["cancel"]

    def push(batch: list[tuple[Any, ...]]) -> list[str]:
        if answer == ["gone"]:
            raise ConnectionError("the relay's actor died")
        sent.append(batch)
        return answer

    cancelled, orphaned = threading.Event(), threading.Event()
    records = RelayRecords(push, job_id="j", cancelled=cancelled, orphaned=orphaned)
    records.add_log("a line")
    records.set_phase("j", "search", "episode 1")
    assert sent == [[("log", "a line\n"), ("store", "set_phase", ("search", "episode 1"), {})]]
    assert cancelled.is_set() and not orphaned.is_set() and records.get_job("j").phase == "search"
    records.finish("j", JobState.SUCCEEDED, report={"ok": 1})
    assert records.final == (JobState.SUCCEEDED, {"report": {"ok": 1}, "error": None, "message": ""})
    with pytest.raises(InvalidTransition):  # one end per attempt, as the Store allows
        records.finish("j", JobState.FAILED, error="x")
    answer[:] = ["stop"]  # the server stopping: the job pauses, and its records still go up meanwhile
    records.add_episode("j", 2, {"reward": 1.0}, total=3)
    assert orphaned.is_set() and sent[-1] == [("store", "add_episode", (2, {"reward": 1.0}), {"total": 3})]
    answer[:] = ["gone"]
    records.send()
    records.add_event("j", JobEventKind.DEVICE_WAIT, "never sent")
    assert len(sent) == 2

    # The orchestrator's side writes what may be written and skips the rest.
    settings = Settings(data_dir=tmp_path / "data", api_token=TOKEN)
    settings.prepare_dirs()
    store = Store(settings.db_url)
    job = store.create_job(spec=SMALL_JOB, config=SearchConfig(**SMALL_JOB).to_dict())
    folder = tmp_path / "job"
    folder.mkdir()
    apply_records(store, job.id, folder, [("store", "finish", (JobState.SUCCEEDED,), {}),
                                          ("store", "set_phase", ("search", "episode 1 of 4"), {}),
                                          ("files", {"../outside": b"x"}),
                                          ("log", "from the node\n"),
                                          ("store", "add_episode", (1, {"reward": 0.5}), {"total": 4})])
    after = store.get_job(job.id)
    assert after.state == "queued" and after.phase == "search" and after.episodes_done == 1
    assert (folder / "job.log").read_text() == "from the node\n" and not (tmp_path / "outside").exists()
    store.close()


def test_one_relay_hub_keeps_each_attempt_apart_and_refuses_an_attempt_given_up() -> None:
    """A RelayHub's mailboxes, one per job attempt: each has its own records and signals; once an attempt is
    closed (the job restarted elsewhere), that attempt's task can no longer push and stops as orphaned, while
    the new attempt goes on."""
    import threading

    from server.ray_jobs import RelayHub, RelayRecords

    hub = RelayHub("job/a1", "job/a2", "other/b1")
    hub.signal("other/b1", "cancel")
    assert hub.push("job/a1", [("log", "one\n")]) == [] and hub.push("other/b1", [("log", "two\n")]) == ["cancel"]
    assert hub.drain("job/a1") == [("log", "one\n")] and hub.drain("job/a1") == [] and hub.drain("job/a2") == []
    assert hub.drain("other/b1") == [("log", "two\n")]

    hub.close("job/a1")
    with pytest.raises(LookupError, match="no longer follows"):
        hub.drain("job/a1")
    with pytest.raises(LookupError, match="no mailbox 'never-opened'"):
        hub.push("never-opened", [])
    stale = RelayRecords(lambda batch: hub.push("job/a1", batch), job_id="job", cancelled=threading.Event(),
                         orphaned=threading.Event())
    stale.add_episode("job", 3, {"reward": 1.0})
    assert stale.orphaned.is_set() and hub.drain("job/a2") == []  # nothing of the old attempt reaches the new
    current = RelayRecords(lambda batch: hub.push("job/a2", batch), job_id="job", cancelled=threading.Event(),
                           orphaned=threading.Event())
    current.add_episode("job", 3, {"reward": 1.0})
    assert not current.orphaned.is_set() and hub.drain("job/a2") == [("store", "add_episode", (3, {"reward": 1.0}),
                                                                     {"total": None})]
    assert hub.push("other/b1", []) == ["cancel"]  # the other job's mailbox is untouched by all this
    for key in ("job/a2", "job/a2", "other/b1"):  # closing twice is harmless
        hub.close(key)
    for key in ("job/a2", "other/b1"):
        with pytest.raises(LookupError):
            hub.signal(key, "stop")


def test_a_task_and_its_orchestrator_through_a_relay_without_ray(tmp_path: Path) -> None:
    """The node's side (`run_in_node_folder`) and the orchestrator's (`apply_records`, `record_result`) with
    the relay's mailbox in this process: the node's folder holds the inputs and the work and is removed; the
    orchestrator's store and folder get the episodes, the log, the checkpoint and the files; a cancel
    waiting in the relay stops a job as cancelled with its checkpoint kept."""
    import torch

    from server.ray_jobs import (
        JobRelay,
        apply_records,
        job_inputs,
        node_config,
        node_root,
        pack_inputs,
        record_result,
        run_in_node_folder,
    )

    settings = Settings(data_dir=tmp_path / "data", api_token=TOKEN)
    settings.prepare_dirs()
    store = Store(settings.db_url)
    weights = tmp_path / "weights.pt"
    from compressor import zoo

    torch.manual_seed(0)
    torch.save(zoo.load_model("demo-cnn").model.state_dict(), weights)
    work = tmp_path / "node"

    def run(spec: dict[str, Any], *signals: str) -> tuple[Job, Path, list[tuple[Any, ...]]]:
        config = SearchConfig(**{**spec, "weights": str(weights)})
        job = store.create_job(spec=spec, config=config.to_dict())
        assert store.claim_next() is not None
        folder = settings.jobs_dir / job.id
        folder.mkdir()
        inputs = job_inputs(config, None)
        root = node_root(str(work), job.id)
        node_cfg, _ = node_config(job.config, None, inputs, root)
        relay = JobRelay()
        for what in signals:
            relay.signal(what)
        options = {"work_dir": str(work), "config": node_cfg, "frontier": None, "resume": False,
                   "search_module": "compressor.search", "threads": 1, "max_job_bytes": None, "device_wait_s": None,
                   "checkpoint_every_s": 0.2, "env": {}}
        result = run_in_node_folder(job.id, relay.push, pack_inputs(inputs, root), {}, options, node="node-1")
        items = relay.drain()
        apply_records(store, job.id, folder, items)
        record_result(store, job.id, folder, result)
        assert not Path(str(root)).exists()  # the node's folder is gone
        return store.get_job(job.id), folder, items

    done, folder, items = run({**SMALL_JOB, "episodes": 2})
    assert done.state == "succeeded", done.error
    assert [e.number for e in store.list_episodes(done.id)] == [1, 2] and done.best is not None
    assert done.report["weights"] == f"{node_root(str(work), done.id)}/inputs/weights/weights.pt"
    log_text = (folder / "job.log").read_text()
    assert "runs on node node-1" in log_text and f"job {done.id} succeeded" in log_text
    assert {"store", "log"} <= {item[0] for item in items}
    for name in ("report.json", "report.md", "model.onnx", "model.pt", "policy.json", "episodes.csv",
                 "checkpoint/state.pt"):
        assert (folder / name).is_file(), name
    assert not (folder / ".lock").exists()

    cancelled, folder, _ = run({**SMALL_JOB, "episodes": 5000, "seed": 1}, "cancel")
    assert cancelled.state == "cancelled" and cancelled.message == "cancelled; checkpoint kept", cancelled.message
    assert "cancelled" in (folder / "job.log").read_text()
    store.close()


# -- a real cluster ------------------------------------------------------------------------------------


class TwoNodes:
    """A Ray head without CPUs and one node with one CPU, on this machine."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
                    "RAY_USAGE_STATS_ENABLED": "0", "AMC_CACHE_DIR": str(root / "cache"), "TMPDIR": str(root / "tmp")}
        for name in ("AMC_RAY_ADDRESS", "AMC_JOBS_ON_RAY"):
            self.env.pop(name, None)
        (root / "tmp").mkdir()
        self.sessions: list[int] = []
        self.address = ""
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths are limited

    def _ray(self, *args: str, log: str) -> int:
        with open(self.root / log, "w") as out:
            proc = subprocess.Popen([str(BIN / "ray"), "start", *args], cwd=self.root, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=new_session)
            self.sessions.append(proc.pid)  # setsid: the session id is the pid
            assert proc.wait(timeout=600) == 0, (self.root / log).read_text()[-3000:]
        return proc.pid

    def start(self) -> None:
        self._ray("--head", "--port", "0", "--num-cpus", "0", "--include-dashboard", "false",
                  "--disable-usage-stats", "--temp-dir", str(self.ray_tmp), log="head.log")
        m = re.search(r"ray start --address='([^']+)'", (self.root / "head.log").read_text())
        assert m, (self.root / "head.log").read_text()[-3000:]
        self.address = m.group(1)
        self.node = self.add_node("node.log")

    def add_node(self, log: str) -> int:
        """One more node with one CPU; its session id (every process of that node is in it)."""
        return self._ray("--address", self.address, "--num-cpus", "1", log=log)

    def close(self) -> None:
        end_sessions(self.sessions)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodes]:
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the farm extra is not installed (pip install -e '.[farm]')")
    with tempfile.TemporaryDirectory(prefix="amc-rayjobs-") as tmp:
        c = TwoNodes(Path(tmp))
        try:
            c.start()
            yield c
        finally:
            c.close()


@pytest.fixture(scope="module")
def server(cluster: TwoNodes, tmp_path_factory) -> Iterator[Any]:
    """A real server (uvicorn, its own process: Ray keeps the first token a process uses, so this one never
    joins a cluster with another's) with jobs on Ray; its data dir apart from the node's work dir."""
    from test_server_harness import ServerProcess

    tmp = tmp_path_factory.mktemp("rayjobs")
    srv = ServerProcess(tmp / "data", env={
        "AMC_RAY_ADDRESS": cluster.address, "AMC_JOBS_ON_RAY": "1", "AMC_RAY_WORK_DIR": str(tmp / "node-work"),
        "AMC_RAY_CHECKPOINT_EVERY_S": "0.5", "AMC_MAX_WORKER_RESTARTS": "1", "AMC_MAX_WORKERS": "1",
        **{k: cluster.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED", "AMC_CACHE_DIR")},
    })
    srv.work_dir = tmp / "node-work"
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _server_store(server: Any) -> Store:
    return Store(f"sqlite:///{server.data_dir / 'amc.db'}", create=False)


def _local_run(tmp_path: Path, spec: dict[str, Any], config: dict[str, Any]) -> tuple[Job, list[dict[str, Any]], Path]:
    """The same job in the local worker's code path (run_job_process, in this process)."""
    from server.worker import run_job_process

    store = Store(f"sqlite:///{tmp_path / 'local.db'}")
    job = store.create_job(spec=spec, config=config)
    assert store.claim_next() is not None
    folder = tmp_path / "local-job"
    folder.mkdir()
    read, write = mp.Pipe(duplex=False)
    try:
        run_job_process(job_id=job.id, database_url=store.url, folder=str(folder), config=job.config, resume=False,
                        lifeline=read, search_module="compressor.search", threads=1)
    finally:
        write.close()
    episodes = [e.record for e in store.list_episodes(job.id)]
    done = store.get_job(job.id)
    store.close()
    return done, episodes, folder


# Timings, the weights' path (the node read its own copy) and the farm's section (this process has no farm).
_DIFFERENT = {"episode_timing", "weights", "seconds", "latency_per_phone_model"}


def _comparable(value: Any) -> Any:
    """A report or episode without what may differ between two runs of one job on two machines."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()
                if k not in _DIFFERENT and not k.endswith(("_seconds", "_s"))}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _wait_job(c: Any, job_id: str, done: Any, what: str, timeout: float = 600.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = c.get(f"/jobs/{job_id}").json()
        if done(job):
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id}: timed out after {timeout:.0f} s waiting for {what}; last: {job}")


def test_a_job_runs_on_the_other_node_and_comes_back_whole(server: Any, cluster: TwoNodes, tmp_path: Path,
                                                          monkeypatch) -> None:
    import io

    import torch

    from compressor import zoo

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(zoo.load_model("demo-cnn").model.state_dict(), buf)
    with server.client() as c:
        up = c.post("/uploads", files={"file": ("demo.pt", buf.getvalue())})
        assert up.status_code == 201, up.text
        spec = {**SMALL_JOB, "episodes": 3, "weights": up.json()["id"]}  # the weights travel with the task
        r = c.post("/jobs", json=spec)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        job = _wait_job(c, job_id, lambda j: j["state"] in FINISHED, "its end")
        log_text = c.get(f"/jobs/{job_id}/log").text
        assert job["state"] == "succeeded", (job, log_text[-3000:], server.log()[-3000:])
        # The task's own log lines came back: it ran in the node's folder (the head has no CPU for it).
        node_dir = server.work_dir / f"amc-ray-{job_id}"
        assert "runs on node" in log_text and f"{node_dir}/job" in log_text and f"job {job_id} succeeded" in log_text
        assert not node_dir.exists()  # the node cleans up after itself
        report = c.get(f"/jobs/{job_id}/artifacts/report.json").json()
        assert c.get(f"/jobs/{job_id}/artifacts/model.onnx").status_code == 200
    assert report["latency_per_phone_model"]["farm"] == cluster.address
    # The job's Ray driver was a follower process of its own, gone with the job: the orchestrator's process
    # never loaded Ray's core (whose memory grows while it drives tasks).
    followers = [int(p) for p in re.findall(rf"job {job_id}: its Ray task is followed from process (\d+)",
                                              log_text)]
    assert len(followers) == 1 and followers[0] != server.proc.pid, log_text[-3000:]
    status = Path(f"/proc/{followers[0]}/status")
    deadline = time.monotonic() + 30
    while status.exists() and "zombie" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not status.exists() or "zombie" in status.read_text(), "the follower outlived its job by 30 s"
    assert "_raylet" not in Path(f"/proc/{server.proc.pid}/maps").read_text()
    folder = server.data_dir / "jobs" / job_id
    for name in ("report.json", "report.md", "model.onnx", "model.pt", "policy.json", "episodes.csv",
                 "checkpoint/state.pt"):
        assert (folder / name).is_file(), name
    store = _server_store(server)
    episodes = store.list_episodes(job_id)
    done = store.get_job(job_id)
    store.close()
    assert [e.number for e in episodes] == [1, 2, 3] and done.episodes_done == 3 and done.best is not None
    assert report["weights"] == f"{node_dir}/inputs/weights/{Path(done.config['weights']).name}"  # the node's copy

    # The same job in a local worker: the same episodes and the same report.
    monkeypatch.delenv("AMC_RAY_ADDRESS", raising=False)
    local, local_episodes, local_folder = _local_run(tmp_path, spec, done.config)
    assert local.state == "succeeded", local.error
    assert _comparable([e.record for e in episodes]) == _comparable(local_episodes)
    assert _comparable(done.report) == _comparable(local.report) == _comparable(report)
    assert _comparable(report) == _comparable(json.loads((local_folder / "report.json").read_text()))


def test_a_job_whose_node_dies_resumes_on_another_from_the_checkpoint_that_came_back_and_cancels(
        server: Any, cluster: TwoNodes) -> None:
    folder_of = lambda job_id: server.data_dir / "jobs" / job_id  # noqa: E731
    with server.client() as c:
        r = c.post("/jobs", json={**SMALL_JOB, "episodes": 5000, "seed": 3})  # minutes of work unless stopped
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        folder = folder_of(job_id)
        _wait_job(c, job_id, lambda j: j["episodes_done"] >= 2 or j["state"] in FINISHED, "2 episodes")
        _wait_job(c, job_id, lambda j: (folder / "checkpoint" / "state.pt").is_file(), "its checkpoint here", 60)
        assert re.search(r"\(process (\d+)\)", c.get(f"/jobs/{job_id}/log").text)

        # The node that runs it dies (every process of it, its raylet included: the only node with a CPU) and
        # another joins: the job restarts there from the checkpoint that came back.
        end_sessions([cluster.node])
        cluster.node = cluster.add_node("node-2.log")
        job = _wait_job(c, job_id, lambda j: any(e["kind"] == "worker-restart" for e in j["events"]), "a restart",
                        180)
        assert "Ray task failed" in job["events"][-1]["message"], job["events"]
        before = job["episodes_done"]
        _wait_job(c, job_id, lambda j: j["episodes_done"] >= before + 2 or j["state"] in FINISHED, "2 more episodes")
        assert "resuming job" in c.get(f"/jobs/{job_id}/log").text

        t = time.monotonic()
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 200
        job = _wait_job(c, job_id, lambda j: j["state"] in FINISHED, "the cancel", 60)
        assert job["state"] == "cancelled" and time.monotonic() - t < 30, job
        numbers = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
        assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) < 5000
        assert (folder / "checkpoint" / "state.pt").is_file()
        deadline = time.monotonic() + 30
        while c.get("/healthz").json()["running"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert c.get("/healthz").json()["running"] == []


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" in status.read_text()
    except OSError:
        return True


def test_the_orchestrator_killed_alone_leaves_the_follower_to_stop_its_task_and_keep_the_checkpoint(
        server: Any, cluster: TwoNodes) -> None:
    """SIGKILL to the orchestrator's process only: the job's follower (a process of its own, the task's Ray
    driver) sees its lifeline close, asks the task to stop at its next episode, writes the checkpoint that
    came back and ends; the orchestrator started again resumes the job from there, its episodes contiguous."""
    with server.client() as c:
        r = c.post("/jobs", json={**SMALL_JOB, "episodes": 5000, "seed": 4})
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        folder = server.data_dir / "jobs" / job_id
        _wait_job(c, job_id, lambda j: j["episodes_done"] >= 2 or j["state"] in FINISHED, "2 episodes")
        _wait_job(c, job_id, lambda j: (folder / "checkpoint" / "state.pt").is_file(), "its checkpoint here", 60)
        log_text = c.get(f"/jobs/{job_id}/log").text
    (follower,) = [int(p) for p in re.findall(rf"job {job_id}: its Ray task is followed from process (\d+)",
                                               log_text)]
    server.kill()
    deadline = time.monotonic() + 90
    while not _gone(follower) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(follower), "the follower went on 90 s after the orchestrator died"
    text = (folder / "job.log").read_text()
    assert "the server is gone; stopping at the next episode" in text, text[-3000:]
    assert "Traceback" not in text.split("the server is gone")[-1], text[-3000:]
    store = _server_store(server)
    stopped = store.get_job(job_id)
    store.close()
    assert stopped.state == "running" and stopped.episodes_done >= 2  # to resume, not ended

    server.start()
    with server.client() as c:
        _wait_job(c, job_id, lambda j: j["episodes_done"] >= stopped.episodes_done + 2 or j["state"] in FINISHED,
                  "2 more episodes after the restart", 180)
        assert "resuming job" in c.get(f"/jobs/{job_id}/log").text
        assert c.post(f"/jobs/{job_id}/cancel").status_code == 200
        job = _wait_job(c, job_id, lambda j: j["state"] in FINISHED, "the cancel", 60)
        assert job["state"] == "cancelled", job
        assert any(e["kind"] == "server-restart" for e in job["events"]), job["events"]
        numbers = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
        assert numbers == list(range(1, len(numbers) + 1)), numbers
