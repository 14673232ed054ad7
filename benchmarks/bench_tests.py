"""The test suite's time against the suite issue #10 measured (317 tests in about 4 min 45 s on 2 cores,
at commit ec82ac7), on the same machine, the same day: that commit's `make test` suite (`-m "not slow"`)
run from a git worktree, then the same tests as they are now (every test id that still exists; the few
that moved to in-process API tests are counted apart), then optionally (`--full`) today's whole `make test`
suite. Each run is one pytest process with `--durations=0`; per-test times are setup + call + teardown.

The machines this project runs on differ from day to day (a model timed 1.6x slower on one VM than on
another), so only runs on one machine one after the other compare; nothing else should run meanwhile.

Run: `.venv/bin/python -m benchmarks.bench_tests [--base ec82ac7] [--full]`
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = "ec82ac7"  # the commit issue #10 was filed against
DURATION = re.compile(r"^([0-9.]+)s (setup|call|teardown)\s+(\S.*)$")
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed).*?) in [0-9.]+s")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def collect(cwd: Path, args: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *args],
                         cwd=cwd, capture_output=True, text=True)
    ids = sorted(line.strip() for line in out.stdout.splitlines() if "::" in line)
    if not ids:
        raise SystemExit(f"no tests collected in {cwd}: {out.stdout[-2000:]}{out.stderr[-2000:]}")
    return ids


def run(cwd: Path, args: list[str], label: str) -> dict:
    """One pytest process; its wall time, per-test durations and summary line."""
    _log(f"[tests] {label}: running in {cwd} ...")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", *args],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    per_test: dict[str, float] = collections.defaultdict(float)
    summary = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line.endswith("%]"):  # pytest's progress lines
            _log(f"[tests] {label}: {line[-6:]} after {time.perf_counter() - t0:.0f} s")
        m = DURATION.match(line)
        if m:
            per_test[m.group(3)] += float(m.group(1))
        s = SUMMARY.match(line)
        if s:
            summary = s.group(1)
    rc = proc.wait()
    wall = time.perf_counter() - t0
    _log(f"[tests] {label}: {summary or 'no summary'} (rc {rc}) in {wall:.0f} s")
    return {"wall": wall, "per_test": dict(per_test), "summary": summary, "rc": rc}


def render(base: str, old: dict, now: dict, full: dict | None, common: list[str], moved: list[str],
           added: int, load: float) -> str:
    def total(r: dict, ids: list[str]) -> float:
        return sum(r["per_test"].get(i, 0.0) for i in ids)

    def mmss(s: float) -> str:
        minutes, seconds = divmod(round(s, 1), 60)
        return f"{int(minutes)} min {seconds:04.1f} s"

    lines = [f"Same machine, one run after the other (load average {load:.1f} before the first). The suite of "
             f"`{base}` (what issue #10 measured: {len(common) + len(moved)} tests, about 4 min 45 s on the machine "
             "of that day) against the same tests at this commit.", "",
             "| run | tests | result | wall | sum of per-test times | per test |", "|---|---:|---|---:|---:|---:|",
             f"| `{base}`: its `make test` suite | {len(common) + len(moved)} | {old['summary']} | {mmss(old['wall'])} | "
             f"{total(old, common + moved):.1f} s | {total(old, common + moved) / (len(common) + len(moved)):.2f} s |",
             f"| `{base}`: the {len(common)} of them that still exist | {len(common)} | — | — | {total(old, common):.1f} s | "
             f"{total(old, common) / len(common):.2f} s |",
             f"| this commit: the same {len(common)} tests | {len(common)} | {now['summary']} | {mmss(now['wall'])} | "
             f"{total(now, common):.1f} s | {total(now, common) / len(common):.2f} s |"]
    if full is not None:
        n, spent = len(common) + added, sum(full["per_test"].values())
        lines.append(f"| this commit: its whole `make test` suite | {n} | {full['summary']} | "
                     f"{mmss(full['wall'])} | {spent:.1f} s | {spent / n:.2f} s |")
    change = total(now, common) / max(total(old, common), 1e-9) - 1
    lines += ["", f"The same {len(common)} tests: **{change:+.1%}** in the sum of their times. "
              f"{len(moved)} tests of `{base}` no longer exist under their ids (they took {total(old, moved):.1f} s "
              "there; the API tests that started a real server moved to in-process tests); "
              f"{added} tests were added since.", ""]
    diffs = sorted((now["per_test"].get(i, 0.0) - old["per_test"].get(i, 0.0), i) for i in common)
    lines += ["Largest changes of one test (seconds, now − then):", ""]
    lines += [f"- {d:+.1f} s `{i}`" for d, i in [*diffs[:3], *diffs[-3:]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=BASE, help="the commit whose suite is the reference")
    ap.add_argument("--full", action="store_true", help="also run this commit's whole make test suite")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0]
    known = subprocess.run(["git", "cat-file", "-e", f"{args.base}^{{commit}}"], cwd=REPO, capture_output=True)
    if known.returncode != 0:
        print(f"commit {args.base} is not in this clone's history: run `git fetch --unshallow` (or clone without "
              "--depth), or name another commit with --base", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="amc-bench-tests-") as tmp:
        old_tree = Path(tmp) / "main"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old_tree), args.base], cwd=REPO, check=True)
        shared = REPO.parent / "shared"
        if shared.is_dir():  # the tests that need ../shared/data find it beside the old tree too
            (Path(tmp) / "shared").symlink_to(shared)
        try:
            old_ids = collect(old_tree, ["-m", "not slow"])
            now_ids = collect(REPO, ["-m", "not slow"])
            common = sorted(set(old_ids) & set(now_ids))
            moved = sorted(set(old_ids) - set(now_ids))
            ids_file = Path(tmp) / "common.txt"
            ids_file.write_text("\n".join(common) + "\n")
            old = run(old_tree, ["-m", "not slow"], f"{args.base} ({len(old_ids)} tests)")
            now = run(REPO, [f"@{ids_file}"], f"this commit, the same {len(common)} tests")
            full = run(REPO, ["-m", "not slow"], f"this commit, all {len(now_ids)} tests") if args.full else None
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=REPO, check=False)
    print(render(args.base, old, now, full, common, moved, len(set(now_ids) - set(old_ids)), load))
    return 0 if now["rc"] == 0 and (full is None or full["rc"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
