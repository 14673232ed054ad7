"""Processes a test started, each in a session of its own (`setsid`), found and ended by session id: the
Ray clusters of tests/test_farm_ray.py and tests/test_ray_jobs.py, and the test bed of tests/netbed.py.
Only the sessions a test started are touched; every wait has a deadline."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path


def alive(pid: int) -> bool:
    """Running, not a zombie: a child of this test that has ended stays in /proc until it is reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def session_pids(sid: int) -> list[int]:
    """The live processes of session `sid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getsid(int(entry)) == sid and alive(int(entry)):
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def end_sessions(sids: Sequence[int], *, also: Callable[[], Iterable[int]] = tuple, grace_s: float = 5.0) -> None:
    """End every process of the sessions `sids`, and those `also()` names (the test's own), TERM then KILL."""
    def left() -> list[int]:
        return sorted({p for sid in sids for p in session_pids(sid)} | set(also()))

    for sig, grace in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        for pid in left():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while left() and time.monotonic() < deadline:
            time.sleep(0.2)


def new_session() -> None:
    """A `preexec_fn`: the child leads a session of its own. Ray's raylet aborts when its agents take over 15 s
    to start: on a machine busy with other work at a higher priority, AMC_TEST_RAY_NICE gives it a fair share."""
    if os.environ.get("AMC_TEST_RAY_NICE"):
        os.setpriority(os.PRIO_PROCESS, 0, int(os.environ["AMC_TEST_RAY_NICE"]))
    os.setsid()
