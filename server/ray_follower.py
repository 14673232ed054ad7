"""Each job on Ray driven from a process of its own: the job's follower.

The job service starts one spawned process per job on Ray, as it starts a worker process per local job.
That process joins the cluster as a Ray driver, submits the job's task and follows it
(`server.ray_jobs.RayJob`: the task's relay into the store and the job folder, its node's membership, its
result), and ends with the job. The orchestrator itself never drives a job's task, for two reasons:

- A Ray driver's core keeps memory for as long as it drives tasks: with every job driven from the
  orchestrator it grew about 0.33 MB a minute while jobs ran, its Python heap flat (docs/BENCHMARKS.md,
  "Orchestrator memory over many jobs"). In a process per job that memory ends with the job.
- A fatal error in Ray's C++ core aborts the process it is in. Here that ends one follower, which the
  service settles like a crashed worker (the job restarts from its checkpoint), not the API server.

The cost is a process per running job on the orchestrator's host (a Python process with Ray's driver, and
the job's relay hub actor beside it), and a few seconds to join the cluster when a job starts.

The lifeline is a worker process's (`server.worker.watch_parent`): "cancel" cancels the task; EOF (the
server stopping, or killed) asks the task to stop at its next episode, and the checkpoint it sends back
is what the next start resumes from. A follower terminated by the service ends its driver, and Ray then
ends the task it owned.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compressor.errors import ConfigError
from server.frontier import FrontierPlan
from server.store import JobState
from server.worker import LOG_NAME, job_log, lock_job_folder, open_job_store, watch_parent

if TYPE_CHECKING:
    from server.core.config import Settings

log = logging.getLogger(__name__)


class RayFollower:
    """The job service's handle on a job's follower process: a `multiprocessing.Process`'s names, and
    `ended`, what the follower said about how the task ended without a result."""

    def __init__(self, process: Any, outcome: Any):
        self.process, self._outcome = process, outcome
        self._ended: str | None = None

    @property
    def pid(self) -> int | None:
        pid: int | None = self.process.pid
        return pid

    @property
    def exitcode(self) -> int | None:
        code: int | None = self.process.exitcode
        return code

    def is_alive(self) -> bool:
        return bool(self.process.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def terminate(self) -> None:
        self.process.terminate()

    def kill(self) -> None:
        self.process.kill()

    @property
    def ended(self) -> str:
        """'' while it runs, or when it ended without saying (then its exit code tells)."""
        if self._ended is None and self.process.exitcode is not None:
            self._ended = ""
            try:
                if self._outcome.poll(0):
                    self._ended = str(self._outcome.recv())
            except (EOFError, OSError):
                pass
            self._outcome.close()
        return self._ended or ""


def start_follower(ctx: Any, *, job_id: str, database_url: str, folder: Path, settings: Settings,
                   plan: FrontierPlan | None, device_wait_s: float | None) -> tuple[RayFollower, Any]:
    """Spawn job `job_id`'s follower; its handle and the write end of its lifeline."""
    lifeline_read, lifeline_write = ctx.Pipe(duplex=False)
    outcome_read, outcome_write = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=follow_job_process, name=f"amc-ray-job-{job_id[:8]}", daemon=False,
                       kwargs=dict(job_id=job_id, database_url=database_url, folder=str(folder), settings=settings,
                                   plan=plan, device_wait_s=device_wait_s, lifeline=lifeline_read,
                                   outcome=outcome_write))
    try:
        proc.start()
    except Exception:
        lifeline_write.close()
        outcome_read.close()
        raise
    finally:
        lifeline_read.close()  # only the child holds these ends
        outcome_write.close()
    return RayFollower(proc, outcome_read), lifeline_write


def follow_job_process(*, job_id: str, database_url: str, folder: str, settings: Settings,
                       plan: FrontierPlan | None, device_wait_s: float | None, lifeline: Any, outcome: Any) -> None:
    """Entry point of a job's follower (spawn): submit the job's task and follow it to its end. Its exit
    code is 0 when the task came back with a result (recorded); otherwise 1, and `outcome` carries why."""
    from server.ray_jobs import RayJob

    os.umask(0o077)  # the job's files are the operator's alone
    out = Path(folder)
    store = open_job_store(database_url, job_id)
    lock = lock_job_folder(out)  # a follower orphaned by a killed server finishes first
    done = threading.Event()
    code, ended = 1, ""
    try:
        with job_log(logging.FileHandler(out / LOG_NAME)):  # its own lines go to the job's log
            job = store.get_job(job_id)
            try:
                task = RayJob(job=job, folder=out, plan=plan, settings=settings, store=store,
                              device_wait_s=device_wait_s)
            except (ConfigError, OSError) as exc:  # its inputs: checked at submit; only a file lost since gets here
                store.finish(job_id, JobState.FAILED, error=f"{type(exc).__name__}: {exc}")
                code = 0
                return
            try:
                relay = task.start()
            except Exception as exc:
                log.exception("could not start job %s on the Ray cluster", job_id)
                store.finish(job_id, JobState.FAILED,
                             error=f"could not start the job on the Ray cluster at {settings.ray_address} "
                                   f"({type(exc).__name__}: {exc}); POST /jobs/{job_id}/resume once it answers")
                code = 0
                return
            log.info("job %s: its Ray task is followed from process %d", job_id, os.getpid())
            watch_parent(lifeline, on_cancel=lambda: relay.send("cancel"), on_gone=relay.close, done=done)
            task.join()
            code, ended = (0 if task.exitcode == 0 else 1), task.ended
    except Exception as exc:
        log.exception("job %s: its follower failed", job_id)
        ended = f"the job's follower failed ({type(exc).__name__}: {exc})"
    finally:
        done.set()
        try:
            outcome.send(ended)
        except (OSError, ValueError):
            pass
        outcome.close()
        store.close()
        lock.close()
        if code:
            os._exit(code)  # (multiprocessing's own exit code for a return is 0)
