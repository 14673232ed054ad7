"""Jobs as Ray tasks (`AMC_JOBS_ON_RAY=1` with `AMC_RAY_ADDRESS`): each job runs on whichever node of the
cluster has the CPUs it asks for, and everything it produces comes back to the orchestrator's store and
job folder. The node is assumed to share nothing with the orchestrator but the cluster: no file system,
no database.

- The job's inputs (its data set when it is a file or folder, its uploaded weights, a frontier's
  reference models) travel with the task, bounded by `AMC_RAY_MAX_INPUT_MB`, and so does the job's
  checkpoint when it resumes. On the node the job works in `<AMC_RAY_WORK_DIR>/amc-ray-<job id>/`, its
  config pointing at the inputs' copies there (the same path on every node, so a job resumed elsewhere
  matches its checkpoint).
- The task runs the same code as a local worker process (`server.worker.run_job`); its store is a
  `RelayRecords`, which sends each record (phase, episode, recovery epoch, event) and its log lines
  through the job's mailbox (a `JobRelay`, one per attempt) in the `RelayHub` actor of the job's follower
  (`server/ray_follower.py`: the process of the orchestrator's host that drives the job's task, one per
  job; the hub is pinned to its node); the follower drains the mailbox twice a second and writes the
  records into the Store as a local worker would.
  The relay also carries the cancel and stop signals down to the task, and the job's checkpoint up to
  the orchestrator every `AMC_RAY_CHECKPOINT_EVERY_S`.
- When the search ends the task returns the job folder's files (reports, models, episode log, target
  folders, checkpoint); the follower writes them into the job folder and only then records the
  job's end, so a succeeded job's artifacts are there when its state says so.
- `RayJob` is the task's handle in the follower; the follower's own handle in the job service looks like
  the worker process's (`is_alive`, `join`, `terminate`, `kill`, `exitcode`), so queueing, cancelling,
  restarting after a crash and settling stay `server.jobs.JobService`'s alone. A task whose node dies ends without a result; the
  service restarts it from the last checkpoint that came back (`AMC_MAX_WORKER_RESTARTS`) or fails it,
  resumable with `POST /jobs/{id}/resume`.

Ray is imported only when a job is launched this way; this module's import costs nothing without it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from compressor.config import SearchConfig
from compressor.errors import ConfigError
from compressor.fileio import atomic_write
from server.frontier import FrontierPlan
from server.store import InvalidTransition, JobEventKind, JobState
from server.worker import LOG_NAME, job_log, lock_job_folder, run_job

if TYPE_CHECKING:
    from server.core.config import Settings
    from server.store import Job, Store

log = logging.getLogger(__name__)

# What a task's records may ask of the orchestrator's Store (the JobRecords methods but get_job and finish:
# the task keeps its own view of the job, and its end is recorded once its files are back).
RELAYED = frozenset({"set_phase", "add_episode", "add_epoch", "add_event", "reset_progress"})
# Environment a job reads that a Ray worker does not inherit from the orchestrator.
FORWARDED_ENV = ("AMC_RAY_ADDRESS", "AMC_RAY_INSECURE")
MAX_PENDING_LOG = 1 << 20  # log text held for the relay at most; more is dropped (and says so)


# ------------------------------------------------------------------------------------------- inputs

@dataclass(frozen=True)
class JobInput:
    """A file or folder of the orchestrator's that a job reads: where the config names it, and where."""

    key: str  # `data`, `weights`, `references[i]`
    path: Path

    def node_path(self, root: PurePosixPath) -> PurePosixPath:
        return root / "inputs" / self.key.replace("[", "-").replace("]", "") / self.path.name


def job_inputs(config: SearchConfig, plan: FrontierPlan | None) -> list[JobInput]:
    """The files and folders a job reads besides the zoo: its data set (`cifar10:PATH`, `imagefolder:PATH`),
    its uploaded weights and a frontier's reference models."""
    found = []
    kind, sep, arg = config.data.partition(":")
    if sep and arg:
        found.append(JobInput("data", Path(arg)))
    if config.weights:
        found.append(JobInput("weights", Path(config.weights)))
    for i, ref in enumerate(plan.references if plan is not None else ()):
        found.append(JobInput(f"references[{i}]", Path(ref.path)))
    return found


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())


def check_inputs(inputs: list[JobInput], limit: int) -> int:
    """Bytes the inputs take; ConfigError (naming the job spec's field) when one is missing or all of them
    together are over `limit` (AMC_RAY_MAX_INPUT_MB)."""
    total = 0
    for item in inputs:
        if not item.path.exists():
            field = item.key.partition("[")[0]
            raise ConfigError(field, f"{item.path} does not exist on the orchestrator, so it cannot be sent to "
                                     "the node that runs the job")
        total += sum(p.stat().st_size for p in _files_under(item.path))
    if total > limit:
        keys = ", ".join(i.key for i in inputs)
        raise ConfigError(inputs[0].key.partition("[")[0],
                          f"the job's input files ({keys}) take {total / 2**20:.1f} MB, over the "
                          f"{limit / 2**20:.0f} MB a job on Ray may send to its node (AMC_RAY_MAX_INPUT_MB); raise "
                          "the limit, use a smaller data set, or run jobs in local worker processes "
                          "(without AMC_JOBS_ON_RAY)")
    return total


def pack_inputs(inputs: list[JobInput], root: PurePosixPath) -> dict[str, bytes]:
    """Each input's files by their path relative to the node's job root."""
    files: dict[str, bytes] = {}
    for item in inputs:
        base = item.node_path(root).relative_to(root)
        if item.path.is_file():
            files[str(base)] = item.path.read_bytes()
            continue
        for p in _files_under(item.path):
            files[str(base / p.relative_to(item.path).as_posix())] = p.read_bytes()
    return files


def node_config(config: dict[str, Any], plan: FrontierPlan | None, inputs: list[JobInput],
                root: PurePosixPath) -> tuple[dict[str, Any], FrontierPlan | None]:
    """The job's config and frontier plan with each input read from its copy under `root` on the node."""
    where = {i.key: str(i.node_path(root)) for i in inputs}
    out = dict(config)
    if "data" in where:
        out["data"] = f"{str(config['data']).partition(':')[0]}:{where['data']}"
    if "weights" in where:
        out["weights"] = where["weights"]
    if plan is not None:
        plan = dataclasses.replace(plan, references=tuple(
            dataclasses.replace(ref, path=where[f"references[{i}]"]) for i, ref in enumerate(plan.references)))
    return out, plan


def checkpoint_files(folder: Path) -> dict[str, bytes]:
    """A job folder's checkpoint files (every file in a `checkpoint/` folder, a frontier's targets' too)."""
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and "checkpoint" in p.relative_to(folder).parts[:-1]
            and not p.name.startswith(".")}


def result_files(folder: Path) -> dict[str, bytes]:
    """What a finished task sends back: every regular file of its job folder but the lock and temp files
    (links, such as a frontier's links to its reference uploads, stay behind)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_symlink() or not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        if rel.as_posix() == LOG_NAME:
            continue
        out[rel.as_posix()] = p.read_bytes()
    return out


def write_files(folder: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` (relative names) into `folder`, each atomically; a name that would leave the folder
    is refused."""
    base = folder.resolve()
    for name, data in files.items():
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"a job's file name {name!r} is not a relative path inside its folder")
        target = (base / rel).resolve()
        if not target.is_relative_to(base):
            raise ValueError(f"a job's file name {name!r} leads outside its folder")
        atomic_write(target, data)


# -------------------------------------------------------------------------------------------- relay

class JobRelay:
    """The mailbox between one job's Ray task and the orchestrator (kept in the `RelayHub` of the job's follower):
    records go up (`push`, `drain`), signals go down (`signal`, answered by every `push`)."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, ...]] = []
        self._signals: set[str] = set()

    def push(self, items: list[tuple[Any, ...]]) -> list[str]:
        self._items.extend(items)
        return sorted(self._signals)

    def drain(self) -> list[tuple[Any, ...]]:
        items, self._items = self._items, []
        return items

    def signal(self, what: str) -> None:
        self._signals.add(what)


class RelayHub:
    """The mailboxes of the job attempts a process follows on Ray, in one actor that process owns, on its
    node (a job's follower, `server/ray_follower.py`, follows one attempt); each attempt has its own key,
    opened with the hub when its task is submitted and closed when the follower stops following it. A push to a closed
    or unknown key fails, so a task given up on (restarted elsewhere, or after the orchestrator's restart)
    stops as orphaned."""

    def __init__(self, *keys: str) -> None:
        self._boxes: dict[str, JobRelay] = {key: JobRelay() for key in keys}  # mailboxes open from the start

    def _box(self, key: str) -> JobRelay:
        box = self._boxes.get(key)
        if box is None:
            raise LookupError(f"no mailbox {key!r}: the orchestrator no longer follows this attempt of the job")
        return box

    def push(self, key: str, items: list[tuple[Any, ...]]) -> list[str]:
        return self._box(key).push(items)

    def drain(self, key: str) -> list[tuple[Any, ...]]:
        return self._box(key).drain()

    def signal(self, key: str, what: str) -> None:
        self._box(key).signal(what)

    def close(self, key: str) -> None:
        self._boxes.pop(key, None)


@dataclass
class JobSnapshot:
    """The task's own view of its job (what `server.worker` reads back: its state and phase)."""

    state: str = JobState.RUNNING.value
    phase: str = ""
    message: str = ""

    @property
    def job_state(self) -> JobState:
        return JobState(self.state)


class RelayRecords:
    """`server.worker.JobRecords` for a job that runs as a Ray task: every record goes through the job's
    relay, in order; the job's end is kept (`final`) until the task returns with its files. A relay that
    no longer answers means the orchestrator is gone: the job stops at its next episode (`orphaned`)."""

    def __init__(self, push: Callable[[list[tuple[Any, ...]]], list[str]], *, job_id: str,
                 cancelled: threading.Event, orphaned: threading.Event):
        self.push, self.job_id = push, job_id
        self.cancelled, self.orphaned = cancelled, orphaned
        self.view = JobSnapshot()
        self.final: tuple[JobState, dict[str, Any]] | None = None
        self._gone = threading.Event()  # the relay did not answer: nothing more is sent
        self._sending = threading.Lock()  # one push at a time, in order
        self._buffer = threading.Lock()  # the log lines waiting (never held across a push: see add_log)
        self._log: list[str] = []
        self._log_bytes = 0
        self._dropped = 0

    # -- what the worker code calls
    def get_job(self, job_id: str) -> JobSnapshot:
        return self.view

    def set_phase(self, job_id: str, phase: str, message: str) -> None:
        self.view.phase, self.view.message = phase, message
        self.send(("store", "set_phase", (phase, message), {}))

    def add_episode(self, job_id: str, number: int, record: dict[str, Any], *, total: int | None = None) -> bool:
        self.send(("store", "add_episode", (number, record), {"total": total}))
        return True

    def add_epoch(self, job_id: str, record: dict[str, Any]) -> None:
        self.send(("store", "add_epoch", (record,), {}))

    def add_event(self, job_id: str, kind: JobEventKind, message: str) -> None:
        self.send(("store", "add_event", (kind, message), {}))

    def reset_progress(self, job_id: str) -> None:
        self.send(("store", "reset_progress", (), {}))

    def finish(self, job_id: str, state: JobState, *, report: dict[str, Any] | None = None,
               error: str | None = None, message: str = "") -> JobSnapshot:
        if self.final is not None:
            raise InvalidTransition(job_id, self.final[0], state)
        self.final = (state, {"report": report, "error": error, "message": message})
        self.view.state = state.value
        return self.view

    # -- the channel
    def add_log(self, line: str) -> None:
        # Any thread may log at any time, Ray's own threads too while a push waits for the relay: this
        # only ever waits for another line to be added or taken.
        with self._buffer:
            if self._log_bytes > MAX_PENDING_LOG:
                self._dropped += 1
                return
            self._log.append(line)
            self._log_bytes += len(line)

    def send(self, *items: tuple[Any, ...]) -> None:
        """Push the pending log lines and `items` to the relay; note the signals it answers with."""
        failure: Exception | None = None
        signals: list[str] = []
        with self._sending:
            if self._gone.is_set():
                return
            with self._buffer:
                lines, dropped = self._log, self._dropped
                self._log, self._log_bytes, self._dropped = [], 0, 0
            batch: list[tuple[Any, ...]] = []
            if lines:
                text = "\n".join(lines) + "\n"
                if dropped:
                    text += f"({dropped} log line(s) dropped: the orchestrator did not keep up)\n"
                batch.append(("log", text))
            batch.extend(items)
            try:
                signals = self.push(batch)
            except Exception as exc:  # the orchestrator (and its relay) is gone
                failure = exc
                self._gone.set()
                self.orphaned.set()
        if failure is not None:
            log.warning("the orchestrator no longer answers (%s: %s); stopping at the next episode",
                        type(failure).__name__, failure)
        if "cancel" in signals:
            self.cancelled.set()
        if "stop" in signals:
            self.orphaned.set()


class _RelayLogHandler(logging.Handler):
    def __init__(self, records: RelayRecords):
        super().__init__(level=logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.add_log(self.format(record))
        except Exception:  # a log line must never fail the job
            self.handleError(record)


# ---------------------------------------------------------------------------------------- the task

def node_root(work_dir: str, job_id: str) -> PurePosixPath:
    """The job's folder on whichever node runs it (the same path on every node)."""
    return PurePosixPath(work_dir) / f"amc-ray-{job_id}"


def run_job_on_node(job_id: str, relay: Any, inputs: dict[str, bytes], checkpoint: dict[str, bytes],
                    options: dict[str, Any]) -> dict[str, Any]:
    """The Ray task of one job (`run_in_node_folder`, talking to the orchestrator through its mailbox
    `options["relay_key"]` in `relay`, the orchestrator's RelayHub)."""
    import ray

    key = options["relay_key"]

    def push(batch: list[tuple[Any, ...]]) -> list[str]:
        signals: list[str] = ray.get(relay.push.remote(key, batch), timeout=60)
        return signals

    node_id = str(ray.get_runtime_context().get_node_id())
    push([("node", node_id)])  # which node runs it: the orchestrator watches that node's membership
    node = f"{socket.gethostname()} ({node_id[:12]})"
    return run_in_node_folder(job_id, push, inputs, checkpoint, options, node=node)


def run_in_node_folder(job_id: str, push: Callable[[list[tuple[Any, ...]]], list[str]], inputs: dict[str, bytes],
                       checkpoint: dict[str, bytes], options: dict[str, Any], *, node: str) -> dict[str, Any]:
    """Unpack a job's inputs (and its checkpoint, when it resumes) under `<work dir>/amc-ray-<job id>/`, run
    it with `server.worker.run_job`, its records and log lines going up through `push` (which answers with
    the signals waiting for the job), and return its files and its end ({"files", "final", "node"}); the
    node's folder is removed afterwards."""
    root = Path(str(node_root(options["work_dir"], job_id)))
    saved_env = {k: os.environ.get(k) for k in FORWARDED_ENV}
    old_umask = os.umask(0o077)  # the job's files are the operator's alone, on every node
    cancelled, orphaned, done = threading.Event(), threading.Event(), threading.Event()
    records = RelayRecords(push, job_id=job_id, cancelled=cancelled, orphaned=orphaned)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = lock_job_folder(root)  # an earlier attempt of this job still running on this node finishes first
    try:
        for stale in ("job", "inputs"):  # what an attempt killed on this node left
            shutil.rmtree(root / stale, ignore_errors=True)
        out = root / "job"
        out.mkdir(mode=0o700)
        write_files(root, inputs)
        write_files(out, checkpoint)
        for name in FORWARDED_ENV:
            if name in options["env"]:
                os.environ[name] = options["env"][name]
            else:
                os.environ.pop(name, None)

        def watch() -> None:
            # Signals (cancel, stop) and log lines every second; the checkpoint when it changed and its interval passed.
            sent: dict[str, int] = {}
            last = time.monotonic()
            while not done.wait(1.0):
                records.send()
                if time.monotonic() - last >= options["checkpoint_every_s"]:
                    last = time.monotonic()
                    changed = {n: b for n, b in checkpoint_files(out).items() if sent.get(n) != hash(b)}
                    if changed:
                        records.send(("files", changed))
                        sent.update({n: hash(b) for n, b in changed.items()})

        watcher = threading.Thread(target=watch, name=f"amc-relay-{job_id[:8]}", daemon=True)
        watcher.start()
        with job_log(_RelayLogHandler(records)):
            log.info("job %s runs on node %s in %s (process %d)", job_id, node, out, os.getpid())
            try:
                run_job(job_id=job_id, store=records, out=out, config=options["config"], frontier=options["frontier"],
                        resume=options["resume"], search_module=options["search_module"],
                        threads=options["threads"], max_job_bytes=options["max_job_bytes"],
                        device_wait_s=options["device_wait_s"], cancelled=cancelled, orphaned=orphaned)
            finally:
                done.set()
                watcher.join(30)
        records.send()  # the last log lines
        final = None
        if records.final is not None:
            state, values = records.final
            final = {"state": state.value, **values}
        return {"files": result_files(out), "final": final, "node": node}
    finally:
        done.set()
        os.umask(old_umask)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(root / "job", ignore_errors=True)
        shutil.rmtree(root / "inputs", ignore_errors=True)
        lock.close()
        (root / ".lock").unlink(missing_ok=True)
        try:
            root.rmdir()
        except OSError:  # another attempt of the job took the folder meanwhile
            pass


def apply_records(store: Store, job_id: str, folder: Path, items: list[tuple[Any, ...]]) -> None:
    """Write what a job's task sent up into the orchestrator's Store and job folder, as a local worker
    process writes it: store records, log lines (appended to job.log), checkpoint files. A record that
    cannot be written is logged and skipped; the others still are."""
    for item in items:
        try:
            kind = item[0]
            if kind == "store":
                _, method, args, kwargs = item
                if method not in RELAYED:
                    raise ValueError(f"the task asked for {method!r}, which it may not")
                getattr(store, method)(job_id, *args, **kwargs)
            elif kind == "log":
                with open(folder / LOG_NAME, "a", encoding="utf-8") as fh:
                    fh.write(item[1])
            elif kind == "files":
                write_files(folder, item[1])
            else:
                raise ValueError(f"unknown record kind {kind!r}")
        except Exception:
            log.exception("job %s: could not record %s from its Ray task", job_id, item[:2])


def record_result(store: Store, job_id: str, folder: Path, result: dict[str, Any]) -> None:
    """A task's return: its files into the job folder first, then the end it reached (none when it paused
    for a server shutdown: the job stays running, to resume on the next start)."""
    write_files(folder, result["files"])
    final = dict(result["final"] or {})
    if not final:
        return
    state = JobState(final.pop("state"))
    try:
        store.finish(job_id, state, **final)
    except InvalidTransition as again:
        log.warning("could not record the end of job %s: %s", job_id, again)


# ------------------------------------------------------------------------------- the orchestrator

class RayLifeline:
    """A job follower's lifeline to its task (the server's pipe passed on): `send("cancel")` cancels the
    job, `close()` (the server stopping or gone) asks it to stop at its next episode without recording an end."""

    def __init__(self, hub: Any, key: str):
        self.hub, self.key = hub, key
        self.closed = False

    def send(self, what: str) -> None:
        if self.closed:
            raise ValueError("the lifeline is closed")
        self.hub.signal.remote(self.key, what)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.hub.signal.remote(self.key, "stop")
        except Exception:  # the hub is gone with this process's Ray driver
            pass


class RayJob:
    """One job running as a Ray task, seen from the process that drives it (the job's follower,
    `server/ray_follower.py`). A thread follows it: it drains the job's relay into the Store and the job
    folder, and when the task returns writes its files and then records the end it reached."""

    def __init__(self, *, job: Job, folder: Path, plan: FrontierPlan | None, settings: Settings, store: Store,
                 device_wait_s: float | None):
        self.job_id, self.folder, self.settings, self.store = job.id, folder, settings, store
        self.exitcode: int | None = None
        self.ended = ""  # how the task ended without a result, for the job's record
        self.node = ""
        self.node_id = ""  # the node that runs the task, once it said so
        config = SearchConfig.from_dict(job.config)
        inputs = job_inputs(config, plan)
        check_inputs(inputs, settings.ray_max_input_bytes)
        root = node_root(settings.ray_work_dir, job.id)
        node_cfg, node_plan = node_config(job.config, plan, inputs, root)
        self._inputs = pack_inputs(inputs, root)
        self._checkpoint = checkpoint_files(folder) if job.resume else {}
        env = {"AMC_RAY_ADDRESS": settings.ray_address or ""}
        if settings.ray_insecure:
            env["AMC_RAY_INSECURE"] = "1"
        self._options = {"work_dir": settings.ray_work_dir, "config": node_cfg, "frontier": node_plan,
                         "resume": job.resume, "search_module": settings.search_module,
                         "threads": settings.worker_threads, "max_job_bytes": settings.max_job_bytes,
                         "device_wait_s": device_wait_s, "checkpoint_every_s": settings.ray_checkpoint_every_s,
                         "env": env}
        self.hub: Any = None
        self.key = f"{job.id}/{uuid.uuid4().hex[:12]}"  # this attempt's mailbox in the hub
        self._options["relay_key"] = self.key
        self.ref: Any = None
        self._thread = threading.Thread(target=self._follow, name=f"amc-ray-job-{job.id[:8]}", daemon=True)

    def start(self) -> RayLifeline:
        """Submit the task (joining the cluster first, once per process); the lifeline to it."""
        from profiler.farm.cluster import ray_init

        assert self.settings.ray_address is not None
        ray_init(self.settings.ray_address, insecure=self.settings.ray_insecure)
        import ray

        self.hub = open_mailbox(self.key)
        try:
            # One task name for every job: the Ray driver keeps something for each distinct name for good
            # (about 1.5 KB a name in a probe; docs/BENCHMARKS.md "Orchestrator memory over many jobs").
            task = _remotes()[1].options(num_cpus=self.settings.job_cpus, max_retries=0, name=TASK_NAME)
            # (inputs and checkpoint as top-level arguments: Ray hands the task the bytes, not references)
            self.ref = task.remote(self.job_id, self.hub, ray.put(self._inputs), ray.put(self._checkpoint),
                                   self._options)
        except Exception:
            self._close_mailbox()
            raise
        self._inputs, self._checkpoint = {}, {}
        self._thread.start()
        log.info("job %s submitted to the Ray cluster at %s (%g CPU)", self.job_id, self.settings.ray_address,
                 self.settings.job_cpus)
        return RayLifeline(self.hub, self.key)

    # -- what the follower calls
    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        """End the task now (its worker process is killed); the job's end is then the service's to record."""
        import ray

        try:
            ray.cancel(self.ref, force=True)
        except Exception as exc:  # already finished
            log.debug("job %s: cancelling its task: %s", self.job_id, exc)

    # -- the following thread
    def _follow(self) -> None:
        import ray

        try:
            checked = time.monotonic()
            while True:
                ready, _ = ray.wait([self.ref], timeout=FOLLOW_S)
                self._apply(self._drain())
                if ready:
                    break
                if self.node_id and time.monotonic() - checked >= NODE_CHECK_S:
                    checked = time.monotonic()
                    gone = _node_gone(self.node_id)
                    if gone:
                        # A node cut off from the cluster is declared dead by the head, but the task's own
                        # owner is told only by that node's raylet, which it can no longer reach: the task
                        # would look alive forever. It is given up here and the job restarted elsewhere.
                        self.terminate()
                        self.ended = f"the job's Ray task failed (its node {gone})"
                        self.exitcode = 1
                        log.warning("job %s: %s", self.job_id, self.ended)
                        return
            try:
                result = ray.get(self.ref)
            except Exception as exc:
                self._apply(self._drain())
                self.ended = f"the job's Ray task failed ({_describe(exc)})"
                self.exitcode = 1
                return
            self._apply(self._drain())
            self.node = result["node"]
            record_result(self.store, self.job_id, self.folder, result)
            self.exitcode = 0
        except Exception as exc:
            log.exception("job %s: following its Ray task failed", self.job_id)
            self.ended = f"the orchestrator lost the job's Ray task ({type(exc).__name__}: {exc})"
            self.exitcode = 1
        finally:
            self._close_mailbox()

    def _close_mailbox(self) -> None:
        try:
            self.hub.close.remote(self.key)
        except Exception:  # the hub is gone: so is the mailbox
            pass

    def _drain(self) -> list[tuple[Any, ...]]:
        import ray

        try:
            items: list[tuple[Any, ...]] = ray.get(self.hub.drain.remote(self.key), timeout=60)
            return items
        except Exception as exc:
            log.warning("job %s: its relay did not answer (%s)", self.job_id, exc)
            return []

    def _apply(self, items: list[tuple[Any, ...]]) -> None:
        for item in items:
            if item and item[0] == "node" and isinstance(item[1], str) and not self.node_id:
                self.node_id = item[1]
        apply_records(self.store, self.job_id, self.folder, [i for i in items if not i or i[0] != "node"])


@functools.cache
def _remotes() -> tuple[Any, Any]:
    """The relay hub's actor class and the job's remote function, made once per process. Each `ray.remote(...)`
    makes a new class or function with an id of its own, which a Ray driver keeps for good (when the
    orchestrator drove every job, made per job they were about 27 KB of the 47 KB it grew by per job:
    docs/BENCHMARKS.md, "Orchestrator memory over many jobs"). The task asks for a fresh worker process per job (max_calls=1, which only the
    decorator takes): nothing a search leaves in its process (torch threads, memory) reaches the next job
    on that node."""
    import ray

    return ray.remote(RelayHub), ray.remote(max_calls=1)(run_job_on_node)


def open_mailbox(key: str) -> Any:
    """A new RelayHub with mailbox `key` open, pinned to this node and owned by this process's Ray driver
    (a job's follower: the hub ends with it); its handle. The mailbox is opened by the hub's constructor, so
    nothing waits here for the actor to start: any call on it (the task's first push included) runs once
    it has."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return _remotes()[0].options(num_cpus=0, max_restarts=0, scheduling_strategy=here).remote(key)


FOLLOW_S = 0.5  # how often a job's follower drains its mailbox (and waits on its task)
TASK_NAME = "amc-job"  # every job's task (its job id is in its arguments and its log's first line)

# How often a job's follower asks the cluster whether the node running the job is still a member.
NODE_CHECK_S = 2.0


def _node_gone(node_id: str) -> str:
    """'' while the node is a live member of the cluster; else what became of it (for the job's events)."""
    import ray

    try:
        nodes = ray.nodes()
    except Exception as exc:  # the head itself does not answer: nothing to conclude about the node
        log.debug("could not list the cluster's nodes: %s", exc)
        return ""
    node = next((n for n in nodes if n.get("NodeID") == node_id), None)
    if node is None:
        return f"{node_id[:12]} is no longer in the cluster"
    if node.get("Alive", True):
        return ""
    address = node.get("NodeManagerAddress", "")
    return f"{node_id[:12]} at {address} was declared dead by the cluster: cut off or crashed"


def _describe(exc: BaseException) -> str:
    """A Ray error in one line: its type and the first line of its message (a node that died, a worker
    that crashed, a task cancelled)."""
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(exc).__name__}: {first[:500]}"
