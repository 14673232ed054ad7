"""The long API fuzz run: schemathesis against the served /openapi.json, every operation, valid and
invalid inputs (tests/test_api_fuzz.py's `test_api_contract_long`, marked slow), with the count of
generated cases actually sent (hypothesis stops early where an operation has few distinct inputs).

Runs pytest in a subprocess with `--junitxml` and reads the `cases` property each test records; prints
one markdown row (and the failing operations, if any). The contract it checks is the test's: no 5xx,
every status, content type, header and body as documented, invalid requests refused.

Run: `.venv/bin/python -m benchmarks.bench_api_fuzz [--examples 300]` (per operation and mode).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TEST = "tests/test_api_fuzz.py::test_api_contract_long"


@dataclass
class FuzzResult:
    cases: dict[str, int] = field(default_factory=dict)  # "positive" / "negative" -> cases sent
    operations: set[str] = field(default_factory=set)
    failed: list[str] = field(default_factory=list)  # test ids

    @property
    def total(self) -> int:
        return sum(self.cases.values())


def read_junit(path: Path) -> FuzzResult:
    """Cases per generation mode, operations and failures from pytest's JUnit XML."""
    out = FuzzResult()
    for case in ET.parse(path).iter("testcase"):
        name = case.get("name", "")  # test_api_contract_long[GET /jobs/{job_id}-negative]
        params = name[name.find("[") + 1:name.rfind("]")]
        operation, _, mode = params.rpartition("-")
        sent = sum(int(p.get("value", "0")) for p in case.iter("property") if p.get("name") == "cases")
        out.cases[mode] = out.cases.get(mode, 0) + sent
        out.operations.add(operation)
        if case.find("failure") is not None or case.find("error") is not None:
            out.failed.append(params)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=300,
                    help="generated cases to try per operation and mode (AMC_FUZZ_EXAMPLES_LONG)")
    args = ap.parse_args(argv)
    if args.examples < 1:
        ap.error(f"--examples {args.examples}: give at least 1 case per operation and mode")
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "fuzz.xml"
        env = {**os.environ, "AMC_FUZZ_EXAMPLES_LONG": str(args.examples)}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "pytest", TEST, "-m", "slow", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={junit}"], cwd=REPO, env=env, stdout=sys.stderr, stderr=sys.stderr)
        wall = time.monotonic() - started
        if not junit.is_file():
            print(f"pytest exited {done.returncode} without running the fuzz tests", file=sys.stderr)
            return done.returncode or 1
        result = read_junit(junit)
    if not result.total:
        print("no case was sent: the fuzz run did not get to the server", file=sys.stderr)
        return 1
    print(f"schemathesis against the app's own /openapi.json, in process (no job runs: accepted jobs stay "
          f"queued); up to {args.examples} generated cases per operation and generation mode; checks: no 5xx, "
          f"status, content type, headers and body as documented, schema-invalid requests refused (load average "
          f"{load:.1f} before the run).\n")
    print("| operations | cases tried (valid inputs) | cases tried (invalid inputs) | cases tried | failed tests | "
          "wall s |")
    print("|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(result.operations)} | {result.cases.get('positive', 0)} | {result.cases.get('negative', 0)} | "
          f"{result.total} | {len(result.failed)} | {wall:.0f} |")
    if result.failed:
        print("\nFailed (see the pytest output for the reproducing request): " + ", ".join(f"`{f}`"
                                                                                          for f in result.failed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
