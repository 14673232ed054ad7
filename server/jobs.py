"""The job service: validate and queue job specs, run each job in its own (spawned) process with a
concurrency limit, cancel, and resume jobs a dead server left behind.

The job process records its own progress in the store (phase messages, every finished episode, the
final state), so the server can die at any moment without losing an episode: the search writes its
checkpoint before it reports an episode, and a resumed job first copies any episode the checkpoint
has but the store missed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import importlib
import json
import logging
import multiprocessing as mp
import os
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from compressor.config import SearchConfig
from compressor.errors import ConfigError, SearchCancelled
from server.artifacts import ARTIFACTS, FRONTIER_ARTIFACTS, artifact_file, artifact_names
from server.core.config import Settings
from server.frontier import (
    FrontierEpisodes,
    FrontierPlan,
    check_plan,
    job_targets,
    plan_from_spec,
    recovery_target,
    refield,
)
from server.latency import make_oracle, needs_latency
from server.options import config_values
from server.store import InvalidTransition, Job, JobState, Store

if TYPE_CHECKING:  # the job processes import this module; they need no device code
    from compressor.events import SearchEvent
    from server.devices import DeviceDirectory

log = logging.getLogger(__name__)

LOG_NAME = "job.log"


class DataDirInUse(RuntimeError):
    """Another server already runs on this data dir (it would resume, and so duplicate, its jobs)."""


class ArtifactNotFound(Exception):
    def __init__(self, name: str):
        super().__init__(f"no artifact {name!r}; a finished job serves: {', '.join(ARTIFACTS)} (a frontier job: "
                         f"{', '.join(FRONTIER_ARTIFACTS)}, report.md, and TARGET_FOLDER/FILE for each target)")


class ArtifactNotReady(Exception):
    def __init__(self, job_id: str, state: JobState):
        super().__init__(f"job {job_id} is {state.value}; artifacts are served once it has succeeded")


def load_search_module(name: str) -> ModuleType:
    return importlib.import_module(name)


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


# ----------------------------------------------------------------------------------------- spec

def build_config(spec: dict[str, Any], *, store: Store, settings: Settings) -> SearchConfig:
    """Turn a job spec (the same strings as `amc compress`) into a SearchConfig, resolving uploads.
    A frontier's config is its first target's (`plan_from_spec` gives the rest)."""
    values = config_values(spec)
    if spec.get("targets"):
        values["target"] = spec["targets"][0]
    model = str(values.get("model", ""))
    if model.startswith("upload:"):
        up = store.get_upload(model.removeprefix("upload:"))
        if up is None:
            raise ConfigError("model", f"no upload {model!r}; upload a file with POST /uploads first")
        raise ConfigError("model", f"{model} is an uploaded {up.kind} file; searching needs a zoo model "
                                   "name or factory as `model` and the uploaded weights' id as `weights`")
    if spec.get("weights"):
        up = store.get_upload(str(spec["weights"]))
        if up is None:
            raise ConfigError("weights", f"no upload {spec['weights']!r}; upload weights with POST /uploads")
        if up.kind != "weights":
            raise ConfigError("weights", f"upload {up.id} is an {up.kind} file, not PyTorch weights")
        values["weights"] = up.path
    if int(values.get("episodes", 1)) > settings.max_episodes:
        raise ConfigError("episodes", f"at most {settings.max_episodes} episodes per job on this server")
    return SearchConfig.from_dict(values)


# ------------------------------------------------------------------------------------- service

@dataclass
class _Running:
    job_id: str
    process: Any  # multiprocessing.Process (spawn)
    lifeline: Any  # write end of a pipe: "cancel" messages; EOF tells the job process the server is gone
    cancel_at: float | None = None
    killed_at: float | None = None


@dataclass
class JobService:
    """Queue, workers and cancellation. `start()` in the app's lifespan, `stop()` at shutdown."""

    store: Store
    settings: Settings
    _ctx: Any = field(default_factory=lambda: mp.get_context("spawn"))
    _running: dict[str, _Running] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _wake: threading.Event = field(default_factory=threading.Event)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _validated: dict[str, bool] = field(default_factory=dict)
    _devices: DeviceDirectory | None = None

    @property
    def devices(self) -> DeviceDirectory:
        if self._devices is None:
            from server.devices import DeviceDirectory

            self._devices = DeviceDirectory()
        return self._devices

    _dir_lock: Any = None

    # -- lifecycle
    def start(self) -> None:
        self.settings.prepare_dirs()
        # One server per data dir: a second one would take the first one's running jobs for
        # interrupted ones and run them twice. The kernel drops the lock when the process dies.
        lock_path = self.settings.data_dir / "server.lock"
        self._dir_lock = open(lock_path, "a+")  # noqa: SIM115 - held while the service runs
        try:
            fcntl.flock(self._dir_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._dir_lock.seek(0)
            holder = self._dir_lock.read().strip() or "another process"
            self._dir_lock.close()
            raise DataDirInUse(f"{self.settings.data_dir} is in use by a running server ({holder}); stop it, or "
                               "give this one its own --data-dir") from None
        self._dir_lock.truncate(0)
        self._dir_lock.write(f"pid {os.getpid()}\n")
        self._dir_lock.flush()
        resumed = self.store.requeue_interrupted()
        if resumed:
            log.warning("resuming %d job(s) interrupted by a restart: %s", len(resumed), ", ".join(resumed))
        self._thread = threading.Thread(target=self._loop, name="amc-dispatcher", daemon=True)
        self._thread.start()
        # Import the search (torch) now rather than in the first POST /jobs.
        threading.Thread(target=load_search_module, args=(self.settings.search_module,), name="amc-warmup",
                         daemon=True).start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop dispatching; running jobs stop at their next episode and resume on the next start."""
        self._stopping.set()
        self._wake.set()
        with self._lock:
            for h in self._running.values():
                h.lifeline.close()  # the job pauses at its next episode, exactly as if the server died
        deadline = time.monotonic() + timeout
        with self._lock:
            handles = list(self._running.values())
        for h in handles:
            h.process.join(max(0.0, deadline - time.monotonic()))
            if h.process.is_alive():
                h.process.terminate()
                h.process.join(2)
        if self._thread is not None:
            self._thread.join(2)
        if self._dir_lock is not None:
            self._dir_lock.close()
        # A job still marked running resumes on the next start (requeue_interrupted).

    # -- API
    def validate(self, spec: dict[str, Any]) -> SearchConfig:
        """Everything that can be checked before accepting a job; ConfigError names the field."""
        plan = plan_from_spec(spec, store=self.store)
        config = build_config(spec, store=self.store, settings=self.settings)
        self.devices.check(config.device)
        if plan is None:
            self._validate_search(config)
            return config
        for i, target in enumerate(plan.targets):  # each checked as `target` is, named as an item of `targets`
            try:
                self._validate_search(dataclasses.replace(config, target=target))
            except ConfigError as exc:
                if exc.field != "target":
                    raise
                raise refield(exc, "targets", f"targets[{i}]") from None
        check_plan(plan, config)
        return config

    def _validate_search(self, config: SearchConfig) -> None:
        key = json.dumps(config.to_dict(), sort_keys=True)
        if key in self._validated:  # validate() is deterministic for one config
            return
        search = load_search_module(self.settings.search_module)
        if needs_latency(config):
            # The latency budget needs the device's lookup table, which the job builds (timing
            # kernels on the device can take minutes): check everything else now; the job checks
            # the budget after building the table and fails with the same message if it is out of reach.
            search.validate(dataclasses.replace(config, target="flops=1", reward=None), oracle=None)
        else:
            search.validate(config, oracle=None)
        if len(self._validated) > 1024:
            self._validated.clear()
        self._validated[key] = True

    def submit(self, spec: dict[str, Any]) -> Job:
        config = self.validate(spec)
        targets = job_targets(spec)
        job = self.store.create_job(spec=spec, config=config.to_dict(),
                                    episodes_total=None if targets is None else len(targets) * config.episodes)
        log.info("queued job %s (%s%s)", job.id, config.model,
                 "" if targets is None else f", a frontier of {len(targets)} targets")
        self._wake.set()
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.store.request_cancel(job_id)
        if job.job_state is JobState.RUNNING:
            with self._lock:
                h = self._running.get(job_id)
            if h is not None:
                self._signal_cancel(h)
            self._wake.set()
        return job

    def artifact(self, job_id: str, name: str) -> tuple[Path, str]:
        """(path, media type) of a succeeded job's file `name` (untrusted: only whitelisted names resolve)."""
        job = self.store.get_job(job_id)
        found = artifact_file(job_dir(self.settings, job_id), name, job_targets(job.spec))
        if found is None:
            raise ArtifactNotFound(name)
        if job.job_state is not JobState.SUCCEEDED:
            raise ArtifactNotReady(job_id, job.job_state)
        if not found[0].is_file():
            raise ArtifactNotFound(name)
        return found

    def available_artifacts(self, job: Job) -> list[str]:
        """The artifact files a job serves now (none until it has succeeded)."""
        if job.job_state is not JobState.SUCCEEDED:
            return []
        return artifact_names(job_dir(self.settings, job.id), job_targets(job.spec))

    def log_path(self, job_id: str) -> Path | None:
        self.store.get_job(job_id)
        path = job_dir(self.settings, job_id) / LOG_NAME
        return path if path.is_file() else None

    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    # -- dispatcher
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reap()
                self._dispatch()
            except Exception:  # keep dispatching; one bad job must not stop the queue
                log.exception("dispatcher iteration failed")
            self._wake.wait(0.25)
            self._wake.clear()

    def _dispatch(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if len(self._running) >= self.settings.max_workers:
                    return
            job = self.store.claim_next()
            if job is None:
                return
            self._launch(job)

    def _launch(self, job: Job) -> None:
        folder = job_dir(self.settings, job.id)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            plan = plan_from_spec(job.spec, store=self.store)
        except ConfigError as exc:  # validated at submit; only a lost upload gets here
            self.store.finish(job.id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
            return
        lifeline_read, lifeline_write = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run_job_process,
            name=f"amc-job-{job.id[:8]}",
            kwargs=dict(job_id=job.id, database_url=self.store.url, folder=str(folder), config=job.config,
                        frontier=plan, resume=job.resume, lifeline=lifeline_read,
                        search_module=self.settings.search_module, threads=self.settings.worker_threads),
            daemon=False,
        )
        try:
            proc.start()
        except Exception as exc:
            log.exception("could not start a worker for job %s", job.id)
            self.store.finish(job.id, JobState.FAILED, error=f"could not start a worker process: {exc}")
            return
        finally:
            lifeline_read.close()  # only the child holds the read end
        with self._lock:
            self._running[job.id] = h = _Running(job.id, proc, lifeline_write)
        if job.cancel_requested:
            self._signal_cancel(h)
        log.info("job %s started in process %s (resume=%s)", job.id, proc.pid, job.resume)

    def _signal_cancel(self, h: _Running) -> None:
        if h.cancel_at is not None:
            return
        h.cancel_at = time.monotonic()
        try:
            h.lifeline.send("cancel")
        except (OSError, ValueError):  # the process is already gone; _reap settles it
            pass

    def _reap(self) -> None:
        now = time.monotonic()
        with self._lock:
            handles = list(self._running.values())
        for h in handles:
            if h.process.is_alive():
                if h.cancel_at is None and self.store.get_job(h.job_id).cancel_requested:
                    self._signal_cancel(h)
                if h.cancel_at is not None and h.killed_at is None and now - h.cancel_at > self.settings.cancel_grace_s:
                    log.warning("job %s did not stop within %.1f s of its cancel; terminating it",
                                h.job_id, self.settings.cancel_grace_s)
                    h.process.terminate()
                    h.killed_at = now
                elif h.killed_at is not None and now - h.killed_at > 3:
                    h.process.kill()
                continue
            h.process.join(0)
            if not h.lifeline.closed:
                h.lifeline.close()
            with self._lock:
                self._running.pop(h.job_id, None)
            self._settle(h)
            self._wake.set()

    def _settle(self, h: _Running) -> None:
        """The process is gone; if it did not record a final state itself, record one now."""
        job = self.store.get_job(h.job_id)
        if job.job_state is not JobState.RUNNING or self._stopping.is_set():
            return
        try:
            if h.cancel_at is not None or job.cancel_requested:
                self.store.finish(h.job_id, JobState.CANCELLED, message="cancelled")
            else:
                self.store.finish(h.job_id, JobState.FAILED,
                                  error=f"the worker process exited with code {h.process.exitcode} without "
                                        f"a result; see GET /jobs/{h.job_id}/log")
        except InvalidTransition:
            pass


# ---------------------------------------------------------------------------------- job process

def run_job_process(*, job_id: str, database_url: str, folder: str, config: dict[str, Any], resume: bool,
                    lifeline: Any, search_module: str, threads: int, frontier: FrontierPlan | None = None) -> None:
    """Entry point of a job's own process (spawn): run the search (or the frontier), record every event
    in the store."""
    out = Path(folder)
    handler = logging.FileHandler(out / LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    store = Store(database_url, create=False)

    # Only one process works in a job folder: a worker orphaned by a killed server holds this lock
    # until it has stopped, and the resumed worker waits for it.
    lock = open(out / ".lock", "w")  # noqa: SIM115 - held for the life of the process
    fcntl.flock(lock, fcntl.LOCK_EX)

    orphaned = threading.Event()
    cancelled = threading.Event()

    def watch_parent() -> None:
        # The server sends "cancel"; EOF means it is gone (SIGKILL included) or shutting down.
        try:
            while True:
                if lifeline.recv() == "cancel":
                    cancelled.set()
        except (EOFError, OSError):
            pass
        log.warning("the server is gone; stopping at the next episode so a restart can resume")
        orphaned.set()
        time.sleep(60)  # an episode that never ends must not hold the folder forever
        log.error("still running 60 s after the server died; exiting (the checkpoint is intact)")
        os._exit(3)

    threading.Thread(target=watch_parent, daemon=True).start()

    def interrupted() -> bool:
        return orphaned.is_set()

    try:
        job = store.get_job(job_id)
        if job.job_state is not JobState.RUNNING:
            log.info("job %s is %s; nothing to do", job_id, job.state)
            return
        import torch

        torch.set_num_threads(threads)
        cfg = SearchConfig.from_dict(config)
        should_stop = lambda: cancelled.is_set() or interrupted()  # noqa: E731
        if frontier is None:
            report = run_single(job_id, store, out, cfg, resume=resume, should_stop=should_stop,
                                search=load_search_module(search_module))
        else:
            report = run_frontier_job(job_id, store, out, cfg, frontier, resume=resume, should_stop=should_stop)
        store.finish(job_id, JobState.SUCCEEDED, report=_jsonable(report), message="finished")
        log.info("job %s succeeded", job_id)
    except Exception as exc:
        if isinstance(exc, SearchCancelled) and interrupted() and not cancelled.is_set():
            log.warning("job %s paused by a server shutdown; it resumes on the next start", job_id)
            return
        try:
            if isinstance(exc, SearchCancelled):
                store.finish(job_id, JobState.CANCELLED, message="cancelled; checkpoint kept")
                log.info("job %s cancelled", job_id)
            else:
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                store.finish(job_id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
        except InvalidTransition as again:
            log.warning("could not record the end of job %s: %s", job_id, again)
    finally:
        handler.flush()
        store.close()


def run_single(job_id: str, store: Store, out: Path, cfg: SearchConfig, *, resume: bool,
               should_stop: Callable[[], bool], search: ModuleType) -> dict[str, Any]:
    """One search into the job folder, resumed from its checkpoint after a restart; returns its report."""
    logged = search.load_episode_log(out) if resume else []
    can_resume = bool(logged)  # killed before its first checkpoint: start over
    if can_resume:
        filled = 0
        for record in logged:
            filled += store.add_episode(job_id, int(record["episode"]), _jsonable(record), total=cfg.episodes)
        log.info("resuming job %s from its checkpoint (%d episode(s) filled from it)", job_id, filled)
        store.set_phase(job_id, "resume", "resuming from the last checkpoint")
    if needs_latency(cfg):
        store.set_phase(job_id, "latency", f"completing the latency lookup table of {cfg.device} for {cfg.model}")
    oracle = make_oracle(cfg)
    return search.run_search(cfg, out, oracle=oracle, on_event=recorder(job_id, store), should_stop=should_stop,
                             resume=can_resume)


def run_frontier_job(job_id: str, store: Store, out: Path, cfg: SearchConfig, plan: FrontierPlan, *, resume: bool,
                     should_stop: Callable[[], bool]) -> dict[str, Any]:
    """One search per target into the job folder's target folders, then the references and
    frontier.json/.svg and report.md; returns the frontier. It cannot resume from its searches'
    checkpoints (they share one setup), so after a restart it starts over."""
    from compressor.frontier import run_frontier

    if resume:
        log.warning("job %s: a frontier cannot resume from its checkpoints; starting it over", job_id)
        store.reset_progress(job_id)
        store.set_phase(job_id, "restart", "interrupted by a server restart; a frontier starts over")
    # A frontier is judged on measured latency, so it asks the device even for FLOPs targets.
    store.set_phase(job_id, "latency", f"completing the latency lookup table of {cfg.device} for {cfg.model}")
    oracle = make_oracle(cfg, force=True)
    return run_frontier(cfg, plan.targets, out, oracle=oracle, references=[r.argument(out) for r in plan.references],
                        on_event=recorder(job_id, store, plan), should_stop=should_stop)


def recorder(job_id: str, store: Store, plan: FrontierPlan | None = None) -> Callable[[SearchEvent], None]:
    """The job's event sink: phases, each search episode (a frontier's numbered job-wide, with its
    target), each recovery epoch."""
    numbering = FrontierEpisodes(plan.targets) if plan is not None else None
    current = {"target": ""}

    def on_event(ev: SearchEvent) -> None:
        if ev.kind == "episode":
            # Episodes of the compare baselines (phase uniform/random) are not the job's episodes.
            if numbering is None:
                if ev.phase in ("search", ""):
                    store.add_episode(job_id, ev.episode, _jsonable(ev.record), total=ev.episodes)
                return
            found = numbering.number(ev.phase, ev.episode, ev.episodes)
            if found is not None:
                number, total, target = found
                store.add_episode(job_id, number, _jsonable({**ev.record, "target": target}), total=total)
        elif ev.kind == "epoch":
            search = recovery_target(ev.phase)
            record = ({"target": search} if search else {}) | dict(ev.record) | {"epochs": ev.episodes}
            store.add_epoch(job_id, _jsonable(record))
            held = record.get("holdout_accuracy")
            store.set_phase(job_id, "finetune", f"recovery{' ' + search if search else ''}: epoch {ev.episode} of "
                            f"{ev.episodes}, loss {record.get('loss', float('nan')):.4f}"
                            + (f", held-out accuracy {100 * held:.2f}%" if held is not None else ""))
        elif ev.kind == "phase":
            if ev.phase == "frontier":
                current["target"] = ev.message.rpartition(": ")[2] if ev.message.startswith("target ") else ""
                store.set_phase(job_id, ev.phase, ev.message)
            else:
                store.set_phase(job_id, ev.phase, f"{current['target']}: {ev.message}" if current["target"]
                                else ev.message)

    return on_event


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
