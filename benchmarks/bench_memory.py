"""Memory of the orchestrator over many small jobs, without faults: does its RSS keep growing (issue 23's
soak saw +0.4-0.5 MB/min in each lifetime's second half)?

The orchestrator runs as in the soak (benchmarks/bench_soak.py): `amc serve`'s app in the `orch` namespace
of the multi-host test bed (tests/netbed.py), its jobs as Ray tasks on the device hosts' Ray nodes (1 CPU
each; no phones: the jobs measure on `local`), its store on a real PostgreSQL server (tests/pg.py). The
soak's clients (`bench_soak --client`) submit small jobs and poll them for `--minutes`; every `--sample-s`
the orchestrator's RSS, anonymous memory, threads and open files are read from /proc. At the end glibc is
asked to give back the memory it holds free (`malloc_trim(0)` called through gdb), which tells memory
the process still uses from memory it freed and the allocator kept.

`--variant` runs the same again with one part changed (after the baseline, on the same bed and database
server; each run with a fresh data folder and database): `jobs-in-processes` (jobs in spawned worker
processes: no Ray driver work in the orchestrator), `sqlite` (the store on SQLite instead of PostgreSQL),
`malloc-arena-max-2` (MALLOC_ARENA_MAX=2 for the orchestrator), `tracemalloc` (Python's allocations traced:
which source lines' allocations grew, against the RSS's growth). The orchestrator's child processes (each
job's follower, which drives its Ray task: server/ray_follower.py; or its worker process) are read too:
what they hold while jobs run is the cost of keeping the orchestrator itself off Ray's driver.

Everything the bed starts runs at `--nice` (default 10): the machine is shared. Needs root, `ip netns`, Ray
(the farm extra) and PostgreSQL's server binaries, as the soak.

Run: `.venv/bin/python -m benchmarks.bench_memory [--minutes 8] [--clients 3] [--variant sqlite ...]`
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.bench_soak import _slope_mb_per_min
from benchmarks.progress import log

REPO = Path(__file__).resolve().parents[1]

FACTORY = "server.main:create_app"
# What each variant changes: the orchestrator's environment (None: the baseline's value is dropped) and the
# app's factory.
VARIANTS: dict[str, tuple[dict[str, str | None], str]] = {
    "baseline": ({}, FACTORY),
    "jobs-in-processes": ({"AMC_JOBS_ON_RAY": "0"}, FACTORY),
    "sqlite": ({"AMC_DATABASE_URL": None}, FACTORY),
    "malloc-arena-max-2": ({"MALLOC_ARENA_MAX": "2"}, FACTORY),
    "tracemalloc": ({}, "benchmarks.bench_memory:app_with_tracemalloc"),
}
TRACE_NAME = "tracemalloc.txt"  # in the orchestrator's data folder (the `tracemalloc` variant)


def app_with_tracemalloc() -> Any:
    """The orchestrator's app with Python's allocations traced (the `tracemalloc` variant): after a 2-minute
    warm-up a first snapshot, then every minute the Python memory traced, and the source lines whose
    allocations grew most since that snapshot, written to `<AMC_DATA_DIR>/tracemalloc.txt`. What the RSS
    grows by beyond the traced growth is memory Python does not allocate (Ray's C++ core, gRPC)."""
    import threading
    import tracemalloc

    from server.main import create_app

    tracemalloc.start(8)
    out = Path(os.environ["AMC_DATA_DIR"]) / TRACE_NAME

    def watch() -> None:
        time.sleep(120)
        base = tracemalloc.take_snapshot()
        base_mb = tracemalloc.get_traced_memory()[0] / 2**20
        t0 = time.monotonic()
        while True:
            time.sleep(60)
            snap = tracemalloc.take_snapshot()
            now_mb = tracemalloc.get_traced_memory()[0] / 2**20
            stats = snap.compare_to(base, "traceback")[:12]
            lines = [f"{(time.monotonic() - t0) / 60:.1f} min after the first snapshot: Python traced "
                     f"{base_mb:.1f} -> {now_mb:.1f} MB ({now_mb - base_mb:+.2f})"]
            for stat in stats:
                lines.append(f"  {stat.size_diff / 1024:+.1f} KB in {stat.count_diff:+d} blocks:")
                lines += [f"      {frame.filename}:{frame.lineno}" for frame in stat.traceback[-4:]]
            out.write_text("\n".join(lines) + "\n")

    threading.Thread(target=watch, name="amc-tracemalloc", daemon=True).start()
    return create_app()


@dataclass
class Sample:
    t: float  # seconds since the clients started
    rss: float  # MB
    anon: float  # MB
    threads: int
    fds: int
    children: int = 0  # the orchestrator's child processes (jobs' followers or workers)
    children_rss: float = 0.0  # MB, all of them together


@dataclass
class Run:
    variant: str
    samples: list[Sample] = field(default_factory=list)
    jobs: list[dict] = field(default_factory=list)
    trimmed: float | None = None  # RSS (MB) after malloc_trim(0)
    error: str = ""
    traced: str = ""  # the `tracemalloc` variant's last report


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "Threads"):
                out[key] = int(value.split()[0])
    except OSError:
        return {}
    return out


def sample(pid: int, t: float) -> Sample | None:
    status = _status(pid)
    if "VmRSS" not in status:
        return None
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    kids = [_status(c).get("VmRSS", 0) for c in _children(pid)]
    return Sample(t, status["VmRSS"] / 1024, status.get("RssAnon", 0) / 1024, status.get("Threads", 0), fds,
                  len(kids), sum(kids) / 1024)


def _children(pid: int) -> list[int]:
    """Process ids of `pid`'s children (every thread's)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def malloc_trim(pid: int) -> float | None:
    """RSS (MB) after glibc's malloc_trim(0) in process `pid` (through gdb); None when gdb could not do it."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return None
    out = subprocess.run([gdb, "-p", str(pid), "-batch", "-nx", "-ex", "call (int) malloc_trim(0)"],
                         capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0 or "$1 =" not in out.stdout:
        log(f"memory: malloc_trim through gdb failed: {(out.stderr or out.stdout)[-500:]}")
        return None
    time.sleep(1.0)
    status = _status(pid)
    return status["VmRSS"] / 1024 if "VmRSS" in status else None


def run_variant(bed: Any, pg: Any, name: str, args: argparse.Namespace) -> Run:
    run = Run(name)
    token = secrets.token_hex(16)
    data = bed.root / f"server-data-{name}"
    settings: dict[str, str | None] = {
        "AMC_DATA_DIR": str(data), "AMC_RAY_CHECKPOINT_EVERY_S": "1", "AMC_MAX_WORKER_RESTARTS": "5",
        "AMC_MAX_WORKERS": str(args.workers)}
    if pg is not None:
        name_db = pg.create_database().rsplit("/", 1)[1]
        settings["AMC_DATABASE_URL"] = (f"postgresql+psycopg://amc:{pg.password}@/{name_db}?host={pg.socket_dir}"
                                        f"&port={pg.port}")
    changes, factory = VARIANTS[name]
    settings.update(changes)
    env_overrides = {k: v for k, v in settings.items() if v is not None}
    dropped = [k for k, v in settings.items() if v is None]
    saved = {k: os.environ.pop(k) for k in dropped if k in os.environ}
    try:
        url = bed.server(token, factory=factory, **env_overrides)
    finally:
        os.environ.update(saved)
    pid = bed.sessions["server"]
    log(f"memory [{name}]: orchestrator pid {pid} at {url}; clients for {args.minutes:g} min")
    try:
        client = bed.start(f"client-{name}", "orch", sys.executable, "-m", "benchmarks.bench_soak", "--client",
                           "--url", url, "--minutes", str(args.minutes), "--clients", str(args.clients),
                           "--episodes", str(args.episodes),
                           env={**bed.env, "AMC_API_TOKEN": token, "PYTHONPATH": str(REPO)})
        t0 = time.monotonic()
        next_note = t0 + 60
        while client.poll() is None:
            s = sample(pid, time.monotonic() - t0)
            if s is None:
                run.error = f"the orchestrator exited: {bed.log('server')[-2000:]}"
                break
            run.samples.append(s)
            if time.monotonic() >= next_note:
                next_note += 60
                log(f"memory [{name}]: {s.t / 60:.1f} min: RSS {s.rss:.1f} MB (anon {s.anon:.1f}), "
                    f"{s.threads} threads, {s.fds} fds; {s.children} job process(es), {s.children_rss:.0f} MB")
            time.sleep(args.sample_s)
        lines = [x for x in bed.log(f"client-{name}").splitlines() if x.startswith('{"summary"')]
        if lines:
            run.jobs = json.loads(lines[-1])["summary"]["jobs"]
        elif not run.error:
            run.error = f"the clients ended without a summary: {bed.log(f'client-{name}')[-2000:]}"
        if not run.error and args.trim:
            run.trimmed = malloc_trim(pid)
        if (data / TRACE_NAME).is_file():
            run.traced = (data / TRACE_NAME).read_text()
    finally:
        if "server" in bed.sessions:
            bed.stop("server", signal.SIGTERM)
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=8.0, help="how long clients submit jobs, per run (default 8)")
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--episodes", type=int, default=6, help="episodes of each small job")
    ap.add_argument("--workers", type=int, default=2, help="AMC_MAX_WORKERS (jobs at once; one Ray node each)")
    ap.add_argument("--sample-s", type=float, default=5.0)
    ap.add_argument("--variant", action="append", default=[], choices=[v for v in VARIANTS if v != "baseline"],
                    help="also run with this part changed (repeatable)")
    ap.add_argument("--no-baseline", action="store_true", help="run only the --variant runs")
    ap.add_argument("--no-trim", dest="trim", action="store_false", help="skip malloc_trim through gdb at the end")
    ap.add_argument("--nice", type=int, default=10, help="niceness of everything started (the machine is shared)")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(REPO / "tests"))
    from netbed import NetBed, skip_reason
    from pg import PostgresServer, find_bin_dir

    reason = skip_reason() or (None if find_bin_dir() else "PostgreSQL's server binaries are absent")
    if reason:
        log(f"bench_memory: cannot run here: {reason}")
        return 1
    names = ([] if args.no_baseline else ["baseline"]) + args.variant
    if not names:
        log("bench_memory: nothing to run (--no-baseline without --variant)")
        return 2
    os.nice(args.nice)  # inherited by the bed's processes, the database server and the jobs
    runs: list[Run] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amc-memory-") as tmp:
        bed = NetBed(root=Path(tmp))
        pg = PostgresServer(find_bin_dir()).start()  # type: ignore[arg-type]
        try:
            from profiler.devices.keys import ensure_adb_key

            for sub in ("cfg", "cache", "tmp"):
                (bed.root / sub).mkdir(parents=True, exist_ok=True)
            ensure_adb_key(bed.key)
            log("memory: bringing the test bed's network and Ray nodes up (no phones: the jobs use `local`)")
            bed.make_network()
            bed.ray_node("orch")
            for host in bed.hosts[:args.workers]:
                bed.ray_node(host)
            for name in names:
                runs.append(run_variant(bed, pg, name, args))
        finally:
            if "server" in bed.sessions:
                bed.stop("server", signal.SIGTERM)
            bed.down()
            pg.stop()
    print(render(runs, args, (time.monotonic() - started) / 60))
    return 0 if all(not r.error for r in runs) else 1


def _half(samples: list[Sample]) -> list[Sample]:
    return samples[len(samples) // 2:]


def _children_summary(samples: list[Sample]) -> str:
    """The orchestrator's job processes over a run: how many on average, their RSS together (mean, max)."""
    busy = [s for s in samples if s.children]
    if not busy:
        return "none"
    count = sum(s.children for s in samples) / len(samples)
    return (f"{count:.1f}, {sum(s.children_rss for s in busy) / len(busy):.0f} / "
            f"{max(s.children_rss for s in busy):.0f}")


def render(runs: list[Run], args: argparse.Namespace, total_min: float) -> str:
    lines = [
        f"The orchestrator as in the soak (the test bed's `orch` namespace, jobs as Ray tasks on {args.workers} "
        f"Ray node(s) of 1 CPU, the store on PostgreSQL) without faults: {args.clients} clients submit small "
        f"jobs (demo-cnn on digits, {args.episodes} episodes) for {args.minutes:g} min per run; the "
        f"orchestrator's memory read every {args.sample_s:g} s. Slopes are least-squares fits over each run's "
        f"second half (past the warm-up); KB per job = that slope over the jobs finished per minute. After the "
        f"clients, `malloc_trim(0)` (through gdb) shows what glibc held free. Total {total_min:.0f} min.", "",
        "| run | jobs (succeeded) | RSS start → end MB | RSS trend, 2nd half MB/min | KB per job | anon trend MB/min "
        "| threads start → end | fds start → end | RSS after malloc_trim MB | job processes: mean count, RSS mean / "
        "max MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if not r.samples:
            lines.append(f"| {r.variant} | — | — | — | — | — | — | — | — | — |")
            continue
        half = _half(r.samples)
        rss = _slope_mb_per_min([(s.t, s.rss) for s in half])
        anon = _slope_mb_per_min([(s.t, s.anon) for s in half])
        minutes = max(r.samples[-1].t / 60, 1e-9)
        per_min = len(r.jobs) / minutes
        per_job = rss * 1024 / per_min if per_min else float("nan")
        ok = sum(j["state"] == "succeeded" for j in r.jobs)
        first, last = r.samples[0], r.samples[-1]
        trimmed = f"{r.trimmed:.1f}" if r.trimmed is not None else "—"
        lines.append(f"| {r.variant} | {len(r.jobs)} ({ok}) | {first.rss:.1f} → {last.rss:.1f} | {rss:+.3f} | "
                     f"{per_job:+.1f} | {anon:+.3f} | {first.threads} → {last.threads} | {first.fds} → {last.fds} "
                     f"| {trimmed} | {_children_summary(r.samples)} |")
    for r in runs:
        if r.traced:
            lines += ["", f"`{r.variant}`: Python's own allocations (tracemalloc), growth by traceback:", "",
                      "```", r.traced.rstrip(), "```"]
    errors = [f"{r.variant}: {r.error[:300]}" for r in runs if r.error]
    if errors:
        lines += ["", "Runs that did not finish: " + "; ".join(errors)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
