"""Jobs as Ray tasks (AMC_JOBS_ON_RAY): a real Ray cluster started here, a head with no CPUs and one more
node joined with `ray start --address` (so a job can only run on that other node), each in its own session
so that every process they start is ended by session id, never `ray stop`. The node works in a folder of
its own (AMC_RAY_WORK_DIR), apart from the orchestrator's data dir: the job's state, episodes, log and
files come back to the orchestrator's store and job folder; its report is the local worker's for the same
seed; uploaded weights travel with it; a cancelled job stops, a killed task resumes from the checkpoint
that came back. Without Ray: the settings' rules and the file shipping's checks."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
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


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _end_sessions(*sids: int) -> None:
    """End every process of the sessions `sids` (all started by this test), TERM then KILL."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        for sid in sids:
            for pid in _session_pids(sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while any(_session_pids(sid) for sid in sids) and time.monotonic() < deadline:
            time.sleep(0.2)


def _new_session() -> None:
    if os.environ.get("AMC_TEST_RAY_NICE"):  # (see tests/test_farm_ray.py)
        os.setpriority(os.PRIO_PROCESS, 0, int(os.environ["AMC_TEST_RAY_NICE"]))
    os.setsid()


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

    def _ray(self, *args: str, log: str) -> None:
        with open(self.root / log, "w") as out:
            proc = subprocess.Popen([str(BIN / "ray"), "start", *args], cwd=self.root, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=_new_session)
            self.sessions.append(proc.pid)  # setsid: the session id is the pid
            assert proc.wait(timeout=600) == 0, (self.root / log).read_text()[-3000:]

    def start(self) -> None:
        self._ray("--head", "--port", "0", "--num-cpus", "0", "--include-dashboard", "false",
                  "--disable-usage-stats", "--temp-dir", str(self.ray_tmp), log="head.log")
        m = re.search(r"ray start --address='([^']+)'", (self.root / "head.log").read_text())
        assert m, (self.root / "head.log").read_text()[-3000:]
        self.address = m.group(1)
        self._ray("--address", self.address, "--num-cpus", "1", log="node.log")

    def close(self) -> None:
        _end_sessions(*self.sessions)
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodes]:
    # Not importorskip: Ray reads RAY_AUTH_MODE once, when imported, so it is imported after the token is set.
    if importlib.util.find_spec("ray") is None:
        pytest.skip("the farm extra is not installed (pip install -e '.[farm]')")
    with tempfile.TemporaryDirectory(prefix="amc-rayjobs-") as tmp:
        c = TwoNodes(Path(tmp))
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED",
                                                 "AMC_CACHE_DIR")}
        try:
            c.start()
            os.environ.update({k: c.env[k] for k in saved})
            yield c
        finally:
            if "ray" in sys.modules:
                import ray

                ray.shutdown()
            c.close()
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture(scope="module")
def service(cluster: TwoNodes, tmp_path_factory) -> Iterator[Any]:
    """A started job service with jobs on Ray: its data dir apart from the node's work dir."""
    from server.jobs import JobService

    tmp = tmp_path_factory.mktemp("rayjobs")
    settings = Settings(data_dir=tmp / "data", api_token=TOKEN, ray_address=cluster.address, jobs_on_ray=True,
                        ray_work_dir=str(tmp / "node-work"), ray_checkpoint_every_s=0.5, max_workers=1,
                        max_worker_restarts=1)
    settings.prepare_dirs()
    store = Store(settings.db_url)
    svc = JobService(store=store, settings=settings)
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
        store.close()


def _wait(store: Store, job_id: str, done: Any, what: str, timeout: float = 600.0) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = store.get_job(job_id)
        if done(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id}: timed out after {timeout:.0f} s waiting for {what}; it is {job.state}: "
                         f"{job.phase} {job.message} {job.error}")


def _worker_node(cluster: TwoNodes) -> str:
    import ray

    return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 1)


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


_TIMES_AND_PATHS = {"episode_timing", "weights", "seconds"}


def _comparable(value: Any) -> Any:
    """A report or episode without its timings and the weights' path (the node read its own copy)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()
                if k not in _TIMES_AND_PATHS and not k.endswith(("_seconds", "_s"))}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _upload_weights(service: Any) -> str:
    import io

    import torch

    from compressor import zoo

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(zoo.load_model("demo-cnn").model.state_dict(), buf)
    upload_id = secrets.token_hex(16)
    path = service.settings.uploads_dir / upload_id
    path.write_bytes(buf.getvalue())
    service.store.add_upload(kind="weights", filename="demo.pt", size=path.stat().st_size, sha256="0" * 64,
                             path=str(path), upload_id=upload_id)
    return upload_id


def test_a_job_runs_on_the_other_node_and_comes_back_whole(cluster: TwoNodes, service: Any, tmp_path: Path,
                                                          monkeypatch) -> None:
    spec = {**SMALL_JOB, "episodes": 3, "weights": _upload_weights(service)}  # the weights travel with the task
    job = service.submit(spec)
    done = _wait(service.store, job.id, lambda j: j.state in FINISHED, "its end")
    folder = service.settings.jobs_dir / job.id
    log_text = (folder / "job.log").read_text()
    assert done.state == "succeeded", (done.error, log_text[-3000:])

    # It ran on the node with the CPU, in that node's folder, and recorded everything here.
    assert f"({_worker_node(cluster)[:12]})" in log_text and "runs on node" in log_text, log_text[-3000:]
    assert f"job {job.id} succeeded" in log_text  # the task's own log lines came back
    episodes = service.store.list_episodes(job.id)
    assert [e.number for e in episodes] == [1, 2, 3] and done.episodes_done == 3
    assert done.best is not None and done.phase == "succeeded"
    for name in ("report.json", "report.md", "model.onnx", "model.pt", "policy.json", "episodes.csv",
                 "checkpoint/state.pt"):
        assert (folder / name).is_file(), name
    assert service.available_artifacts(service.store.get_job(job.id))[:1] == ["model.onnx"]
    node_dir = Path(service.settings.ray_work_dir) / f"amc-ray-{job.id}"
    assert done.report["weights"] == f"{node_dir}/inputs/weights/{spec['weights']}"  # the node's copy
    assert not node_dir.exists()  # the node cleans up after itself

    # The same job in a local worker: the same episodes and the same report.
    monkeypatch.setenv("AMC_RAY_ADDRESS", cluster.address)  # a local worker of this server would see the farm
    local, local_episodes, local_folder = _local_run(tmp_path, spec, job.config)
    assert local.state == "succeeded", local.error
    assert _comparable([e.record for e in episodes]) == _comparable(local_episodes)
    assert _comparable(done.report) == _comparable(local.report)
    on_ray = json.loads((folder / "report.json").read_text())
    assert _comparable(on_ray) == _comparable(json.loads((local_folder / "report.json").read_text()))


def test_cancel_and_a_killed_task_resumes_from_the_checkpoint_that_came_back(cluster: TwoNodes, service: Any) -> None:
    store = service.store
    job = service.submit({**SMALL_JOB, "episodes": 5000, "seed": 3})  # minutes of work unless stopped
    folder = service.settings.jobs_dir / job.id
    _wait(store, job.id, lambda j: j.episodes_done >= 2 or j.job_state.finished, "2 episodes")
    _wait(store, job.id, lambda j: (folder / "checkpoint" / "state.pt").is_file(), "its checkpoint here", 60)
    m = re.search(r"\(process (\d+)\)", (folder / "job.log").read_text())
    assert m, (folder / "job.log").read_text()[-3000:]

    # The task's worker process dies (as with its node): the job restarts from the checkpoint that came back.
    os.kill(int(m.group(1)), signal.SIGKILL)
    restarted = _wait(store, job.id, lambda j: any(e["kind"] == "worker-restart" for e in j.events or []),
                      "a restart", 120)
    assert "Ray task failed" in restarted.events[-1]["message"], restarted.events
    before = restarted.episodes_done
    _wait(store, job.id, lambda j: j.episodes_done >= before + 2 or j.job_state.finished, "2 more episodes")
    assert "resuming job" in (folder / "job.log").read_text()

    t = time.monotonic()
    service.cancel(job.id)
    done = _wait(store, job.id, lambda j: j.job_state.finished, "the cancel", 60)
    assert done.job_state is JobState.CANCELLED and time.monotonic() - t < 30, done.message
    numbers = [e.number for e in store.list_episodes(job.id)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) < 5000
    assert (folder / "checkpoint" / "state.pt").is_file()
    _wait(store, job.id, lambda j: job.id not in service.running_ids(), "the task's handle to go", 30)
