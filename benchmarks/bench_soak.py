"""Soak: the service on the multi-host test bed (tests/netbed.py) for a long run, many small jobs from
several clients while faults are injected on a schedule (issue 23).

The orchestrator (`amc serve`'s app, jobs as Ray tasks on the device hosts' nodes) runs in the bed's
`orch` namespace on a real PostgreSQL server (tests/pg.py; reached over its unix socket, which crosses
namespaces); the clients run in `orch` too (this module with `--client`), each submitting a small job,
polling it to its end, and again. Every `--fault-every-s` the next fault of the cycle is injected: a
device host's link cut for a while, a device host SIGKILLed, a phone emulator SIGKILLed, the orchestrator
SIGKILLed and started again, the database server restarted. Afterwards every job's episodes are read from
the database: a succeeded job must have each of its episodes exactly once (episodes lost: goal 0).
Reported: jobs submitted / succeeded / failed (with reasons), episodes lost, p50/p99 of `POST /jobs` and
`GET /jobs/{id}` (answered requests; refused connections while the orchestrator was down are counted
apart), and the orchestrator's memory (RSS) over each of its lifetimes.

Needs root and `ip netns` (as the bed), and PostgreSQL's server binaries.

Run: `.venv/bin/python -m benchmarks.bench_soak [--minutes 20] [--clients 4] [--fault-every-s 120]`
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.progress import log

REPO = Path(__file__).resolve().parents[1]
FINISHED = {"succeeded", "failed", "cancelled"}
FAULTS = ("link-cut", "device-host-killed", "phone-killed", "orchestrator-killed", "database-restarted")


# ----------------------------------------------------------------------------------------- the clients
def _timed(c: Any, method: str, path: str, lat: dict, key: str, **kwargs: Any) -> Any:
    """One request, its time kept under lat[key] when answered; None (counted as refused, after a pause)
    when the connection failed (the orchestrator down); an answer other than 2xx counted by its status."""
    import httpx

    t = time.perf_counter()
    try:
        r = c.request(method, path, **kwargs)
    except httpx.HTTPError:
        lat["refused"] += 1
        time.sleep(1.0)
        return None
    lat[key].append((time.perf_counter() - t) * 1000)
    if r.status_code >= 300:
        lat.setdefault("statuses", {})
        name = f"{method} {r.status_code}"
        lat["statuses"][name] = lat["statuses"].get(name, 0) + 1
    return r


def _client(url: str, token: str, index: int, until: float, episodes: int, out: list[dict], lat: dict) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    seed = index * 100_000
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        while time.monotonic() < until:
            seed += 1
            spec = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "random",
                    "episodes": episodes, "device": "local", "seed": seed}
            job_id = None
            while job_id is None and time.monotonic() < until:
                r = _timed(c, "POST", "/jobs", lat, "post", json=spec)
                if r is None:
                    continue
                if r.status_code == 201:
                    job_id = r.json()["id"]
                elif r.status_code == 503:  # queue full or database down: as asked
                    time.sleep(float(r.headers.get("Retry-After", "5")))
                else:
                    out.append({"id": None, "state": "refused", "error": f"POST {r.status_code}: {r.text[:300]}"})
                    time.sleep(1.0)
            if job_id is None:
                return
            job: dict[str, Any] = {}
            while time.monotonic() < until + 900:  # to its end, past `until` too (the run waits for its jobs)
                r = _timed(c, "GET", f"/jobs/{job_id}", lat, "get")
                if r is not None and r.status_code == 200:
                    job = r.json()
                    if job["state"] in FINISHED:
                        break
                time.sleep(0.5)
            out.append({"id": job_id, "state": job.get("state", "unknown"), "error": job.get("error"),
                        "episodes_done": job.get("episodes_done"), "episodes": episodes,
                        "events": [e["kind"] for e in job.get("events", [])]})


def client_main(args: argparse.Namespace) -> int:
    token = os.environ["AMC_API_TOKEN"]
    until = time.monotonic() + args.minutes * 60
    jobs: list[dict] = []
    lat: dict[str, Any] = {"post": [], "get": [], "refused": 0, "statuses": {}}
    threads = [threading.Thread(target=_client, args=(args.url, token, i, until, args.episodes, jobs, lat), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        for t in threads:
            t.join(30)
        print(json.dumps({"progress": {"jobs": len(jobs), "succeeded": sum(j["state"] == "succeeded" for j in jobs),
                                       "requests": len(lat["post"]) + len(lat["get"])}}), flush=True)
    print(json.dumps({"summary": {"jobs": jobs, **lat}}), flush=True)
    return 0


# ----------------------------------------------------------------------------------------- the run
def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return float("nan")
    ts, ms = [t / 60 for t, _ in samples], [m for _, m in samples]
    mt, mm = statistics.fmean(ts), statistics.fmean(ms)
    den = sum((t - mt) ** 2 for t in ts)
    return sum((t - mt) * (m - mm) for t, m in zip(ts, ms)) / den if den else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="how long clients submit jobs (default 20)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--episodes", type=int, default=6, help="episodes of each small job")
    ap.add_argument("--fault-every-s", type=float, default=120.0)
    ap.add_argument("--down-s", type=float, default=10.0, help="how long a link or the database stays down")
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client:
        return client_main(args)

    sys.path.insert(0, str(REPO / "tests"))
    from netbed import LAYOUT, NetBed, skip_reason
    from pg import PostgresServer, find_bin_dir
    from sessions import alive

    reason = skip_reason() or (None if find_bin_dir() else "PostgreSQL's server binaries are absent")
    if reason:
        log(f"bench_soak: cannot run here: {reason}")
        return 1
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="amc-soak-") as tmp:
        bed = NetBed(root=Path(tmp))
        pg = PostgresServer(find_bin_dir()).start()  # type: ignore[arg-type]
        try:
            name = pg.create_database().rsplit("/", 1)[1]
            db_url = f"postgresql+psycopg://amc:{pg.password}@/{name}?host={pg.socket_dir}&port={pg.port}"
            log("soak: bringing the test bed up")
            bed.up()
            bed.wait_served()
            token = secrets.token_hex(16)
            settings = {"AMC_DATABASE_URL": db_url, "AMC_RAY_CHECKPOINT_EVERY_S": "1",
                        "AMC_MAX_WORKER_RESTARTS": "5", "AMC_MAX_WORKERS": "2"}
            url = bed.server(token, **settings)
            memory: list[list[tuple[float, float]]] = [[]]
            client = bed.start("soak-client", "orch", sys.executable, "-m", "benchmarks.bench_soak", "--client",
                               "--url", url, "--minutes", str(args.minutes), "--clients", str(args.clients),
                               "--episodes", str(args.episodes),
                               env={**bed.env, "AMC_API_TOKEN": token, "PYTHONPATH": str(REPO)})
            t0 = time.monotonic()
            until = t0 + args.minutes * 60
            faults: list[dict] = []
            next_fault, k = t0 + args.fault_every_s / 2, 0
            while client.poll() is None:
                now = time.monotonic()
                rss = _rss_mb(bed.sessions.get("server", -1))
                if rss is not None:
                    memory[-1].append((now - t0, rss))
                if now >= next_fault and now < until - 30:
                    fault = FAULTS[k % len(FAULTS)]
                    host = list(LAYOUT)[k % len(LAYOUT)]
                    k += 1
                    on = f" ({host})" if fault in ("link-cut", "device-host-killed", "phone-killed") else ""
                    log(f"soak: {(now - t0) / 60:.1f} min: {fault}{on}")
                    t = time.monotonic()
                    if fault == "link-cut":
                        with bed.cut_off(host):
                            time.sleep(args.down_s)
                        bed.restart_host(host)  # a node declared dead does not come back by itself
                    elif fault == "device-host-killed":
                        bed.stop(f"device-host-{host}", signal.SIGKILL)
                        time.sleep(2)
                        bed.device_host(host)
                    elif fault == "phone-killed":
                        serial = LAYOUT[host][0][0]
                        bed.stop(f"phone-{serial}", signal.SIGKILL)
                        time.sleep(2)
                        bed.phone(host, serial, bed.phones[serial]["model"], port=int(bed.phones[serial]["port"]))
                    elif fault == "orchestrator-killed":
                        bed.stop("server", signal.SIGKILL)
                        bed.server(token, **settings)
                        memory.append([])
                    else:
                        pg.stop_server()
                        time.sleep(args.down_s)
                        pg.start_server()
                    faults.append({"fault": fault, "host": host, "at_min": (t - t0) / 60,
                                   "seconds": time.monotonic() - t})
                    next_fault = time.monotonic() + args.fault_every_s
                time.sleep(5)
            lines = [line for line in bed.log("soak-client").splitlines() if line.startswith("{")]
            summary = next((json.loads(x)["summary"] for x in reversed(lines) if '"summary"' in x), None)
            if summary is None:
                log(f"bench_soak: the clients ended without a summary:\n{bed.log('soak-client')[-3000:]}")
                return 1
            lost = _episodes_lost(db_url, summary["jobs"])
        finally:
            if "server" in bed.sessions and alive(bed.sessions["server"]):
                bed.stop("server", signal.SIGTERM)
            bed.down()
            pg.stop()
    print(render(summary, faults, memory, lost, args, (time.monotonic() - started) / 60))
    return 0


def _episodes_lost(db_url: str, jobs: list[dict]) -> dict[str, Any]:
    """Read every job's episodes back from the database: a succeeded job has each of 1..N exactly once."""
    from server.store import Store

    store = Store(db_url, create=False)
    try:
        lost, extra, checked = 0, 0, 0
        for job in jobs:
            if not job["id"]:
                continue
            numbers = [e.number for e in store.list_episodes(job["id"])]
            if job["state"] == "succeeded":
                checked += 1
                lost += len(set(range(1, job["episodes"] + 1)) - set(numbers))
            extra += len(numbers) - len(set(numbers))
        return {"lost": lost, "duplicated": extra, "checked": checked}
    finally:
        store.close()


def render(summary: dict, faults: list[dict], memory: list[list[tuple[float, float]]], lost: dict,
           args: argparse.Namespace, total_min: float) -> str:
    jobs = summary["jobs"]
    by_state: dict[str, int] = {}
    for j in jobs:
        by_state[j["state"]] = by_state.get(j["state"], 0) + 1
    reasons: dict[str, int] = {}
    for j in jobs:
        if j["state"] != "succeeded":
            key = (j.get("error") or j["state"]).splitlines()[0][:160]
            reasons[key] = reasons.get(key, 0) + 1
    restarted = sum(1 for j in jobs if {"worker-restart", "server-restart", "database-wait"} & set(j.get("events", [])))
    fault_counts: dict[str, int] = {}
    for f in faults:
        fault_counts[f["fault"]] = fault_counts.get(f["fault"], 0) + 1
    lines = [
        f"The test bed (orchestrator and Ray head in `orch`, two device hosts with 3 emulated phones; jobs as Ray "
        f"tasks on the hosts' nodes, 1 CPU each; PostgreSQL) for {args.minutes:g} min of submissions by "
        f"{args.clients} clients (small jobs: demo-cnn on digits, {args.episodes} episodes), a fault every "
        f"{args.fault_every_s:g} s ({', '.join(f'{k} ×{v}' for k, v in fault_counts.items())}; links and the "
        f"database down {args.down_s:g} s). Total {total_min:.0f} min with setup and the last jobs.", "",
        "| jobs submitted | succeeded | failed | other | restarted or waited | episodes lost | episodes duplicated |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {len(jobs)} | {by_state.get('succeeded', 0)} | {by_state.get('failed', 0)} | "
        f"{len(jobs) - by_state.get('succeeded', 0) - by_state.get('failed', 0)} | {restarted} | "
        f"{lost['lost']} (of {lost['checked']} succeeded jobs' episodes) | {lost['duplicated']} |", "",
        "| request | answered | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|",
    ]
    for name, key in (("`POST /jobs`", "post"), ("`GET /jobs/{id}`", "get")):
        v = summary[key]
        lines.append(f"| {name} | {len(v)} | {_percentile(v, 0.5):.1f} | {_percentile(v, 0.99):.1f} | "
                     f"{max(v) if v else float('nan'):.1f} |")
    statuses = ", ".join(f"{name} ×{n}" for name, n in sorted(summary["statuses"].items())) or "none"
    lines += ["", f"Requests refused while the orchestrator was down (connection errors, retried): "
                  f"{summary['refused']}; answers other than success (503: queue full or database down, retried "
                  f"after Retry-After): {statuses}."]
    if reasons:
        lines += ["", "Jobs that did not succeed: " + "; ".join(f"{n}× {r}" for r, n in reasons.items()) + "."]
    mem = []
    for i, samples in enumerate(memory):
        if samples:
            mem.append(f"lifetime {i + 1}: {samples[0][1]:.0f} MB at {samples[0][0] / 60:.1f} min → "
                       f"{samples[-1][1]:.0f} MB at {samples[-1][0] / 60:.1f} min (trend over its second half, "
                       f"past the warm-up: {_slope_mb_per_min(samples[len(samples) // 2:]):+.2f} MB/min, "
                       f"{len(samples) - len(samples) // 2} samples)")
    lines += ["", "Orchestrator memory (RSS of its process; a kill starts a new lifetime): " + "; ".join(mem) + "."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
