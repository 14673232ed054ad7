"""The job service: validate and queue job specs, run each job in its own (spawned) process with a
concurrency limit, cancel, and resume jobs a dead server left behind.

The job process itself (`run_job_process`, which records the job's progress in the store) is in
`server/worker.py`; turning a job spec into a SearchConfig is `server.options.build_config`. With
`AMC_JOBS_ON_RAY` a job runs as a Ray task on the cluster instead (`server/ray_jobs.py`), driven from a
process of its own (`server/ray_follower.py`) whose handle looks like the worker process's, so that
everything here treats both alike.
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.config import SearchConfig
from compressor.errors import ConfigError
from server.artifacts import ARTIFACTS, FRONTIER_ARTIFACTS, artifact_file, artifact_names
from server.core.config import Settings
from server.frontier import FrontierPlan, check_plan, job_targets, plan_from_spec, refield
from server.latency import needs_latency
from server.options import build_config, device_wait_s
from server.store import InvalidTransition, Job, JobState, Store, utcnow
from server.worker import LOG_NAME, load_search_module, run_job_process

if TYPE_CHECKING:  # imported on first use (`JobService.devices`)
    from server.devices import DeviceDirectory

log = logging.getLogger(__name__)


class DataDirInUse(RuntimeError):
    """Another server already runs on this data dir (it would resume, and so duplicate, its jobs)."""


class ArtifactNotFound(Exception):
    def __init__(self, name: str):
        super().__init__(f"no artifact {name!r}; a finished job serves: {', '.join(ARTIFACTS)} (a frontier job: "
                         f"{', '.join(FRONTIER_ARTIFACTS)}, report.md, and TARGET_FOLDER/FILE for each target)")


class ArtifactNotReady(Exception):
    def __init__(self, job_id: str, state: JobState):
        super().__init__(f"job {job_id} is {state.value}; artifacts are served once it has succeeded")


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_dir / job_id


def _ended(process: Any) -> str:
    """How a job's worker ended without recording a result: a process's exit, or what a job's Ray task
    says about its own end (`server.ray_follower.RayFollower.ended`)."""
    return getattr(process, "ended", "") or f"the worker process {_exit_description(process.exitcode)}"


def _exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


# ------------------------------------------------------------------------------------- service

def settle_heap() -> None:
    """Collect, then move every object alive now out of the cyclic collector's reach (gc.freeze): the
    server holds about 250,000 long-lived objects once torch and a model have been loaded, and each full
    collection walked them all, stopping every request for 100-170 ms a few times a minute under load
    (docs/BENCHMARKS.md, "Orchestrator under load"). Frozen objects are still freed by reference counting;
    after the first freeze a collection walks only what is new."""
    gc.collect()
    gc.freeze()


@dataclass
class _Running:
    job_id: str
    process: Any  # multiprocessing.Process (spawn), or a server.ray_follower.RayFollower
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
    _next_purge: float = 0.0
    # A server process (its lifespan sets it): freeze the heap after each first validation of a config,
    # which imports torch and builds a model (settle_heap).
    freeze_heap: bool = False

    @property
    def devices(self) -> DeviceDirectory:
        if self._devices is None:
            from server.devices import DeviceDirectory

            self._devices = DeviceDirectory.for_settings(self.settings)  # this server's, in its data dir
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
        if self.settings.jobs_on_ray:  # its files travel with it: refused now rather than when it starts
            from server.ray_jobs import check_inputs, job_inputs

            check_inputs(job_inputs(config, plan), self.settings.ray_max_input_bytes)
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
        # validate() is deterministic for one config, and reads neither the seed nor the episode count
        # (those are checked by SearchConfig itself): jobs that differ only there share one check, so
        # resubmitting a config with another seed builds no model on the request path.
        key = json.dumps({k: v for k, v in config.to_dict().items() if k not in ("seed", "episodes")},
                         sort_keys=True)
        if key in self._validated:
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
        if self.freeze_heap:
            settle_heap()

    def submit(self, spec: dict[str, Any]) -> Job:
        config = self.validate(spec)
        targets = job_targets(spec)
        job = self.store.create_job(spec=spec, config=config.to_dict(),
                                    episodes_total=None if targets is None else len(targets) * config.episodes,
                                    max_queued=self.settings.max_queued_jobs)
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

    def resume(self, job_id: str) -> Job:
        """Queue a failed or cancelled job again, to continue from its checkpoint (InvalidTransition otherwise)."""
        job = self.store.resume_job(job_id, max_queued=self.settings.max_queued_jobs)
        log.info("job %s resumed by request", job_id)
        self._wake.set()
        return job

    def purge_expired(self, now: float | None = None) -> list[str]:
        """Remove the finished jobs older than AMC_KEEP_DAYS: their rows, episodes and folders (and
        folders of jobs no longer in the database, as a purge interrupted by a crash leaves them)."""
        if self.settings.keep_days is None:
            return []
        keep = timedelta(days=self.settings.keep_days)
        cutoff = utcnow() - keep if now is None else utcnow() - keep + timedelta(seconds=now - time.time())
        removed = self.store.delete_finished(self.store.finished_before(cutoff))
        for job_id in removed:
            shutil.rmtree(job_dir(self.settings, job_id), ignore_errors=True)
        known = self.store.job_ids()
        oldest = (time.time() if now is None else now) - keep.total_seconds()
        if self.settings.jobs_dir.is_dir():
            for folder in self.settings.jobs_dir.iterdir():
                if folder.name not in known and folder.is_dir() and folder.stat().st_mtime < oldest:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed.append(folder.name)
        if removed:
            log.info("removed %d job(s) finished more than %g days ago (AMC_KEEP_DAYS)", len(removed),
                     self.settings.keep_days)
        return removed

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
                if time.monotonic() >= self._next_purge:
                    self._next_purge = time.monotonic() + self.settings.retention_every_s
                    self.purge_expired()
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
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            plan = plan_from_spec(job.spec, store=self.store)
        except ConfigError as exc:  # validated at submit; only a lost upload gets here
            self.store.finish(job.id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
            return
        if self.settings.jobs_on_ray:
            self._launch_on_ray(job, folder, plan)
            return
        lifeline_read, lifeline_write = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(
            target=run_job_process,
            name=f"amc-job-{job.id[:8]}",
            kwargs=dict(job_id=job.id, database_url=self.store.url, folder=str(folder), config=job.config,
                        frontier=plan, resume=job.resume, lifeline=lifeline_read,
                        search_module=self.settings.search_module, threads=self.settings.worker_threads,
                        nice=self.settings.worker_nice, max_job_bytes=self.settings.max_job_bytes,
                        device_wait_s=device_wait_s(job.spec)),
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

    def _launch_on_ray(self, job: Job, folder: Path, plan: FrontierPlan | None) -> None:
        """Start the job's follower (`server.ray_follower`): a process of its own that drives the job's
        Ray task, so that the orchestrator's process is never the task's Ray driver."""
        from server.ray_follower import start_follower

        # (before the task starts: afterwards its own phases come back and must not be overwritten)
        self.store.set_phase(job.id, "starting",
                             f"waiting for a node of the Ray cluster with {self.settings.job_cpus:g} free CPU(s)")
        try:
            follower, lifeline = start_follower(self._ctx, job_id=job.id, database_url=self.store.url, folder=folder,
                                                settings=self.settings, plan=plan,
                                                device_wait_s=device_wait_s(job.spec))
        except Exception as exc:
            log.exception("could not start a follower for job %s", job.id)
            self.store.finish(job.id, JobState.FAILED, error=f"could not start a process to follow the job's Ray "
                                                             f"task ({type(exc).__name__}: {exc}); POST /jobs/"
                                                             f"{job.id}/resume to try again")
            return
        with self._lock:
            self._running[job.id] = h = _Running(job.id, follower, lifeline)
        if job.cancel_requested:
            self._signal_cancel(h)
        log.info("job %s started as a Ray task, followed from process %s (resume=%s)", job.id, follower.pid,
                 job.resume)

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
            # Settle first: the handle is dropped only once the job's end is recorded, so a failure
            # here (a locked database) leaves it for the next round instead of a job `running` forever.
            try:
                self._settle(h)
            except Exception:
                log.exception("could not yet record the end of job %s; trying again", h.job_id)
                continue
            with self._lock:
                self._running.pop(h.job_id, None)
            self._wake.set()

    def _settle(self, h: _Running) -> None:
        """The process is gone; if it did not record a final state itself, record one now: cancelled,
        queued again to resume from its checkpoint (a worker that died), or failed once its restarts
        are used up."""
        job = self.store.get_job(h.job_id)
        if job.job_state is not JobState.RUNNING or self._stopping.is_set():
            return
        what = _ended(h.process)
        try:
            if h.cancel_at is not None or job.cancel_requested:
                self.store.finish(h.job_id, JobState.CANCELLED, message="cancelled")
                return
            limit = self.settings.max_worker_restarts
            if self.store.requeue_after_crash(h.job_id, max_restarts=limit, reason=f"{what} without a result"):
                log.warning("job %s: %s; restarting it from its checkpoint", h.job_id, what)
                return
            self.store.finish(h.job_id, JobState.FAILED,
                              error=f"WorkerDied: {what} without a result"
                                    + (f", after {limit} restart(s) from its checkpoint" if limit else "")
                                    + f"; see GET /jobs/{h.job_id}/log for why (often memory: a smaller model or "
                                      f"fewer workers), then POST /jobs/{h.job_id}/resume to try again")
        except InvalidTransition:
            pass
