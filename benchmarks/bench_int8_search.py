"""Int8 inside the search (issue 24, item 2): does the int8 latency table predict int8 models, and does
the search's float reward rank candidates as their int8 accuracy does? Needs ../shared/data.

1. The table. ResNet-56 pruned the way the search prunes it (whole blocks removable): the device's
   int8 lookup table is built on `local` (ONNX Runtime, 1 thread; every kernel and calibration model
   timed as post-training int8 ONNX), then `--variants` random pruned variants it never saw are
   predicted and measured as int8 (the fastest of the measurement's runs, as the frontier's searches
   use it). The same variants are timed in float32 too: their float→int8 speed-ups say whether a float
   table scaled by the unpruned network's speed-up would have done (it is the "constant ratio" column).
2. The proxy. `--candidates` distinct policies as a random search draws them (ResNet-56 at
   `--target`), each scored as the search scores it (accuracy on the reward images after pruning,
   least-squares reconstruction and BatchNorm re-estimation), then quantized to int8 exactly as a
   search's result is (calibrated on search images; the agreement check is off, since unrecovered
   candidates have near-tied classes) and scored from the int8 file on the same reward images.
   Spearman's rank correlation between the two, with a bootstrap 90% interval.

    python -m benchmarks.bench_int8_search --variants 10 --candidates 20
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _table_check(args, model, example, out: Path) -> dict:
    from profiler.devices.local import LocalDevice
    from profiler.export import export_for_timing
    from profiler.lut.space import random_variants
    from profiler.measure import measure
    from profiler.oracle import make_oracle
    from profiler.protocol import MeasureConfig

    t0 = time.perf_counter()
    oracle = make_oracle("local", model=model, example_input=example, prune_blocks=True, precision="int8",
                         lut_dir=out / "lut", statistic="min",
                         progress=lambda d, t, what: _log(f"  int8 table {d}/{t} {what}") if d == t or d % 50 == 0
                         else None)
    build_s = time.perf_counter() - t0
    table = oracle.table  # type: ignore[attr-defined]
    device, config = LocalDevice(), MeasureConfig(threads=1)

    def timed(m, precision: str, name: str) -> float:
        with tempfile.TemporaryDirectory(prefix="amc-bench-") as tmp:
            path = export_for_timing(m, example, Path(tmp) / f"{name}.onnx", precision=precision)
            return measure(device, path, config, cache=None).min_ms

    full_float, full_int8 = timed(model, "float32", "full"), timed(model, "int8", "full")
    rows = []
    for i, (kernels, variant) in enumerate(random_variants(model, example, args.variants, seed=args.seed + 1,
                                                           prune_blocks=True)):
        row = {"predicted_ms": table.predict_ms(kernels, oracle.family),  # type: ignore[attr-defined]
               "int8_ms": timed(variant, "int8", f"v{i}"), "float_ms": timed(variant, "float32", f"v{i}")}
        row["constant_ratio_ms"] = row["float_ms"] * full_int8 / full_float
        rows.append(row)
        _log(f"  variant {i + 1}/{args.variants}: int8 predicted {row['predicted_ms']:.3f} ms, measured "
             f"{row['int8_ms']:.3f} ms; float {row['float_ms']:.3f} ms ({row['float_ms'] / row['int8_ms']:.2f}x)")
    return {"rows": rows, "kernels": len(table), "build_s": build_s, "full_float_ms": full_float,
            "full_int8_ms": full_int8}


def _proxy(args, data: Path) -> dict:
    import numpy as np

    from benchmarks.bench_reward import _bootstrap, _draw_candidates
    from compressor.config import SearchConfig
    from compressor.export import onnx as onnx_export
    from compressor.export import quantize
    from compressor.predictors import spearman
    from compressor.search import prepare

    weights = next((data / "weights").glob("resnet56-*.th"))
    config = SearchConfig(model="resnet56", weights=str(weights), data=f"cifar10:{data / 'cifar10_test.npz'}",
                          target=args.target, prune_blocks=True, reward_samples=args.reward_samples, seed=args.seed)
    problem = prepare(config)
    candidates = _draw_candidates(problem, args.candidates, args.seed, max_episodes=50 * args.candidates)
    rows = []
    with tempfile.TemporaryDirectory(prefix="amc-proxy-") as tmp:
        for n, kept in enumerate(candidates):
            t0 = time.perf_counter()
            scored = problem.score(kept)
            model = problem.build(kept).model
            fp = onnx_export.export(model, problem.example, Path(tmp) / "c.onnx").path
            q = quantize.export(model, problem.example, Path(tmp) / "c.int8.onnx", calibration=problem.bundle.search,
                                float_path=fp, min_agreement=0.0, max_relative_p99=float("inf"))
            int8 = quantize.evaluate_file(q.path, problem.reward_split)
            rows.append({"float": scored["accuracy"], "int8": int8, "agreement": q.top1_agreement,
                         "seconds": time.perf_counter() - t0})
            _log(f"  [{n + 1}/{len(candidates)}] reward accuracy float {scored['accuracy']:.4f}, int8 {int8:.4f} "
                 f"({rows[-1]['seconds']:.0f} s)")
    x, y = [r["float"] for r in rows], [r["int8"] for r in rows]
    return {"rows": rows, "rho": spearman(np.array(x), np.array(y)), "interval": _bootstrap(x, y),
            "reward_images": len(problem.reward_split)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_int8_search", description=__doc__.splitlines()[0])
    p.add_argument("--variants", type=int, default=10, help="random pruned variants the table is checked on")
    p.add_argument("--candidates", type=int, default=20, help="policies for the proxy's rank correlation")
    p.add_argument("--target", default="flops=0.5", help="the budget the candidates are drawn under")
    p.add_argument("--reward-samples", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", default=str(DATA), help="../shared/data")
    p.add_argument("--out", default="runs/bench_int8_search", help="where the int8 table goes")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "cifar10_test.npz").is_file():
        _log(f"bench_int8_search: {data} has no cifar10_test.npz (see DESIGN.md, 'Data and weights')")
        return 1
    import torch

    from compressor import zoo

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    weights = next((data / "weights").glob("resnet56-*.th"))
    model = zoo.load_model("resnet56", weights=str(weights)).model.eval()
    example = torch.zeros(1, 3, 32, 32)
    _log("1. the int8 latency table of ResNet-56 on local")
    check = _table_check(args, model, example, out)
    _log("2. the float reward against the int8 reward")
    proxy = _proxy(args, data)
    print(render(args, check, proxy))
    return 0


def render(args, check: dict, proxy: dict) -> str:
    rows = check["rows"]

    def within(key: str) -> str:
        ok = sum(abs(r[key] - r["int8_ms"]) <= 0.10 * r["int8_ms"] for r in rows)
        err = statistics.mean(abs(r[key] - r["int8_ms"]) / r["int8_ms"] for r in rows)
        return f"{ok}/{len(rows)} within ±10% (mean |error| {err:.1%})"

    speedups = [r["float_ms"] / r["int8_ms"] for r in rows]
    lines = [
        f"ResNet-56 pruned as the search prunes it (whole blocks removable), on `local` (ONNX Runtime, 1 thread, the "
        f"fastest of 50 runs). The int8 table: {check['kernels']} int8 kernels, built and calibrated in "
        f"{check['build_s'] / 60:.1f} min. Unpruned: float {check['full_float_ms']:.3f} ms, int8 "
        f"{check['full_int8_ms']:.3f} ms ({check['full_float_ms'] / check['full_int8_ms']:.2f}×).", "",
        f"- {len(rows)} random pruned variants the table never saw, measured as int8: the int8 table predicts "
        f"{within('predicted_ms')}; the float latency scaled by the unpruned network's speed-up (a constant ratio) "
        f"{within('constant_ratio_ms')}. The variants' own float→int8 speed-ups range "
        f"{min(speedups):.2f}–{max(speedups):.2f}×.",
        "",
        "| variant | int8 predicted ms | int8 measured ms | error | float ms | speed-up | constant ratio ms |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r['predicted_ms']:.3f} | {r['int8_ms']:.3f} | "
                     f"{(r['predicted_ms'] - r['int8_ms']) / r['int8_ms']:+.1%} | {r['float_ms']:.3f} | "
                     f"{r['float_ms'] / r['int8_ms']:.2f}× | {r['constant_ratio_ms']:.3f} |")
    prows = proxy["rows"]
    diffs = [r["int8"] - r["float"] for r in prows]
    lo, hi = proxy["interval"]
    lines += [
        "",
        f"The float reward as a proxy for int8 accuracy: {len(prows)} policies of a random search at "
        f"`{args.target}`, each scored on the {proxy['reward_images']} reward images as the search scores it and "
        f"again from its int8 file. Spearman's rho **{proxy['rho']:.3f}** (bootstrap 90% interval {lo:.3f}–{hi:.3f}); "
        f"int8 minus float accuracy: mean {100 * statistics.mean(diffs):+.2f} points, range "
        f"{100 * min(diffs):+.2f} to {100 * max(diffs):+.2f}; median "
        f"{statistics.median(r['seconds'] for r in prows):.0f} s per candidate to quantize and score, against the "
        f"reward's fraction of a second, which is why the search keeps the float reward.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
