"""Orchestrator latency on loopback: `POST /jobs` and `GET /jobs/{id}` under 50 concurrent clients
(a bounded number of requests, httpx async), and the status page with 1,000 jobs in the database.

Starts real uvicorn processes on free loopback ports with throw-away data dirs and prints a markdown
table. Run: `.venv/bin/python -m benchmarks.bench_server [--posts 200] [--gets 1000] [--clients 50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
SPEC = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg", "episodes": 4,
        "device": "local", "seed": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path):
        self.data_dir, self.port = data_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        env = {**os.environ, "AMC_DATA_DIR": str(self.data_dir), "AMC_API_TOKEN": TOKEN, "AMC_MAX_WORKERS": "1",
               "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "server.main:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


async def hammer(url: str, requests: list[tuple[str, str, dict | None]], clients: int) -> tuple[list[float], float, list]:
    """Send `requests` with `clients` concurrent connections; per-request latencies (ms) and wall time."""
    latencies: list[float] = []
    bodies: list = []
    queue: asyncio.Queue = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient) -> None:
        while not queue.empty():
            method, path, body = queue.get_nowait()
            t = time.perf_counter()
            r = await http.request(method, path, json=body)
            latencies.append((time.perf_counter() - t) * 1000)
            if r.status_code >= 400:
                raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
            bodies.append(r.json() if method == "POST" else None)

    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - t0
    return latencies, wall, bodies


def seed_jobs(data_dir: Path, n: int) -> None:
    """n finished jobs with 20 episodes each, written straight into the store."""
    from server.core.config import Settings
    from server.store import Episode, Job, JobState, Store, utcnow

    settings = Settings(data_dir=data_dir, api_token=TOKEN)
    settings.prepare_dirs()
    store = Store(settings.db_url)
    now = utcnow()
    with store.session() as s:
        for i in range(n):
            job_id = f"{i:032x}"
            ratios = [0.5 + 0.01 * (k % 40) for k in range(6)]
            s.add(Job(id=job_id, state=JobState.SUCCEEDED.value, spec=SPEC, config=SPEC,
                      created_at=now - timedelta(seconds=n - i), finished_at=now, phase="succeeded",
                      message="finished", episodes_total=20, episodes_done=20,
                      best={"episode": 20, "reward": -0.02, "accuracy": 0.97, "macs": 500_000, "params": 20_000,
                            "latency_ms": None, "ratios": ratios}, attempts=1))
        s.flush()  # jobs before their episodes (foreign key)
        for i in range(n):
            job_id = f"{i:032x}"
            ratios = [0.5 + 0.01 * (k % 40) for k in range(6)]
            for e in range(1, 21):
                s.add(Episode(job_id=job_id, number=e, record={"episode": e, "reward": -0.02, "accuracy": 0.97,
                                                               "macs": 500_000, "ratios": ratios}))
    store.close()


def timed_gets(url: str, path: str, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        c.get(path)  # warm
        for _ in range(n):
            t = time.perf_counter()
            r = c.get(path)
            r.raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
    return out


def row(name: str, lat: list[float], wall: float | None = None) -> str:
    rps = f"{len(lat) / wall:.0f}" if wall else "–"
    return (f"| {name} | {len(lat)} | {statistics.median(lat):.1f} | {pct(lat, 99):.1f} | {max(lat):.1f} | {rps} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--gets", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs", type=int, default=1000, help="jobs in the database for the status-page numbers")
    args = ap.parse_args(argv)
    lines = ["| request | n | p50 ms | p99 ms | max ms | req/s |", "|---|---:|---:|---:|---:|---:|"]

    with tempfile.TemporaryDirectory() as tmp:
        with Server(Path(tmp) / "api") as srv:
            specs = [("POST", "/jobs", {**SPEC, "seed": i}) for i in range(args.posts)]
            lat, wall, bodies = asyncio.run(hammer(srv.url, specs, args.clients))
            lines.append(row(f"POST /jobs ({args.clients} clients, a search running)", lat, wall))
            ids = [b["id"] for b in bodies]
            gets = [("GET", f"/jobs/{ids[i % len(ids)]}", None) for i in range(args.gets)]
            lat, wall, _ = asyncio.run(hammer(srv.url, gets, args.clients))
            lines.append(row(f"GET /jobs/{{id}} ({args.clients} clients, a search running)", lat, wall))
            with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
                for job_id in ids:  # do not leave 200 searches running
                    c.post(f"/jobs/{job_id}/cancel")

        data = Path(tmp) / "page"
        t = time.perf_counter()
        seed_jobs(data, args.jobs)
        seeded = time.perf_counter() - t
        with Server(data) as srv:
            lines.append(row(f"GET / (status page, {args.jobs} jobs)", timed_gets(srv.url, "/", 100)))
            lines.append(row("GET /static/app.js", timed_gets(srv.url, "/static/app.js", 100)))
            lines.append(row(f"GET /jobs?limit=200 (what the page polls, {args.jobs} jobs)",
                             timed_gets(srv.url, "/jobs?limit=200", 50)))
            lines.append(row(f"GET /jobs?limit=1000 ({args.jobs} jobs)", timed_gets(srv.url, "/jobs?limit=1000", 20)))
            some = f"/jobs/{args.jobs // 2:032x}"
            gets = [("GET", f"/jobs/{i % args.jobs:032x}", None) for i in range(args.gets)]
            lat, wall, _ = asyncio.run(hammer(srv.url, gets, args.clients))
            lines.append(row(f"GET /jobs/{{id}} ({args.clients} clients, idle workers)", lat, wall))
            lines.append(row("GET /jobs/{id} (1 client)", timed_gets(srv.url, some, 200)))
            lines.append(row("GET /jobs/{id}/episodes (20 episodes)", timed_gets(srv.url, some + "/episodes", 100)))

    print(f"Server benchmark on loopback ({os.cpu_count()} CPUs, 1 uvicorn worker, SQLite WAL; "
          f"{args.jobs} jobs seeded in {seeded:.1f} s)\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
