"""Does quantization-aware recovery pay? For each model of a finished `bench_frontier --quantize int8`
run, the recovered network is trained a few more epochs with its weights and tensors rounded as the
int8 file rounds them (compressor/qat.py), quantized again, and compared with the post-training int8
file that run shipped and with its int8 sibling: accuracy on the report split scored from the files,
latency timed in interleaved rounds on `local`. Needs ../shared/data and the run's folder.

    python -m benchmarks.bench_frontier --siblings 32 --no-flops --train-data cifar10_train_jpeg.npz \\
        --margin 0.97 --finetune-epochs 15 --finetune-lr 0.01 --quantize int8 --out runs/bench_frontier_int8_r32
    python -m benchmarks.bench_qat --run runs/bench_frontier_int8_r32 --qat-epochs 2

Prints a markdown section on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.progress import log, search_progress

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="the --out folder of a bench_frontier --quantize int8 run")
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--qat-lr", type=float, default=0.001)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    args = parser.parse_args(argv)

    import torch

    from compressor.config import SearchConfig
    from compressor.export import onnx as onnx_export
    from compressor.export import quantize
    from compressor.search import _recover_int8, load_pruned, prepare
    from compressor.training import evaluate
    from profiler.devices.local import LocalDevice
    from profiler.measure import measure
    from profiler.protocol import MeasureConfig

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    results_file = run / "results.json"
    if not results_file.is_file():
        log(f"bench_qat: {results_file} is missing: give the --out folder of a finished "
            "`python -m benchmarks.bench_frontier --quantize int8` run")
        return 2
    frontier_results = json.loads(results_file.read_text())
    if frontier_results["settings"].get("quantize") != "int8":
        log(f"bench_qat: {run} was not run with --quantize int8")
        return 2
    device = LocalDevice()
    t_start = time.perf_counter()
    rows = []
    problem = None
    for point in frontier_results["frontier"]["points"]:
        folder = run / "frontier" / point["dir"]
        report = json.loads((folder / "report.json").read_text())
        saved = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        config = replace(SearchConfig.from_dict(saved["config"]), target="flops=0.5", qat_epochs=args.qat_epochs,
                         qat_lr=args.qat_lr)  # the target only sizes a search; nothing is searched here
        if problem is None:
            log(f"bench_qat: loading {config.model}, {config.data} and the training data {config.train_data}")
            problem = prepare(config)
        else:
            problem.config = config
        model = load_pruned(folder / "model.pt")
        ptq = report["quantized"]
        log(f"bench_qat: {point['target']}: float {report['result']['accuracy']:.2%}, post-training int8 "
            f"{ptq['accuracy']:.2%}; {args.qat_epochs} quantization-aware epochs at lr {args.qat_lr:g}")
        out = run / "qat" / point["dir"]
        out.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        model, qat = _recover_int8(problem, model, search_progress, out_dir=out)
        qat_s = time.perf_counter() - t0
        float_acc = evaluate(model, problem.bundle.report)
        float_path = onnx_export.export(model, problem.example, out / "model.onnx").path
        q = quantize.export(model, problem.example, out / "model.int8.onnx", calibration=problem.bundle.search,
                            float_path=float_path)
        acc = quantize.evaluate_file(q.path, problem.bundle.report)
        log(f"  after quantization-aware recovery: float {float_acc:.2%}, int8 {acc:.2%} (from the file)")
        rows.append({"target": point["target"], "float_before": report["result"]["accuracy"],
                     "ptq": ptq["accuracy"], "float_after": float_acc, "qat": acc, "qat_seconds": qat_s,
                     "history": qat["history"], "best_epoch": qat["best_epoch"],
                     "holdout_before": qat["holdout_accuracy_before"], "holdout": qat["holdout_accuracy"],
                     "ptq_file": str(folder / "model.int8.onnx"), "qat_file": str(q.path)})

    siblings = frontier_results["int8"]["siblings"]
    depths = [int(d) for d in frontier_results["settings"]["depths"]]
    files = [run / f"resnet{d}.int8.onnx" for d in depths]
    for r in rows:
        files += [Path(r["ptq_file"]), Path(r["qat_file"])]
    log(f"bench_qat: timing {len(files)} int8 files in {args.rounds} interleaved rounds")
    runs: list[list[float]] = [[] for _ in files]
    for _ in range(args.rounds):
        for i, path in enumerate(files):
            runs[i].append(measure(device, path, MeasureConfig(threads=1), cache=None).min_ms)
    ms = [min(r) for r in runs]
    sib_ms = dict(zip(depths, ms[:len(depths)]))
    for i, r in enumerate(rows):
        r["ptq_ms"], r["qat_ms"] = ms[len(depths) + 2 * i], ms[len(depths) + 2 * i + 1]
    results = {"run": str(run), "qat_epochs": args.qat_epochs, "qat_lr": args.qat_lr, "rows": rows,
               "siblings": {d: {"accuracy": siblings[str(d)]["accuracy"], "ms": sib_ms[d],
                                "float_accuracy": frontier_results["accuracy"].get(str(d))} for d in depths},
               "total_s": time.perf_counter() - t_start}
    (run / "qat" / "results.json").write_text(json.dumps(results, indent=2))
    print(render(results))
    return 0


def render(results: dict) -> str:
    """The markdown section for bench_qat's results.json."""
    lines = [f"The models of the int8 frontier run `{results['run']}`, each trained {results['qat_epochs']} more "
             f"epochs at lr {results['qat_lr']:g} with its weights and tensors rounded as its int8 file rounds them "
             "(compressor/qat.py; the same training data, teacher and held-out images as its recovery; the epoch "
             "kept by the simulated int8 network's held-out accuracy), then quantized as before. Accuracy on the "
             "report split from the files; int8 latency on `local` (ONNX Runtime, 1 thread), the fastest of "
             "interleaved rounds. Total " f"{results['total_s'] / 60:.0f} min.", "",
             "| model | float accuracy | int8 accuracy | int8 ms | int8 vs the int8 sibling |", "|---|---:|---:|---:|---|"]
    for d, s in results["siblings"].items():
        fa = f"{s['float_accuracy']:.2%}" if s.get("float_accuracy") is not None else ""
        lines.append(f"| ResNet-{d} | {fa} | {s['accuracy']:.2%} | {s['ms']:.3f} | |")
    sib = next(iter(results["siblings"].values()))
    for r in results["rows"]:
        def versus(acc: float, ms: float) -> str:
            return (f"{'faster' if ms <= sib['ms'] else 'slower'} ({ms / sib['ms']:.2f}×), "
                    f"{100 * (acc - sib['accuracy']):+.2f} points")
        lines.append(f"| ours at `{r['target']}`, post-training int8 | {r['float_before']:.2%} | {r['ptq']:.2%} | "
                     f"{r['ptq_ms']:.3f} | {versus(r['ptq'], r['ptq_ms'])} |")
        lines.append(f"| ours at `{r['target']}`, after quantization-aware recovery | {r['float_after']:.2%} | "
                     f"**{r['qat']:.2%}** | {r['qat_ms']:.3f} | {versus(r['qat'], r['qat_ms'])} |")
    for r in results["rows"]:
        hist = ", ".join(f"{h['holdout_accuracy']:.4f}" for h in r["history"])
        lines += ["", f"`{r['target']}`: simulated int8 held-out accuracy {r['holdout_before']:.4f} before, then {hist} "
                      f"(epoch {r['best_epoch']} kept); {r['qat_seconds'] / 60:.1f} min "
                      f"({r['qat_seconds'] / 60 / max(len(r['history']), 1):.1f} min per epoch)."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
