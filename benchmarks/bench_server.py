"""Orchestrator latency on loopback, with a search running in the server's worker.

Default (`--mode load`): open loop, as clients that each send one request a second behave: 50 and
then 200 clients (50 and 200 requests/s), half submitting jobs (`POST /jobs`) and half polling them
(`GET /jobs/{id}`), p50/p99 per request kind; then the saturation throughput of the one server
process (connections sending back to back). The client is a minimal HTTP/1.1 client on asyncio
(keep-alive, one connection per client) so that its own cost stays small beside the server's, and it
lowers its priority (`--client-nice`) once the server is started. `--mode page`: the status page and
list endpoints with 1,000 jobs in the database. `--mode cost`: the server process's own CPU time per
request (closed loop, no search running), which other work on a shared machine distorts far less than
latency.

Starts real uvicorn processes on free loopback ports with throw-away data dirs and prints markdown.
Run: `.venv/bin/python -m benchmarks.bench_server [--rates 50 200] [--seconds 20] [--repo PATH]`
(`--repo`: the checkout whose server is measured, e.g. a `git worktree` of an older commit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-0123456789abcdef"
START_TIMEOUT_S = 600  # a busy machine can take minutes to import torch in the server
SPEC = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg", "episodes": 4,
        "device": "local", "seed": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, data_dir: Path, *, repo: Path = REPO, env: dict[str, str] | None = None):
        self.data_dir, self.port, self.repo = data_dir, free_port(), repo
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.env = env or {}

    def __enter__(self) -> Server:
        env = {**os.environ, "AMC_DATA_DIR": str(self.data_dir), "AMC_API_TOKEN": TOKEN, "AMC_MAX_WORKERS": "1",
               "AMC_CONFIG_DIR": str(self.data_dir.parent / f"config-{self.port}"),
               "PYTHONPATH": os.pathsep.join(p for p in (str(self.repo), os.environ.get("PYTHONPATH")) if p),
               **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "server.main:create_app", "--host", "127.0.0.1",
             "--port", str(self.port), "--log-level", "warning", "--no-access-log"],
            cwd=self.repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with status {self.proc.returncode} while starting")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the server did not answer /healthz within {START_TIMEOUT_S} s of starting")

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


class Connection:
    """One keep-alive HTTP/1.1 connection: a request, then its response (Content-Length bodies only,
    which is what the server answers for these routes)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int):
        self.reader, self.writer, self.port = reader, writer, port

    @classmethod
    async def open(cls, port: int) -> Connection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, port)

    async def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                + (f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n" if body is not None else "")
                + "\r\n")
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        status_line = await self.reader.readuntil(b"\r\n")
        length = 0
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    def close(self) -> None:
        self.writer.close()


@dataclass
class Samples:
    post: list[float] = field(default_factory=list)
    get: list[float] = field(default_factory=list)
    late: int = 0  # sends that started more than 100 ms after their slot (the client fell behind)
    errors: list[str] = field(default_factory=list)


async def open_loop(port: int, *, clients: int, seconds: float, job_ids: list[str], submit_fraction: float,
                    seed: int) -> Samples:
    """`clients` clients, each sending one request a second at its own offset within the second, for
    `seconds`; a `submit_fraction` of them submit jobs, the others poll a job's status."""
    out = Samples()
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    conns = [await Connection.open(port) for _ in range(clients)]
    t0 = loop.time() + 0.5
    submitters = round(clients * submit_fraction)

    async def client(i: int, conn: Connection) -> None:
        offset = i / clients + rng.uniform(0, 1 / clients)
        submitter = i < submitters
        k = 0
        while (slot := t0 + offset + k) < t0 + seconds:
            k += 1
            delay = slot - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                out.late += 1
            t = time.perf_counter()
            if submitter:
                status, body = await conn.request("POST", "/jobs", {**SPEC, "seed": rng.randrange(1, 2**31)})
            else:
                status, body = await conn.request("GET", f"/jobs/{rng.choice(job_ids)}")
            ms = (time.perf_counter() - t) * 1000
            if status >= 400:
                out.errors.append(f"{status} {body[:200]!r}")
                continue
            (out.post if submitter else out.get).append(ms)
            if submitter and len(job_ids) < 5000:
                job_ids.append(json.loads(body)["id"])

    await asyncio.gather(*(client(i, c) for i, c in enumerate(conns)))
    for c in conns:
        c.close()
    return out


async def saturate(port: int, *, connections: int, seconds: float, job_ids: list[str], post: bool) -> float:
    """Requests per second the server answers with `connections` sending back to back."""
    conns = [await Connection.open(port) for _ in range(connections)]
    done = 0
    end = time.perf_counter() + seconds

    async def client(conn: Connection, i: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < end:
            n += 1
            if post:
                status, _ = await conn.request("POST", "/jobs", {**SPEC, "seed": 2**30 + i * 100_000 + n})
            else:
                status, _ = await conn.request("GET", f"/jobs/{job_ids[(i + n) % len(job_ids)]}")
            if status < 400:
                done += 1

    t = time.perf_counter()
    await asyncio.gather(*(client(c, i) for i, c in enumerate(conns)))
    wall = time.perf_counter() - t
    for c in conns:
        c.close()
    return done / wall


def wait_searching(url: str, job_id: str, timeout: float = 300) -> dict:
    """Until the search job has finished an episode (it is past loading and spends its CPU searching)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if job["episodes_done"] >= 1 or job["state"] in ("failed", "succeeded", "cancelled"):
                if job["state"] != "running":
                    raise RuntimeError(f"the background search is {job['state']}: {job.get('error')}")
                return job
            time.sleep(1)
    raise RuntimeError(f"the background search recorded no episode in {timeout} s")


def load_rows(args: argparse.Namespace) -> list[str]:
    data_file = Path(args.search_data.partition(":")[2]) if ":" in args.search_data else None
    env = {"AMC_WORKER_THREADS": str(args.worker_threads)}
    if data_file is not None:
        env["AMC_DATA_ROOTS"] = str(data_file.parent)
    search = {**SPEC, "model": args.search_model, "data": args.search_data, "episodes": 5000, "seed": 7}
    lines = ["| load | request | n | p50 ms | p99 ms | max ms | late sends |", "|---|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp) / "data", repo=args.repo, env=env) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=START_TIMEOUT_S) as c:
            r = c.post("/jobs", json=search)
            if r.status_code != 201:
                raise RuntimeError(f"the background search was refused: {r.status_code} {r.text}")
            search_id = r.json()["id"]
            ids = [c.post("/jobs", json={**SPEC, "seed": i}).json()["id"] for i in range(1, 21)]  # warm
        wait_searching(srv.url, search_id)
        if args.client_nice:
            os.nice(args.client_nice)  # after the server started: it keeps its own priority
        ids.append(search_id)
        for rate in args.rates:
            got = asyncio.run(open_loop(srv.port, clients=rate, seconds=args.seconds, job_ids=ids,
                                        submit_fraction=args.submit_fraction, seed=rate))
            if got.errors:
                print(f"{len(got.errors)} errors at {rate}/s, e.g. {got.errors[:3]}", file=sys.stderr)
            for name, lat in (("POST /jobs", got.post), ("GET /jobs/{id}", got.get)):
                lines.append(f"| {rate} clients × 1/s, a search running | {name} | {len(lat)} | "
                             f"{statistics.median(lat):.1f} | {pct(lat, 99):.1f} | {max(lat):.1f} | {got.late} |")
        sat = ["", "| saturation (one server process, a search running) | connections | req/s |", "|---|---:|---:|"]
        for name, post in (("GET /jobs/{id}", False), ("POST /jobs", True)):
            rps = asyncio.run(saturate(srv.port, connections=args.connections, seconds=args.saturation_seconds,
                                       job_ids=ids, post=post))
            sat.append(f"| {name} | {args.connections} | {rps:.0f} |")
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30) as c:
            still = c.get(f"/jobs/{search_id}").json()
        if still["state"] != "running":
            raise RuntimeError(f"the background search stopped during the run: {still['state']}")
    return lines + sat


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (not its children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cost_rows(args: argparse.Namespace) -> list[str]:
    """The server's own CPU time per request (idle workers, closed loop): a figure that other work on a
    shared machine slows down far less than latency, so versions can be compared on a busy machine."""
    lines = ["| request (closed loop, idle workers) | connections | requests | server CPU ms/request | req/s |",
             "|---|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp) / "data", repo=args.repo) as srv:
        assert srv.proc is not None
        with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=START_TIMEOUT_S) as c:
            ids = [c.post("/jobs", json={**SPEC, "seed": i}).json()["id"] for i in range(1, 21)]  # warm
        for name, post in (("GET /jobs/{id}", False), ("POST /jobs", True)):
            asyncio.run(saturate(srv.port, connections=4, seconds=1.0, job_ids=ids, post=post))  # warm
            before, t = cpu_seconds(srv.proc.pid), time.perf_counter()
            done = asyncio.run(count_requests(srv.port, connections=args.connections, requests=args.requests,
                                              job_ids=ids, post=post))
            wall, cpu = time.perf_counter() - t, cpu_seconds(srv.proc.pid) - before
            lines.append(f"| {name} | {args.connections} | {done} | {cpu / done * 1000:.2f} | {done / wall:.0f} |")
    return lines


async def count_requests(port: int, *, connections: int, requests: int, job_ids: list[str], post: bool) -> int:
    """Send `requests` in all over `connections` back to back; the number answered without an error."""
    conns = [await Connection.open(port) for _ in range(connections)]
    ok = 0

    async def client(conn: Connection, i: int) -> None:
        nonlocal ok
        for n in range(i, requests, connections):
            if post:
                status, _ = await conn.request("POST", "/jobs", {**SPEC, "seed": 2**29 + n})
            else:
                status, _ = await conn.request("GET", f"/jobs/{job_ids[n % len(job_ids)]}")
            ok += status < 400

    await asyncio.gather(*(client(c, i) for i, c in enumerate(conns)))
    for c in conns:
        c.close()
    return ok


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


def page_rows(args: argparse.Namespace) -> tuple[list[str], float]:
    """The status page and list endpoints with `args.jobs` finished jobs in the database (idle workers)."""
    lines = ["| request | n | p50 ms | p99 ms | max ms | req/s |", "|---|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "page"
        t = time.perf_counter()
        seed_jobs(data, args.jobs)
        seeded = time.perf_counter() - t
        with Server(data, repo=args.repo) as srv:
            lines.append(row(f"GET / (status page, {args.jobs} jobs)", timed_gets(srv.url, "/", 100)))
            lines.append(row("GET /static/app.js", timed_gets(srv.url, "/static/app.js", 100)))
            lines.append(row(f"GET /jobs?limit=200 (what the page polls, {args.jobs} jobs)",
                             timed_gets(srv.url, "/jobs?limit=200", 50)))
            lines.append(row(f"GET /jobs?limit=1000 ({args.jobs} jobs)", timed_gets(srv.url, "/jobs?limit=1000", 20)))
            some = f"/jobs/{args.jobs // 2:032x}"
            lines.append(row("GET /jobs/{id} (1 client)", timed_gets(srv.url, some, 200)))
            lines.append(row("GET /jobs/{id}/episodes (20 episodes)", timed_gets(srv.url, some + "/episodes", 100)))
    return lines, seeded


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("load", "page", "cost"), default="load")
    ap.add_argument("--rates", type=int, nargs="+", default=[50, 200], help="clients, each sending 1 request/s")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each open-loop phase")
    ap.add_argument("--submit-fraction", type=float, default=0.5, help="share of clients that POST /jobs")
    ap.add_argument("--connections", type=int, default=32, help="connections for the saturation throughput")
    ap.add_argument("--saturation-seconds", type=float, default=8.0)
    ap.add_argument("--search-model", default="resnet20")
    ap.add_argument("--search-data", default=f"cifar10:{REPO.parent / 'shared' / 'data' / 'cifar10_test.npz'}")
    ap.add_argument("--worker-threads", type=int, default=2, help="torch threads of the background search")
    ap.add_argument("--client-nice", type=int, default=10, help="niceness the client takes once the server runs")
    ap.add_argument("--repo", type=Path, default=REPO, help="the checkout whose server is measured")
    ap.add_argument("--jobs", type=int, default=1000, help="jobs in the database for --mode page")
    ap.add_argument("--requests", type=int, default=2000, help="requests of each kind for --mode cost")
    args = ap.parse_args(argv)
    if args.search_data.startswith("cifar10:") and not Path(args.search_data.partition(":")[2]).is_file():
        print(f"{args.search_data} is absent: the background search is demo-cnn on digits", file=sys.stderr)
        args.search_model, args.search_data = "demo-cnn", "digits"

    load = os.getloadavg()[0]
    if args.mode == "cost":
        lines = cost_rows(args)
        print(f"Server CPU time per request on loopback ({os.cpu_count()} CPUs, 1 uvicorn worker, SQLite WAL, "
              f"workers idle; load average {load:.1f} before the run; server from {args.repo})\n")
    elif args.mode == "page":
        lines, seeded = page_rows(args)
        print(f"Server benchmark on loopback ({os.cpu_count()} CPUs, 1 uvicorn worker, SQLite WAL; "
              f"{args.jobs} jobs seeded in {seeded:.1f} s)\n")
    else:
        lines = load_rows(args)
        print(f"Server under load on loopback ({os.cpu_count()} CPUs, 1 uvicorn worker, SQLite WAL; background "
              f"search {args.search_model} on {args.search_data.partition(':')[0]}, {args.worker_threads} torch "
              f"threads; open-loop phases of {args.seconds:g} s, {args.submit_fraction:.0%} submitters; "
              f"load average {load:.1f} before the run; server from {args.repo})\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
