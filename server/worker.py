"""A job's own process: `run_job_process` is what the job service spawns for each job. It runs the
search (or the frontier) and records its own progress in the store (phase messages, every finished
episode, the final state), so the server can die at any moment without losing an episode: the search
writes its checkpoint before it reports an episode, and a resumed job first copies any episode the
checkpoint has but the store missed.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import logging
import os
import shutil
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import IO, TYPE_CHECKING, Any, Protocol

from compressor.config import SearchConfig
from compressor.errors import SearchCancelled
from profiler.errors import DeviceWaitExpired, DeviceWaitStopped
from server.artifacts import ArtifactLimitExceeded, FolderQuota
from server.frontier import FrontierEpisodes, FrontierPlan, recovery_target
from server.latency import make_oracle, needs_latency
from server.store import InvalidTransition, JobEventKind, JobState, Store

if TYPE_CHECKING:
    from compressor.events import SearchEvent
    from profiler.waiting import DeviceWait

log = logging.getLogger(__name__)

LOG_NAME = "job.log"  # in the job's folder; GET /jobs/{id}/log serves it
# How long a job's process waits for a database server that stopped answering (a restart, a cut link)
# before it gives up; the search pauses meanwhile. Past it the worker exits and the server restarts the
# job from its checkpoint (AMC_MAX_WORKER_RESTARTS) once the database answers again.
JOB_DATABASE_WAIT_S = 900.0


def load_search_module(name: str) -> ModuleType:
    return importlib.import_module(name)


class JobView(Protocol):
    """What a job's own process reads of its job row."""

    @property
    def job_state(self) -> JobState: ...

    @property
    def phase(self) -> str: ...

    @property
    def message(self) -> str: ...


class JobRecords(Protocol):
    """Where a job's own process records its progress: the `Store` itself (a local worker process), or a
    relay to the orchestrator's Store (a job that runs as a Ray task on another machine: server/ray_jobs.py)."""

    def get_job(self, job_id: str) -> JobView: ...

    def set_phase(self, job_id: str, phase: str, message: str) -> None: ...

    def add_episode(self, job_id: str, number: int, record: dict[str, Any], *, total: int | None = None) -> bool: ...

    def add_epoch(self, job_id: str, record: dict[str, Any]) -> None: ...

    def add_event(self, job_id: str, kind: JobEventKind, message: str) -> None: ...

    def reset_progress(self, job_id: str) -> None: ...

    def finish(self, job_id: str, state: JobState, *, report: dict[str, Any] | None = None,
               error: str | None = None, message: str = "") -> Any: ...


def run_job_process(*, job_id: str, database_url: str, folder: str, config: dict[str, Any], resume: bool,
                    lifeline: Any, search_module: str, threads: int, frontier: FrontierPlan | None = None,
                    nice: int = 0, max_job_bytes: int | None = None,
                    device_wait_s: float | None = None) -> None:
    """Entry point of a job's own process (spawn): run the search (or the frontier), record every event
    in the store. `nice` lowers this process's scheduling priority (the server's requests come first);
    `max_job_bytes` is the per-job limit on the job folder's size; `device_wait_s` how long the job waits
    for a device that stops answering (None: it fails at once)."""
    if nice:
        os.nice(nice)
    os.umask(0o077)  # the job's files are the operator's alone
    out = Path(folder)
    handler = logging.FileHandler(out / LOG_NAME)
    store = open_job_store(database_url, job_id)
    lock = lock_job_folder(out)
    orphaned = threading.Event()
    cancelled = threading.Event()
    done = threading.Event()
    watch_parent(lifeline, on_cancel=cancelled.set, on_gone=orphaned.set, done=done)
    try:
        with job_log(handler):
            run_job(job_id=job_id, store=store, out=out, config=config, frontier=frontier, resume=resume,
                    search_module=search_module, threads=threads, max_job_bytes=max_job_bytes,
                    device_wait_s=device_wait_s, cancelled=cancelled, orphaned=orphaned)
    finally:
        done.set()
        store.close()
        lock.close()


def open_job_store(database_url: str, job_id: str) -> Store:
    """A job process's own connection to the store: it waits out a database outage of up to
    JOB_DATABASE_WAIT_S, and says in the job's events that it did."""
    store = Store(database_url, create=False, outage_wait_s=JOB_DATABASE_WAIT_S)
    store.on_database_back = lambda what, seconds: store.add_event(
        job_id, JobEventKind.DATABASE_WAIT,
        f"the database was unreachable for {seconds:.0f} s; the job waited ({what}) and went on, nothing lost")
    return store


def watch_parent(lifeline: Any, *, on_cancel: Callable[[], None], on_gone: Callable[[], None],
                 done: threading.Event, grace_s: float = 60.0) -> threading.Thread:
    """Follow a job process's lifeline from the server in a thread: "cancel" calls `on_cancel`; EOF (the
    server is gone, SIGKILL included, or shutting down) calls `on_gone` unless the job is `done`, and if
    it is still not done `grace_s` later the process exits (code 3): an episode that never ends must not
    hold the job folder forever; its checkpoint is intact."""

    def watch() -> None:
        try:
            while True:
                if lifeline.recv() == "cancel":
                    on_cancel()
        except (EOFError, OSError):
            pass
        if done.wait(0):
            return
        log.warning("the server is gone; stopping at the next episode so a restart can resume")
        on_gone()
        if not done.wait(grace_s):
            log.error("still running %.0f s after the server died; exiting (the checkpoint is intact)", grace_s)
            os._exit(3)

    thread = threading.Thread(target=watch, name="amc-lifeline", daemon=True)
    thread.start()
    return thread


def lock_job_folder(out: Path) -> IO[str]:
    """Only one process works in a job folder: a worker orphaned by a killed server holds this lock until
    it has stopped, and the resumed worker waits for it. The lock file names its holder; closing it
    (or the process's end) releases it."""
    lock = open(out / ".lock", "a+")  # noqa: SIM115 - held until the caller closes it
    fcntl.flock(lock, fcntl.LOCK_EX)
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


@contextmanager
def job_log(handler: logging.Handler) -> Iterator[None]:
    """The job's log lines (this process's, INFO and up) go to `handler` while the job runs."""
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        handler.flush()
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def run_job(*, job_id: str, store: JobRecords, out: Path, config: dict[str, Any], frontier: FrontierPlan | None,
            resume: bool, search_module: str, threads: int, max_job_bytes: int | None,
            device_wait_s: float | None, cancelled: threading.Event, orphaned: threading.Event) -> None:
    """A job from its start to its recorded end, wherever it runs (a worker process, a Ray task): run the
    search or the frontier in `out`, record its end in `store` (succeeded with the report, failed with
    `failure_reason`, cancelled). `cancelled`: a client cancelled the job; `orphaned`: the server is gone
    or stopping, so the job stops at its next episode *without* recording an end (a restart resumes it)."""
    quota = FolderQuota(out, max_job_bytes)
    try:
        job = store.get_job(job_id)
        if job.job_state is not JobState.RUNNING:
            log.info("job %s is %s; nothing to do", job_id, job.job_state.value)
            return
        import torch

        torch.set_num_threads(threads)
        cfg = SearchConfig.from_dict(config)
        should_stop = lambda: cancelled.is_set() or orphaned.is_set()  # noqa: E731
        if frontier is None:
            report = run_single(job_id, store, out, cfg, resume=resume, should_stop=should_stop,
                                search=load_search_module(search_module), quota=quota, device_wait_s=device_wait_s)
        else:
            report = run_frontier_job(job_id, store, out, cfg, frontier, resume=resume, should_stop=should_stop,
                                      quota=quota, device_wait_s=device_wait_s)
        quota.check(force=True)
        store.finish(job_id, JobState.SUCCEEDED, report=_jsonable(report), message="finished")
        log.info("job %s succeeded", job_id)
    except Exception as exc:
        stopping = isinstance(exc, (SearchCancelled, DeviceWaitStopped))  # a wait for the device cut short too
        if stopping and orphaned.is_set() and not cancelled.is_set():
            log.warning("job %s paused by a server shutdown; it resumes on the next start", job_id)
            return
        try:
            if stopping:
                store.finish(job_id, JobState.CANCELLED, message="cancelled; checkpoint kept")
                log.info("job %s cancelled", job_id)
            else:
                log.error("job %s failed:\n%s", job_id, traceback.format_exc())
                store.finish(job_id, JobState.FAILED, error=failure_reason(exc, job_id=job_id, folder=out))
        except InvalidTransition as again:
            log.warning("could not record the end of job %s: %s", job_id, again)


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the errors it was raised from (its causes and contexts), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, says the disk (or quota) is full."""
    return any((isinstance(e, OSError) and e.errno in _DISK_FULL)
               or "No space left on device" in str(e) or "database or disk is full" in str(e) for e in _chain(exc))


def _device_wait_expired(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is a wait for the job's device that ran out."""
    return any(isinstance(e, DeviceWaitExpired) for e in _chain(exc))


def device_waiter(job_id: str, store: JobRecords) -> Callable[[DeviceWait], None]:
    """What a job does while it waits for its device: its phase says so (the previous phase comes back with
    the device), and each start, return and expiry of a wait is an event of the job (and a line of its log)."""
    saved: dict[str, tuple[str, str]] = {}

    def on_wait(notice: DeviceWait) -> None:
        if notice.state == "waiting":
            job = store.get_job(job_id)
            if job.phase != "device":
                saved["phase"] = (job.phase, job.message)
            store.set_phase(job_id, "device", notice.describe())
        elif notice.state == "back" and "phase" in saved:
            store.set_phase(job_id, *saved.pop("phase"))
        store.add_event(job_id, JobEventKind.DEVICE_WAIT, notice.describe())

    return on_wait


def failure_reason(exc: BaseException, *, job_id: str, folder: Path) -> str:
    """The job's `error`: what failed (type and message) and, where the fault is the server's disk or
    limits rather than the job spec, what the operator can do about it."""
    if isinstance(exc, ArtifactLimitExceeded):
        return f"ArtifactLimitExceeded: {exc}; POST /jobs/{job_id}/resume"
    if _device_wait_expired(exc):
        return (f"DeviceWaitExpired: {exc}. The job's checkpoint and the measurements taken so far are kept: when the "
                f"device answers again (GET /devices), POST /jobs/{job_id}/resume")
    if _disk_full(exc):
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.0f} MB free now"
        except OSError:
            free = "free space unknown"
        return (f"DiskFull: the disk holding {folder} is full ({free}); the job stopped while writing its files "
                f"({type(exc).__name__}: {exc}). Its checkpoint and the other jobs are intact: free some space "
                f"(or set AMC_KEEP_DAYS so old jobs are removed), then POST /jobs/{job_id}/resume")
    return f"{type(exc).__name__}: {exc}"


def run_single(job_id: str, store: JobRecords, out: Path, cfg: SearchConfig, *, resume: bool,
               should_stop: Callable[[], bool], search: ModuleType, quota: FolderQuota | None = None,
               device_wait_s: float | None = None) -> dict[str, Any]:
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
    oracle = make_oracle(cfg, device_wait_s=device_wait_s, on_wait=device_waiter(job_id, store),
                         should_stop=should_stop)
    report = search.run_search(cfg, out, oracle=oracle, on_event=recorder(job_id, store, quota=quota),
                               should_stop=should_stop, resume=can_resume)
    return with_phone_models(job_id, store, out, cfg, report)


def with_phone_models(job_id: str, store: JobRecords, out: Path, cfg: SearchConfig, report: dict[str, Any], *,
                      baseline: Path | None = None) -> dict[str, Any]:
    """The report with the final model's latency on each phone model of the farm (server/phone_models.py),
    written into report.json and report.md; without a farm, a note that the job's device is the only one.
    `baseline`: the unpruned network's ONNX file when the caller has it (a frontier exports it once for all
    its targets); exported here otherwise."""
    import tempfile

    from profiler.farm.names import farm_address
    from server.phone_models import add_to_report, phone_model_latencies

    farm = farm_address()
    if farm is None or not (out / "model.onnx").is_file():
        return add_to_report(out, report, phone_model_latencies(out, device=cfg.device, farm=None))
    store.set_phase(job_id, "phone-models", f"timing the pruned model on every phone model of the farm at {farm}")
    with tempfile.TemporaryDirectory(prefix="amc-baseline-") as tmp:
        try:
            baseline = baseline or baseline_onnx(cfg, Path(tmp))
            section = phone_model_latencies(out, device=cfg.device, farm=farm, baseline=baseline)
        except Exception as exc:  # the search's result stands without this section
            log.warning("job %s: could not time the result on the farm's phone models: %s", job_id, exc)
            section = {"farm": farm, "device": cfg.device, "models": [],
                       "note": f"the farm at {farm} could not be asked ({type(exc).__name__}: {exc})"}
    log.info("job %s: %s", job_id, section["note"])
    return add_to_report(out, report, section)


def baseline_onnx(cfg: SearchConfig, folder: Path) -> Path:
    """The unpruned architecture of the job's model as ONNX in `folder` (its weights do not change its latency)."""
    return architecture_onnx(cfg.model, folder / "baseline.onnx")


def architecture_onnx(name: str, path: Path) -> Path:
    """Zoo model `name`'s architecture, untrained, as ONNX at `path`: what its latency depends on."""
    import torch

    from compressor import zoo
    from profiler.export import export_onnx

    loaded = zoo.load_model(name)
    return export_onnx(loaded.model.eval(), torch.zeros(1, *loaded.entry.input_shape), path)


def run_frontier_job(job_id: str, store: JobRecords, out: Path, cfg: SearchConfig, plan: FrontierPlan, *, resume: bool,
                     should_stop: Callable[[], bool], quota: FolderQuota | None = None,
                     device_wait_s: float | None = None) -> dict[str, Any]:
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
    oracle = make_oracle(cfg, force=True, device_wait_s=device_wait_s, on_wait=device_waiter(job_id, store),
                         should_stop=should_stop)
    frontier = run_frontier(cfg, plan.targets, out, oracle=oracle,
                            references=[r.argument(out) for r in plan.references],
                            on_event=recorder(job_id, store, plan, quota=quota), should_stop=should_stop)
    # Each target's model on every phone model of the farm, in that target's report.json and report.md;
    # the unpruned network is exported once for all of them. Then the frontier's own table: the unpruned
    # network, the targets and the references, by phone model.
    import tempfile

    from profiler.farm.names import farm_address
    from server.phone_models import KEY, add_to_frontier, frontier_latencies

    farm = farm_address()
    folders = {str(p["dir"]): out / str(p["dir"]) for p in frontier.get("points") or []
               if p.get("dir") and (out / str(p["dir"]) / "report.json").is_file()}
    with tempfile.TemporaryDirectory(prefix="amc-baseline-") as tmp:
        baseline = None
        if folders and farm is not None:
            try:
                baseline = baseline_onnx(cfg, Path(tmp))
            except Exception as exc:  # each target says so in its own report (with_phone_models tries again)
                log.warning("job %s: could not export the unpruned network for the farm: %s", job_id, exc)
        sections = {name: with_phone_models(job_id, store, folder, cfg,
                                             json.loads((folder / "report.json").read_text()), baseline=baseline)[KEY]
                    for name, folder in folders.items()}
        try:
            references = [] if farm is None else [
                (r.name, Path(r.path) if r.onnx else architecture_onnx(r.name, Path(tmp) / f"reference-{i}.onnx"))
                for i, r in enumerate(plan.references)]
            if references:
                store.set_phase(job_id, "phone-models", f"timing {len(references)} reference(s) on every phone model "
                                                        f"of the farm at {farm}")
            section = frontier_latencies(frontier, sections, device=cfg.device, farm=farm, references=references)
        except Exception as exc:  # the frontier stands without this table
            log.warning("job %s: could not time the frontier on the farm's phone models: %s", job_id, exc)
            section = {"farm": farm, "device": cfg.device, "models": [], "rows": [],
                       "note": f"the farm at {farm} could not be asked ({type(exc).__name__}: {exc})"}
    log.info("job %s: frontier by phone model: %s", job_id, section["note"])
    return add_to_frontier(out, frontier, section)


def recorder(job_id: str, store: JobRecords, plan: FrontierPlan | None = None, *,
             quota: FolderQuota | None = None) -> Callable[[SearchEvent], None]:
    """The job's event sink: phases, each search episode (a frontier's numbered job-wide, with its
    target), each recovery epoch. With a `quota`, an event past the job's size limit stops the search."""
    numbering = FrontierEpisodes(plan.targets) if plan is not None else None
    current = {"target": ""}

    def on_event(ev: SearchEvent) -> None:
        if quota is not None:
            quota.check()
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
            stage, what = _recovery_stage(ev.phase)
            record = (({"target": search} if search else {}) | ({"stage": stage} if stage != "finetune" else {})
                      | dict(ev.record) | {"epochs": ev.episodes})
            store.add_epoch(job_id, _jsonable(record))
            held = record.get("holdout_accuracy")
            store.set_phase(job_id, stage, f"{what}{' ' + search if search else ''}: epoch {ev.episode} of "
                            f"{ev.episodes}, loss {record.get('loss', float('nan')):.4f}"
                            + (f", held-out accuracy {100 * held:.2f}%" if held is not None else ""))
        elif ev.kind == "step":  # within a recovery epoch: the phase line says how far it is
            search = recovery_target(ev.phase)
            stage, what = _recovery_stage(ev.phase)
            r = ev.record
            store.set_phase(job_id, stage, f"{what}{' ' + search if search else ''}: epoch {ev.episode} of "
                            f"{ev.episodes}, {r.get('images')} of {r.get('of')} images, epoch ends in about "
                            f"{int(r.get('epoch_eta_seconds') or 0)} s")
        elif ev.kind == "phase":
            if ev.phase == "frontier":
                current["target"] = ev.message.rpartition(": ")[2] if ev.message.startswith("target ") else ""
                store.set_phase(job_id, ev.phase, ev.message)
            else:
                store.set_phase(job_id, ev.phase, f"{current['target']}: {ev.message}" if current["target"]
                                else ev.message)

    return on_event


def _recovery_stage(phase: str) -> tuple[str, str]:
    """(stage, words) of a recovery epoch's phase: `finetune` (recovery) or `qat` (quantization-aware recovery)."""
    if phase.partition(" ")[0] == "qat":
        return "qat", "quantization-aware recovery"
    return "finetune", "recovery"


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
