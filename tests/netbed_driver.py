"""The orchestrator's side of a test-bed scenario, run inside the bed's `orch` namespace (tests/netbed.py):
measure a model, or build a latency table, through the farm, printing one JSON line per event on stdout
so the test can inject a fault at the right moment:

    {"measuring": SPEC, "host": HOST}       a matching phone started measuring (printed once per phone)
    {"done": ..., "events": [...]}          the outcome, and what the pool noted (retries, reasons)

or submit a job to the orchestrator (`amc serve` in `orch`, jobs on Ray) and follow it:

    {"running_on": IP, "job": ID}           the job's Ray task started on the node at IP (once per attempt)
    {"episodes_done": N}                    the job's episodes recorded so far, each time it grows
    {"done": JOB, "episodes": [...], "nodes": [IP, ...]}   its end: GET /jobs/{id}, its episodes' numbers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path


def _say(**data: object) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _watch(farm, selector: str, stop: threading.Event) -> None:
    seen: set[str] = set()
    while not stop.is_set():
        try:
            phones = farm.phones(timeout_s=2.0)
        except Exception as exc:  # the cluster itself is what a fault disturbs
            _say(watch_error=f"{type(exc).__name__}: {exc}")
            phones = []
        for p in phones:
            if p.matches(selector) and p.lease and p.lease.get("measuring") and p.spec + p.host not in seen:
                seen.add(p.spec + p.host)
                _say(measuring=p.spec, host=p.host)
        stop.wait(0.3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["measure", "lut", "job"])
    parser.add_argument("selector", help="measure, lut: the phones (model:NAME); job: the server's URL")
    parser.add_argument("--model", type=Path, help="the ONNX model to measure")
    parser.add_argument("--runs", type=int, default=None,
                        help="measure: its runs (default 1500); lut: each kernel's (default: the table's own)")
    parser.add_argument("--kernels", type=int, default=24, help="lut: how many conv kernels")
    parser.add_argument("--deadline-s", type=float, default=120.0)
    parser.add_argument("--episodes", type=int, default=100, help="job: its episodes")
    args = parser.parse_args()
    args.runs_given = args.runs is not None
    args.runs = 1500 if args.runs is None else args.runs
    if args.action == "job":
        return follow_job(args.selector, args.episodes, args.deadline_s)

    from profiler.farm.client import Farm, FarmDevice, FarmPool
    from profiler.protocol import MeasureConfig

    farm = Farm(os.environ["AMC_RAY_ADDRESS"])
    farm.connect()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(farm, args.selector, stop), daemon=True)
    watcher.start()
    started = time.monotonic()
    try:
        if args.action == "measure":
            pool = FarmPool(farm, args.selector)
            m = pool.measure(args.model, MeasureConfig(warmup=2, runs=args.runs), deadline_s=args.deadline_s)
            _say(done=None if m is None else {"phone": m.raw["farm"]["phone"], "host": m.raw["farm"]["host"],
                                              "median_ms": m.median_ms, "runs": m.runs},
                 events=pool.events, seconds=time.monotonic() - started)
        else:
            from compressor.latency import KernelSpec
            from profiler.lut import LatencyTable, build_lut
            from profiler.lut.space import ModelKernels, kernel_grid

            kernels = [KernelSpec("conv", 8, 8 + 8 * i, k=3, h=32, w=32) for i in range(args.kernels)]
            expected = len(kernel_grid(ModelKernels.assumed(kernels, a_min=0.2, round_to=8), max_points=1))
            device = FarmDevice(args.selector, farm=farm, wait_s=args.deadline_s)
            config = MeasureConfig(warmup=2, runs=args.runs) if args.runs_given else None
            table = build_lut(device, kernels, max_points=1, round_to=8, config=config,
                              table=LatencyTable(device_id=device.id or "", runtime="onnxruntime", threads=1))
            points = {f"{k}|{c}": v for k, pts in table.entries.items() for c, v in pts.items()}
            _say(done={"entries": len(table), "points": len(points), "expected": expected,
                       "positive": all(v > 0 for v in points.values())},
                 events=device.pool.events, seconds=time.monotonic() - started)
    finally:
        stop.set()
        watcher.join(5)
    return 0


def follow_job(url: str, episodes: int, deadline_s: float) -> int:
    import re

    import httpx
    import ray

    from profiler.farm.cluster import ray_init

    ray_init(os.environ["AMC_RAY_ADDRESS"])
    node_ips = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    spec = {"model": "demo-cnn", "data": "digits", "target": "flops=0.5", "strategy": "ddpg",
            "episodes": episodes, "device": "local", "seed": 0}
    headers = {"Authorization": f"Bearer {os.environ['AMC_API_TOKEN']}"}
    deadline = time.monotonic() + deadline_s
    with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
        r = c.post("/jobs", json=spec)
        r.raise_for_status()
        job_id = r.json()["id"]
        nodes: list[str] = []
        job: dict = {}
        done_before = 0
        while time.monotonic() < deadline:
            try:
                text = c.get(f"/jobs/{job_id}/log").text
                job = c.get(f"/jobs/{job_id}").json()
            except httpx.HTTPError as exc:  # the orchestrator is what a fault may have stopped
                _say(server_error=f"{type(exc).__name__}: {exc}")
                time.sleep(1.0)
                continue
            for prefix in re.findall(r"runs on node \S+ \(([0-9a-f]+)\)", text)[len(nodes):]:
                ip = next((a for n, a in node_ips.items() if n.startswith(prefix)), prefix)
                nodes.append(ip)
                _say(running_on=ip, job=job_id)
            if job.get("episodes_done", 0) > done_before:
                done_before = job["episodes_done"]
                _say(episodes_done=done_before)
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.3)
            node_ips.update({n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()})
        numbers = [e["episode"] for e in c.get(f"/jobs/{job_id}/episodes").json()["episodes"]]
        text = c.get(f"/jobs/{job_id}/log").text
        _say(done=job, episodes=numbers, nodes=nodes, resumed="resuming job" in text, log=text[-4000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
