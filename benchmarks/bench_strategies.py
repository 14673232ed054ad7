"""Does DDPG earn its keep? DDPG, random search with the same exploration, and the uniform policy,
over several seeds at the same episode count, compared on the accuracy after recovery (issue 7,
part 6). Needs ../shared/data.

The pretrained ResNet-20 (cheap enough for 3 seeds × 3 strategies with recovery on 2 cores; the
ranking of strategies is what the benchmark is for) at `flops=0.5`, channel pruning only (no whole
blocks removed: AMC's setting), reward on the first `--reward-samples` search images, recovery by
distillation for `--finetune-epochs` epochs on the search split (test images 0-4999, a tenth held out
to pick the epoch), accuracy on the report split (test images 5000-9999). DDPG and random search both
explore around the uniform policy's ratio (`uniform_prior`, the default), so they differ only by
learning. The uniform policy is one deterministic episode; its seeds differ only in the recovery.

All runs share one `prepare`d problem (model, data, reconstruction statistics, scored policies,
the teacher's answers during recovery), so the setup is paid once and the search times compare.
Prints a markdown section on stdout; progress on stderr. The defaults are the documented run's
settings (2 recovery epochs rather than 3: the run took 29 min on the shared 2-core machine).

    python -m benchmarks.bench_strategies --episodes 30 --reward-samples 300 --finetune-epochs 2 --seeds 0,1,2

At AMC's own budget (100 warm-up episodes of random actions, then 300 with decaying noise), with the
best-reward-so-far curve of each strategy (mean ± std over seeds) written to `--curve`:
    python -m benchmarks.bench_strategies --episodes 400 --warmup 100 --reward-samples 300 \
        --finetune-epochs 2 --seeds 0,1,2 --strategies ddpg,ddpg-amc,random,uniform --curve docs/strategies-400.svg
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from benchmarks.progress import log, search_progress

REPO = Path(__file__).resolve().parents[1]
STRATEGIES = ("ddpg", "random", "uniform")
# Variants a run may name beside the strategies: (strategy, extra SearchConfig fields).
VARIANTS = {"ddpg-amc": ("ddpg", {"noise_decay": 0.95})}  # DDPG with AMC's fixed noise decay


def _progress(event) -> None:
    search_progress(event, phases=False)


def _mean_std(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet32", "resnet44", "resnet56"])
    parser.add_argument("--target", default="flops=0.5")
    parser.add_argument("--episodes", type=int, default=30)
    parser.add_argument("--reward-samples", type=int, default=300)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=None, help="DDPG warm-up episodes (default: the search's, "
                        "min(100, episodes / 4))")
    parser.add_argument("--train-data", default=None, help="recover on this training set (a file in --data-dir, "
                        "or cifar10:PATH) instead of the search split")
    parser.add_argument("--curve", default=None, help="write the best-reward-so-far plot (SVG) here")
    parser.add_argument("--no-local-moves", action="store_true", help="DDPG and random search propose every "
                        "episode (AMC's setting) instead of every other episode after the warm-up being a local "
                        "move around the best candidate, which both strategies share")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated, of {', '.join([*STRATEGIES, *VARIANTS])} (ddpg-amc: DDPG with AMC's "
                             "fixed exploration-noise decay 0.95 instead of one fitted to the episodes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_strategies"))
    parser.add_argument("--json", default=None, help="write every run's numbers here as they finish")
    args = parser.parse_args(argv)
    data = Path(args.data_dir)
    if not (data / "cifar10_test.npz").is_file():
        log(f"bench_strategies: {data}/cifar10_test.npz not found; this benchmark needs ../shared/data")
        return 1
    import torch

    from compressor.config import SearchConfig
    from compressor.search import prepare, run_search

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STRATEGIES and s not in VARIANTS]
    if unknown:
        log(f"bench_strategies: unknown strategies {unknown}; choose from {[*STRATEGIES, *VARIANTS]}")
        return 2
    weights = next((data / "weights").glob(f"{args.model}-*.th"))
    base = SearchConfig(model=args.model, weights=str(weights), data=f"cifar10:{data / 'cifar10_test.npz'}",
                        target=args.target, episodes=args.episodes, reward_samples=args.reward_samples,
                        finetune_epochs=args.finetune_epochs, prune_blocks=False, warmup=args.warmup,
                        local_moves=not args.no_local_moves,
                        train_data=(None if not args.train_data else args.train_data if ":" in args.train_data
                                    else f"cifar10:{data / args.train_data}"))
    t_start = time.perf_counter()
    problem = prepare(base)
    setup_s = time.perf_counter() - t_start
    log(f"setup {setup_s:.0f} s")
    results: dict[str, list[dict]] = {s: [] for s in strategies}
    report = None
    for seed in seeds:
        for name in strategies:
            strategy, extra = VARIANTS.get(name, (name, {}))
            config = SearchConfig(**{**base.to_dict(), "strategy": strategy, "seed": seed, **extra})
            log(f"  {name}, seed {seed}")
            t0 = time.perf_counter()
            report = run_search(config, Path(args.out) / f"{name}-{seed}", on_event=_progress, problem=problem)
            result = report["result"]
            row = {"seed": seed, "before": result["accuracy_before_finetune"], "after": result["accuracy"],
                   "search_accuracy": result["search_accuracy"], "macs_ratio": result["macs"] / report["baseline"]["macs"],
                   "search_s": report["search_seconds"], "recovery_s": report["recovery"]["seconds"],
                   "total_s": time.perf_counter() - t0, "episodes": report["episodes"],
                   "curve": report["curves"]["best_reward_so_far"][strategy]}
            results[name].append(row)
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
            log(f"  {name}, seed {seed}: " + json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                         for k, v in row.items()}))
    assert report is not None
    total_min = (time.perf_counter() - t_start) / 60
    baseline = report["baseline"]["accuracy"]
    lines = [
        f"{args.model} (pretrained, {baseline:.2%} unpruned on the report split) at `{args.target}`, channel pruning "
        f"only (`prune_blocks=False`), {args.episodes} episodes (uniform: one), reward on the first "
        f"{args.reward_samples} search images, DDPG and random search both exploring around the uniform policy, "
        f"{base.warmup_episodes} warm-up episodes, "
        + ("no local moves (each strategy proposes every episode); " if args.no_local_moves else
           "local moves on every other episode after the warm-up; ")
        + "DDPG's exploration noise decays to a tenth of its start over the "
        "episodes after the warm-up (ddpg-amc: AMC's fixed 0.95 per episode). "
        f"Recovery: distillation from the unpruned network, {args.finetune_epochs} epochs on the search split "
        "(test images 0-4999, a tenth held out to pick the epoch). Accuracy on the report split (test images "
        f"5000-9999). Seeds {args.seeds}; mean ± sample standard deviation over seeds. Torch threads "
        f"{args.threads}; total {total_min:.0f} min (setup {setup_s:.0f} s, shared by all runs).",
        "",
        "| strategy | accuracy before recovery (%) | accuracy after recovery (%) | reward images (%) "
        "| MACs kept | search s | recovery s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in strategies:
        rows = results[name]
        lines.append(
            f"| {name} | {_mean_std([r['before'] for r in rows], 100)} | {_mean_std([r['after'] for r in rows], 100)} "
            f"| {_mean_std([r['search_accuracy'] for r in rows], 100)} "
            f"| {_mean_std([r['macs_ratio'] for r in rows], 1, 3)} | {_mean_std([r['search_s'] for r in rows], 1, 0)} "
            f"| {_mean_std([r['recovery_s'] for r in rows], 1, 0)} |")
    lines += _curve_lines(results, strategies, base, args.curve)
    lines += ["", "Per seed (before → after recovery):", ""]
    for name in strategies:
        per = ", ".join(f"seed {r['seed']}: {r['before']:.2%} → {r['after']:.2%}" for r in results[name])
        lines.append(f"- {name}: {per}")
    print("\n".join(lines))
    return 0


def _curve_lines(results: dict[str, list[dict]], strategies: list[str], base, path: str | None) -> list[str]:
    """Best reward so far at a few episodes (mean ± std over seeds) and, with `path`, the plot."""
    from compressor.curves import curves_svg, mean_band

    bands = {name: mean_band([r["curve"] for r in results[name]]) for name in strategies}
    length = max(len(m) for m, _ in bands.values())
    marks = sorted({m for m in (10, 25, 50, 100, 150, 200, 300, 400) if m < length} | {length})
    lines = ["", "Best reward so far (mean ± std over seeds) at episode:", "",
             "| strategy | " + " | ".join(str(m) for m in marks) + " |", "|---|" + "---:|" * len(marks)]
    for name, (mean, std) in bands.items():
        cells = [f"{mean[min(m, len(mean)) - 1]:.4f} ± {std[min(m, len(std)) - 1]:.4f}" for m in marks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if path:
        Path(path).write_text(curves_svg({n: m for n, (m, _) in bands.items()}, bands={n: s for n, (_, s) in bands.items()},
                                         warmup=base.warmup_episodes, title="best reward so far (mean ± std over seeds)"))
        lines += ["", f"Plot: `{path}`."]
    return lines


if __name__ == "__main__":
    sys.exit(main())
