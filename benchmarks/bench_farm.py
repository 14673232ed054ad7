"""The phone farm's own costs on a real Ray cluster started on this machine (tests/test_farm_ray.py's
`test_farm_overhead_and_measurements_per_minute`, marked slow): what Ray adds to one measurement over
timing the same emulated phone directly over ADB (goal: under 50 ms), and measurements per minute
through the farm with 1, 2 and 4 phones of one model on two device hosts.

Runs pytest in a subprocess (the test starts and ends the cluster, the hosts and the `amc phone-sim`
phones) and renders the JSON it writes. The phones are emulators on this machine's CPU: what they measure
runs on the same cores as the cluster, so throughput with more phones than cores says as much about the
cores as about the farm.

Run: `.venv/bin/python -m benchmarks.bench_farm [--rounds 10] [--seconds 20]`
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_farm_ray.py::test_farm_overhead_and_measurements_per_minute"
GOAL_MS = 50.0


def render(result: dict, *, load: float) -> str:
    lines = [f"A head and two `amc device-host` processes (Ray, token authentication) with 7 emulated phones "
             f"(`amc phone-sim`) on this machine ({result['cpus']} CPUs; load average {load:.1f} before the run); "
             f"a two-convolution ONNX model, {result['runs_per_measurement']} timed runs per measurement, cache "
             "bypassed (`fresh`).", "",
             "| path | measurements | median ms | min–max ms |", "|---|---:|---:|---|"]
    for name, key in (("direct: `open_device(adb:HOST:PORT)` + `measure`", "direct_ms"),
                      ("through the farm: `FarmPool(model:NAME).measure` (lease, Ray call, release)", "farm_ms")):
        values = result[key]
        lines.append(f"| {name} | {len(values)} | {statistics.median(values):.1f} | "
                     f"{min(values):.1f}–{max(values):.1f} |")
    overhead = result["overhead_median_ms"]
    verdict = "within" if overhead < GOAL_MS else "over"
    lines += ["", f"**Overhead of the farm per measurement: {overhead:.1f} ms** (median through the farm minus "
                  f"median direct; {verdict} the {GOAL_MS:.0f} ms goal).", "",
              f"One call to a phone's actor (`info`, a round trip through Ray from this process to the host's "
              f"actor): median **{result['actor_call_median_ms']:.2f} ms** over {len(result['actor_call_ms'])} "
              f"calls (min–max {min(result['actor_call_ms']):.2f}–{max(result['actor_call_ms']):.2f} ms); a "
              "measurement through the farm makes three such calls (lease, measure with the model's bytes, release).",
              "",
              "| phones of the model (hosts) | clients | measurements | seconds | per minute | phones used |",
              "|---|---:|---:|---:|---:|---:|"]
    for n, row in sorted(result["per_minute"].items(), key=lambda kv: int(kv[0])):
        hosts = 1 if int(n) == 1 else 2
        lines.append(f"| {n} ({hosts}) | {2 * int(n)} | {row['measurements']} | {row['seconds']:.1f} | "
                     f"{row['per_minute']:.0f} | {row['phones_used']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10, help="measurements of each path for the overhead")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each throughput phase")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.seconds <= 0:
        ap.error("--rounds must be at least 1 and --seconds positive")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "farm.json"
        env = {**os.environ, "AMC_FARM_BENCH_OUT": str(out), "AMC_FARM_BENCH_ROUNDS": str(args.rounds),
               "AMC_FARM_BENCH_SECONDS": str(args.seconds)}
        done = subprocess.run([sys.executable, "-m", "pytest", TEST, "-m", "slow", "-q", "-p", "no:cacheprovider"],
                              cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
        if not out.is_file():
            print(f"pytest exited {done.returncode} without results (is the farm extra installed?)", file=sys.stderr)
            return done.returncode or 1
        result = json.loads(out.read_text())
    print(render(result, load=load))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
