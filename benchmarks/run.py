"""`make bench`: run the benchmarks and write their results into docs/BENCHMARKS.md.

Each benchmark is a module with `main(argv) -> int` that prints a markdown section on stdout (progress
goes to stderr). Its section in docs/BENCHMARKS.md is replaced between markers, together with the exact
command and the date, so the file always says what produced each number.

    python -m benchmarks.run                  # all
    python -m benchmarks.run search server    # some
    python -m benchmarks.run search -- --episodes 100   # extra arguments for the (single) benchmark
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import io
import platform
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "BENCHMARKS.md"

BENCHMARKS = {
    "frontier": ("benchmarks.bench_frontier", "Compressed ResNet-56 against the smaller siblings (does compression pay?)"),
    "recovery": ("benchmarks.bench_recovery", "Recovery with few images: which settings (defaults of compressor.finetune)"),
    "reward": ("benchmarks.bench_reward", "Does the search's reward predict the recovered model? (rank correlation)"),
    "strategies": ("benchmarks.bench_strategies", "DDPG vs random vs uniform over seeds, after recovery"),
    "search": ("benchmarks.bench_search", "Search quality and time per episode (issue: search engine)"),
    "latency": ("benchmarks.bench_latency", "Latency lookup table, measurement noise, ADB overhead"),
    "server": ("benchmarks.bench_server", "Orchestrator under load"),
    "farm": ("benchmarks.bench_farm", "The phone farm on Ray: overhead per measurement, measurements per minute"),
    "api-fuzz": ("benchmarks.bench_api_fuzz", "API contract fuzzing (schemathesis, long run)"),
    "tests": ("benchmarks.bench_tests", "The test suite's time against the suite of issue #10 (same machine, same day)"),
    "train-speed": ("benchmarks.bench_train_speed", "What a recovery epoch costs on 2 cores (seconds per 50,000 images)"),
    "soak": ("benchmarks.bench_soak", "Soak: the service on the multi-host test bed under faults, on PostgreSQL"),
    "memory": ("benchmarks.bench_memory", "Orchestrator memory over many jobs (the soak's set-up without faults)"),
    "int8": ("benchmarks.bench_int8", "Post-training int8 against float32: CIFAR ResNets, accuracy and latency on local"),
    "int8-mixed": ("benchmarks.bench_int8_mixed",
                   "Per-layer precision: the first convolution and the classifier in float, the rest int8"),
    "int8-search": ("benchmarks.bench_int8_search",
                    "Int8 inside the search: the int8 latency table's check, the float reward as int8's proxy"),
}
# Sections made by a benchmark module with arguments of their own (name -> (module, title, arguments)):
# the frontier recovered on the 50,000 CIFAR-10 training images, one sibling a run. ResNet-32 and -44 with
# the settings of their best rows (a 97% latency margin, 15 epochs); ResNet-20's row was made with 8 epochs.
_TRAIN_FRONTIER_EXTRA = {20: ["--finetune-epochs", "8"], 32: ["--margin", "0.97", "--finetune-epochs", "15"],
                         44: ["--margin", "0.97", "--finetune-epochs", "15"]}
VARIANTS: dict[str, tuple[str, str, list[str]]] = {
    f"frontier-train-{d}": ("benchmarks.bench_frontier",
                            f"ResNet-56 against ResNet-{d}, recovered on the CIFAR-10 training set",
                            ["--siblings", str(d), "--no-flops", "--train-data", "cifar10_train_jpeg.npz",
                             *extra, "--finetune-lr", "0.01", "--episodes", "40",
                             "--reward-samples", "500", "--rounds", "3", "--statistic", "min",
                             "--out", f"runs/bench_frontier_r{d}"])
    for d, extra in _TRAIN_FRONTIER_EXTRA.items()
}
# Int8 against int8 (issue 24): the same runs with --quantize int8, ours and the siblings quantized alike.
VARIANTS.update({
    f"frontier-int8-{d}": ("benchmarks.bench_frontier",
                           f"Int8: ResNet-56 against ResNet-{d}, both post-training int8, recovered on the training set",
                           [*VARIANTS[f"frontier-train-{d}"][2][:-1], f"runs/bench_frontier_int8_r{d}",
                            "--quantize", "int8"])
    for d in _TRAIN_FRONTIER_EXTRA
})
# The same, with the lossless search split added to the JPEG training images (--train-with-search).
VARIANTS.update({
    f"frontier-train-search-{d}": (
        "benchmarks.bench_frontier",
        f"ResNet-56 against ResNet-{d}, recovered on the CIFAR-10 training set and the search split",
        [*VARIANTS[f"frontier-train-{d}"][2][:-1], f"runs/bench_frontier_search_r{d}", "--train-with-search"])
    for d in _TRAIN_FRONTIER_EXTRA
})
VARIANTS.update({
    f"frontier-int8-search-{d}": (
        "benchmarks.bench_frontier",
        f"Int8: ResNet-56 against ResNet-{d}, both post-training int8, recovered on the training set and the "
        "search split",
        [*VARIANTS[f"frontier-int8-{d}"][2][:-3], f"runs/bench_frontier_int8_search_r{d}", "--quantize", "int8",
         "--train-with-search"])
    for d in _TRAIN_FRONTIER_EXTRA
})
# Quantization-aware recovery on top of a finished int8 frontier run (its --out folder, made by frontier-int8-D).
VARIANTS.update({
    f"qat-{d}": ("benchmarks.bench_qat",
                 f"Int8: quantization-aware recovery of the ResNet-56 at ResNet-{d}'s int8 latency",
                 ["--run", f"runs/bench_frontier_int8_r{d}", "--qat-epochs", "2"])
    for d in _TRAIN_FRONTIER_EXTRA
})
# AMC's own point (flops=0.5; its paper: 91.9%, the unpruned ResNet-56 92.8%), recovered on the training set.
VARIANTS["frontier-train-flops"] = (
    "benchmarks.bench_frontier", "ResNet-56 at half its FLOPs (AMC's point), recovered on the CIFAR-10 training set",
    ["--siblings", "", "--train-data", "cifar10_train_jpeg.npz", "--finetune-epochs", "8", "--finetune-lr", "0.01",
     "--episodes", "40", "--reward-samples", "500", "--rounds", "3", "--statistic", "min",
     "--out", "runs/bench_frontier_flops"])
for _name, (_module, _title, _args) in VARIANTS.items():
    BENCHMARKS[_name] = (_module, _title)

HEADER = """# Benchmarks

Every number below was produced by the command shown with it, on the machine named with it.
`make bench` re-runs all of them and rewrites the sections (`python -m benchmarks.run NAME` for one).
"""


def _section(name: str, body: str, command: str) -> str:
    title = BENCHMARKS[name][1]
    machine = f"{platform.machine()}, {__import__('os').cpu_count()} CPUs, Python {platform.python_version()}"
    return (f"<!-- bench:{name} -->\n## {title}\n\n`{command}` — {dt.date.today().isoformat()}, {machine}\n\n"
            f"{body.strip()}\n<!-- /bench:{name} -->\n")


def write_section(name: str, body: str, command: str) -> None:
    text = DOC.read_text() if DOC.is_file() else HEADER
    section = _section(name, body, command)
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->\n", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    DOC.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}", file=sys.stderr)
        return 2
    status = 0
    for name in names:
        module_name = BENCHMARKS[name][0]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            print(f"{name}: not available ({exc})", file=sys.stderr)
            continue
        print(f"== {name} ==", file=sys.stderr, flush=True)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            args = [*VARIANTS[name][2], *extra] if name in VARIANTS else extra
            rc = module.main(args)
        body = out.getvalue()
        print(body)
        if rc != 0 or not body.strip():
            print(f"{name}: exited {rc} without results; docs/BENCHMARKS.md left as it was", file=sys.stderr)
            status = status or rc or 1
            continue
        command = f"python -m {module_name}" + (" " + " ".join(args) if args else "")
        write_section(name, body, command)
    return status


if __name__ == "__main__":
    sys.exit(main())
