"""Search quality and speed on ResNet-56 / CIFAR-10 at 50% FLOPs (needs ../shared/data).

Reward on the first `--reward-samples` images of the search split (test images 0-4999); final accuracy
on the report split (test images 5000-9999), before fine-tuning. Runs:
  - DDPG exploring around the uniform policy (our default), with uniform and random search (same
    episodes, same exploration distribution) beside it;
  - DDPG and random search exploring uniformly over [a_min, 1] as AMC does;
  - DDPG (default exploration) without reconstruction;
  - the uniform policy under all four combinations of reconstruction and BN re-estimation.
Prints a markdown section (and the per-episode time split) on stdout.

    python -m benchmarks.bench_search --episodes 120 --reward-samples 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from compressor.config import SearchConfig
from compressor.search import run_search

REPO = Path(__file__).resolve().parents[1]


def _config(args, **kw) -> SearchConfig:
    data = Path(args.data_dir)
    base = dict(model="resnet56", data=f"cifar10:{data / 'cifar10_test.npz'}",
                weights=str(data / "weights" / "resnet56-4bfd9763.th"), target="flops=0.5",
                episodes=args.episodes, seed=args.seed, reward_samples=args.reward_samples)
    base.update(kw)
    return SearchConfig(**base)


def _progress(label: str):
    def on_event(event) -> None:
        if event.kind == "episode" and (event.episode % 10 == 0 or event.episode == event.episodes):
            r = event.record
            print(f"  [{label}/{event.phase}] episode {event.episode}/{event.episodes} acc {r['accuracy']:.4f} "
                  f"best {r['best_accuracy']:.4f} MACs {r['macs_ratio']:.3f} ({r['seconds']:.2f} s)",
                  file=sys.stderr, flush=True)
        elif event.kind == "phase":
            print(f"  [{label}] {event.phase}: {event.message}", file=sys.stderr, flush=True)
    return on_event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=120)
    parser.add_argument("--reward-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default=str(REPO / "runs" / "bench_search"))
    args = parser.parse_args(argv)
    if not (Path(args.data_dir) / "cifar10_test.npz").is_file():
        print(f"skipped: {args.data_dir} has no cifar10_test.npz", file=sys.stderr)
        return 0
    torch.set_num_threads(2)
    out = Path(args.out)
    t0 = time.time()
    runs = {}
    runs["ddpg"] = run_search(_config(args, compare=True), out / "ddpg", on_event=_progress("ddpg"))
    runs["ddpg-amc"] = run_search(_config(args, compare=True, uniform_prior=False), out / "ddpg-amc",
                                  on_event=_progress("ddpg-amc"))
    runs["ddpg-norec"] = run_search(_config(args, reconstruct=False), out / "ddpg-norec",
                                    on_event=_progress("ddpg-norec"))
    uniform = {}
    for rec in (True, False):
        for bn in (True, False):
            report = run_search(_config(args, strategy="uniform", reconstruct=rec, bn_recalibration=bn),
                                out / f"uniform-rec{int(rec)}-bn{int(bn)}")
            uniform[(rec, bn)] = report
    total = time.time() - t0
    (out / "summary.json").write_text(json.dumps({k: v["result"] for k, v in runs.items()}, indent=2))

    a = runs["ddpg"]
    base = a["baseline"]
    lines = [
        f"ResNet-56 (`resnet56-4bfd9763.th`), CIFAR-10, target `flops=0.5`, {args.episodes} episodes, seed "
        f"{args.seed}. Reward: {a['splits']['reward']}. Accuracy: {a['splits']['report']}, before fine-tuning. "
        f"Channels rounded to multiples of 8, a_min 0.2, block-internal channels pruned (option-A shortcuts "
        f"make the residual stream unprunable). Total wall time {total / 60:.1f} min.",
        "",
        "| policy | reconstruction | BN re-estimation | MACs kept | params kept | accuracy (reward images) "
        "| accuracy (report split) |",
        "|---|---|---|---:|---:|---:|---:|",
        f"| unpruned | | | 1.000 | 1.000 | {100 * base['search_accuracy']:.2f}% | {100 * base['accuracy']:.2f}% |",
    ]

    def row(name, rec, bn, s):
        lines.append(f"| {name} | {'yes' if rec else 'no'} | {'yes' if bn else 'no'} | "
                     f"{s['macs'] / base['macs']:.3f} | {s['params'] / base['params']:.3f} | "
                     f"{100 * s['search_accuracy']:.2f}% | {100 * s['accuracy']:.2f}% |")

    for (rec, bn), report in uniform.items():
        row("uniform", rec, bn, report["result"])
    amc = runs["ddpg-amc"]
    row(f"random, AMC exploration ({amc['compare']['random']['episodes']} episodes)", True, True,
        amc["compare"]["random"])
    row(f"DDPG, AMC exploration ({args.episodes} episodes)", True, True, amc["result"])
    row(f"random, around uniform ({a['compare']['random']['episodes']} episodes)", True, True,
        a["compare"]["random"])
    row(f"**DDPG, around uniform ({args.episodes} episodes)**", True, True, a["result"])
    row(f"DDPG, around uniform ({args.episodes} episodes)", False, True, runs["ddpg-norec"]["result"])
    t = a["episode_timing"]
    other = t["prune_s"] + t["reconstruct_s"] + t["bn_s"] + t["agent_s"]
    lines += [
        "",
        f"Time per DDPG episode (mean over {a['episodes']}; reward on {args.reward_samples} images): "
        f"pruning {t['prune_s']:.3f} s, reconstruction {t['reconstruct_s']:.3f} s, BN re-estimation "
        f"{t['bn_s']:.3f} s, evaluation {t['eval_s']:.3f} s, agent (actions + updates) {t['agent_s']:.3f} s; "
        f"total {t['seconds']:.3f} s, of which everything but evaluation is {100 * other / t['seconds']:.0f}%. "
        f"One-off setup (loading, caching the reconstruction's Gram matrices): {a['setup_seconds']:.1f} s.",
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
