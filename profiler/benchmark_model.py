"""The stock TFLite `benchmark_model` binary: a driver for phones without Python, and a parser for its
output in the formats it has printed over the years.

Current releases print (values in microseconds) the warm-up and timed runs as `count=... first=...
curr=... min=... max=... avg=... std=...` lines (newer builds add `p5=... median=... p95=...`),
then `Inference timings in us: Init: ..., First inference: ..., Warmup (avg): ..., Inference (avg): ...`.
Releases up to TF 1.15 printed one `count=` line and `Average inference timings in us: Warmup: ...,
Init: ..., no stats: ...` (or `Inference: ...`). Lines may carry `INFO: ` or logcat prefixes.
"""

from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

from profiler.errors import ProfilerError
from profiler.protocol import MeasureConfig

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_STATS_LINE = re.compile(r"count=(\d+)((?:\s+[A-Za-z0-9_]+=" + _NUM + r")+)")
_KV = re.compile(r"([A-Za-z0-9_]+)=" + _NUM)
_CURRENT = re.compile(
    r"Inference timings in us:\s*Init:\s*" + _NUM + r",\s*First inference:\s*" + _NUM
    + r",\s*Warmup \(avg\):\s*" + _NUM + r",\s*Inference \(avg\):\s*" + _NUM
)
_OLD = re.compile(
    r"Average inference timings in us:\s*Warmup:\s*" + _NUM + r",\s*Init:\s*" + _NUM
    + r",\s*(?:no stats|Inference|Inference \(avg\)):\s*" + _NUM
)
_INIT_SESSION = re.compile(r"Initialized session in\s*" + _NUM + r"\s*ms")
# A z-score for the 90th percentile when only mean and std are known (normal approximation).
_Z90 = 1.2815515655446004


class BenchmarkOutputError(ProfilerError, ValueError):
    """The text does not look like benchmark_model output (or the run failed before timing)."""


@dataclass
class RunStats:
    """One `count=...` line, converted to milliseconds."""

    count: int
    values_ms: dict[str, float] = field(default_factory=dict)

    def get(self, name: str) -> float | None:
        return self.values_ms.get(name)


@dataclass
class BenchmarkModelResult:
    """What benchmark_model reported, in milliseconds. `median_ms`/`p90_ms` are exact where the binary
    printed percentiles, otherwise estimated from the average and standard deviation (`estimated`)."""

    format: str  # "current" | "legacy"
    inference_avg_ms: float
    init_ms: float | None = None
    first_ms: float | None = None
    warmup_avg_ms: float | None = None
    runs: RunStats | None = None
    warmup: RunStats | None = None

    @property
    def count(self) -> int:
        return self.runs.count if self.runs else 0

    @property
    def std_ms(self) -> float:
        return (self.runs.get("std") if self.runs else None) or 0.0

    @property
    def min_ms(self) -> float:
        v = self.runs.get("min") if self.runs else None
        return min(v, self.median_ms) if v is not None else self.median_ms

    @property
    def max_ms(self) -> float:
        v = self.runs.get("max") if self.runs else None
        return max(v, self.p90_ms) if v is not None else self.p90_ms

    @property
    def estimated(self) -> bool:
        return not (self.runs and self.runs.get("median") is not None)

    @property
    def median_ms(self) -> float:
        v = self.runs.get("median") if self.runs else None
        return v if v is not None else self.inference_avg_ms

    @property
    def p90_ms(self) -> float:
        # p95 is printed by some builds; p90 lies below it. Without percentiles, mean + z90 * std,
        # capped by the largest run so that min <= median <= p90 <= max holds.
        est = self.inference_avg_ms + _Z90 * self.std_ms
        if self.runs and self.runs.get("p95") is not None:
            est = min(est, self.runs.values_ms["p95"])
        if self.runs and self.runs.get("max") is not None:
            est = min(est, self.runs.values_ms["max"])
        return max(est, self.median_ms)


def _stats_lines(text: str) -> list[RunStats]:
    found = []
    for m in _STATS_LINE.finditer(text):
        values = {k: float(v) / 1000.0 for k, v in _KV.findall(m.group(2))}
        found.append(RunStats(count=int(m.group(1)), values_ms=values))
    return found


def parse_benchmark_model(text: str) -> BenchmarkModelResult:
    """Parse benchmark_model's stdout/stderr (any release). Raises BenchmarkOutputError when the text
    holds no timing summary, quoting the error lines the binary printed."""
    stats = _stats_lines(text)
    m = _CURRENT.search(text)
    if m:
        init, first, warm, inf = (float(g) / 1000.0 for g in m.groups())
        runs = stats[-1] if stats else None
        warmup = stats[-2] if len(stats) >= 2 else None
        return BenchmarkModelResult("current", inf, init_ms=init, first_ms=first, warmup_avg_ms=warm,
                                    runs=runs, warmup=warmup)
    m = _OLD.search(text)
    if m:
        warm, init, inf = (float(g) / 1000.0 for g in m.groups())
        runs = stats[-1] if stats else None
        return BenchmarkModelResult("legacy", inf, init_ms=init, first_ms=runs.get("first") if runs else None,
                                    warmup_avg_ms=warm, runs=runs)
    if stats:
        # Summary line cut off (e.g. logcat truncation): the last count= line is the timed runs.
        runs = stats[-1]
        avg = runs.get("avg")
        if avg is not None and math.isfinite(avg):
            session = _INIT_SESSION.search(text)
            return BenchmarkModelResult("stats-only", avg, init_ms=float(session.group(1)) if session else None,
                                        first_ms=runs.get("first"), runs=runs,
                                        warmup=stats[-2] if len(stats) >= 2 else None)
    errors = [ln.strip() for ln in text.splitlines() if re.search(r"error|failed|not found|abort", ln, re.I)]
    detail = "; ".join(errors[-3:]) if errors else "no 'Inference timings' summary or count= line found"
    raise BenchmarkOutputError(f"not benchmark_model timing output: {detail}")


def benchmark_model_command(binary: str, model_path: str, config: MeasureConfig, *,
                            extra_args: tuple[str, ...] = ()) -> str:
    """A shell command line that runs benchmark_model under the measurement protocol. `--min_secs=0`
    makes the timed run count equal `runs`; `taskset` pins it when a CPU mask is given."""
    argv = [binary, f"--graph={model_path}", f"--num_threads={config.threads}",
            f"--warmup_runs={config.warmup}", "--warmup_min_secs=0", f"--num_runs={config.runs}",
            "--min_secs=0", *extra_args]
    cmd = shlex.join(argv)
    if config.cpu_mask:
        cmd = f"taskset {shlex.quote(config.cpu_mask.removeprefix('0x'))} {cmd}"
    return cmd
