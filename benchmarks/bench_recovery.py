"""Which recovery settings work with a few images? (the defaults of compressor.finetune come from here)

A pretrained ResNet-20 (needs ../shared/data) is damaged in a fixed way — blocks `layer1.1` and
`layer2.2` removed, the other first-stage and second-stage blocks at half width, BN re-estimated — and
trained back with each setting on the first `--images` search images (a tenth held out to pick the
epoch), `--epochs` epochs; accuracy on the first 2,000 report images. ResNet-20 rather than -56 keeps
one setting to a couple of minutes on 2 cores; the ranking is what carries over. `--teacher resnet56`
damages the ResNet-56 the frontier benchmark compresses instead (`--cut`), or rebuilds a search's own
pick from its policy (`--policy runs/.../latency-ms-1.1062`).

    python -m benchmarks.bench_recovery --epochs 5 --images 1500
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS: list[tuple[str, dict]] = [
    ("distill (default: lr 0.003, T 4, features 1)", {}),
    ("distill, lr 0.03", {"lr": 0.03}),
    ("distill, lr 0.01 (the default until 2026-11-28)", {"lr": 0.01}),
    ("distill, no feature term", {"feature_weight": 0.0}),
    ("distill, T 2", {"temperature": 2.0}),
    ("plain (labels), lr 0.01", {"method": "plain"}),
    ("distill + cutmix", {"mix": "cutmix"}),
    ("distill + mixup", {"mix": "mixup"}),
    ("distill + cutmix, lr 0.005", {"mix": "cutmix", "lr": 0.005}),
    ("distill, lr 0.01, warm-up 1 epoch", {"lr": 0.01, "warmup_epochs": 1.0}),
    ("distill, lr 0.003, warm-up 1 epoch", {"lr": 0.003, "warmup_epochs": 1.0}),
    ("distill + cutmix, lr 0.003, warm-up 1 epoch", {"mix": "cutmix", "lr": 0.003, "warmup_epochs": 1.0}),
    ("distill, lr 0.001", {"lr": 0.001}),
    ("distill + stage outputs (weight 1)", {"stage_weight": 1.0}),
    ("distill + cutmix + stage outputs (weight 1)", {"mix": "cutmix", "stage_weight": 1.0}),
    ("distill, lr 0.005", {"lr": 0.005}),
    ("distill + cutmix, no held-out slice", {"mix": "cutmix", "holdout": 0.0}),
    ("distill + labels (cross-entropy weight 0.5)", {"label_weight": 0.5}),
    ("distill + cutmix + labels (cross-entropy weight 0.5)", {"mix": "cutmix", "label_weight": 0.5}),
    # with --train-data: the training images alone, or with the lossless search images added ("search")
    ("distill, lr 0.01", {"lr": 0.01}),
    ("distill, lr 0.01 + labels (cross-entropy weight 0.5)", {"lr": 0.01, "label_weight": 0.5}),
    ("distill, lr 0.01, training data + search split", {"lr": 0.01, "search": True}),
    ("distill, lr 0.01 + labels (cross-entropy weight 0.5), training data + search split",
     {"lr": 0.01, "label_weight": 0.5, "search": True}),
]


def _policy_cut(path: str, pruner) -> tuple[str, list[int]]:
    """The kept channel counts of a search's pick, checked against the pruner's units."""
    file = Path(path)
    if file.is_dir():
        file = file / "policy.json"
    if not file.is_file():
        raise SystemExit(f"bench_recovery: {file} not found; pass a search's policy.json or its output folder")
    rows = json.loads(file.read_text())
    names = [u.name for u in pruner.units]
    if [r.get("unit") for r in rows] != names:
        raise SystemExit(f"bench_recovery: {file} is not a policy of this network's {len(names)} prunable units "
                         f"({names[0]} … {names[-1]})")
    kept = [int(r["kept"]) for r in rows]
    removed = sum(bool(r.get("removed")) for r in rows)
    return f"the pick in {file} ({removed} blocks removed)", kept


def _rebuild_as_searched(weights: Path, data: Path, kept: list[int]):
    """Prune, reconstruct and re-estimate BatchNorm exactly as a search with default settings does."""
    from compressor.config import SearchConfig
    from compressor.search import prepare

    config = SearchConfig(model="resnet56", data=f"cifar10:{data / 'cifar10_test.npz'}", target="flops=0.5",
                          prune_blocks=True, weights=str(weights))
    return prepare(config).build(kept).model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help="comma-separated setting numbers to run (from 0)")
    parser.add_argument("--teacher", default="resnet20", choices=["resnet20", "resnet56"],
                        help="the network damaged and distilled from (resnet56: blocks 1, 3, 5, 7 of each stage "
                             "removed, the ResNet-32 cut of the issue's probe)")
    parser.add_argument("--cut", default="blocks", choices=["blocks", "thin"],
                        help="resnet56 only: 'thin' keeps every block and thins the inner channels to 8/24/40 "
                             "of 16/32/64 per stage (the model the frontier benchmark picked at ResNet-44's "
                             "latency) instead of removing blocks")
    parser.add_argument("--policy", default=None,
                        help="resnet56 only: instead of a fixed cut, the pick of a search (its policy.json, or the "
                             "folder holding it), rebuilt the way the search built it (least-squares "
                             "reconstruction, BN re-estimation)")
    parser.add_argument("--train-data", default=None,
                        help="a file of --data-dir (such as cifar10_train_jpeg.npz) whose images recovery trains on "
                             "instead of the search split's first --images; settings marked 'search' add those "
                             "search images to it")
    parser.add_argument("--report-images", type=int, default=2000,
                        help="report images scored (from the first; at most 5,000)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    if args.policy is not None and args.teacher != "resnet56":
        parser.error("--policy rebuilds a ResNet-56 search's pick: use it with --teacher resnet56")
    data = Path(args.data_dir)
    if not (data / "cifar10_test.npz").is_file():
        print(f"bench_recovery: {data}/cifar10_test.npz not found; this benchmark needs ../shared/data", file=sys.stderr)
        return 1
    import torch

    from compressor import zoo
    from compressor.data import load_dataset, load_training_split, with_training
    from compressor.finetune import RecoveryConfig, recover
    from compressor.pruning import ChannelPruner
    from compressor.reconstruct import recalibrate_batchnorm
    from compressor.training import evaluate

    name = args.teacher
    entry = zoo.MODELS[name]
    full = load_dataset(f"cifar10:{data / 'cifar10_test.npz'}", input_shape=entry.input_shape, mean=entry.mean,
                        std=entry.std, seed=0)
    # Recovery trains on `train` (which for this file is the search split itself): both are cut to
    # `--images` (before 2026-11-29 only `search` was, so every run trained on all 5,000 search images).
    recovery_images = full.search.subset(range(args.images))
    bundle = dataclasses.replace(full, search=recovery_images, train=recovery_images,
                                 report=full.report.subset(range(min(args.report_images, len(full.report)))))
    train_only, both = bundle.train, None  # `both`: the training data and the search images (settings marked "search")
    if args.train_data is not None:
        if not (data / args.train_data).is_file():
            print(f"bench_recovery: {data / args.train_data} not found", file=sys.stderr)
            return 1
        train_only = load_training_split(f"cifar10:{data / args.train_data}", input_shape=entry.input_shape,
                                         mean=entry.mean, std=entry.std, seed=0)
        joined = with_training(bundle, train_only, spec=args.train_data, add_search=True)  # checked once
        bundle, both = dataclasses.replace(joined, train=train_only), joined.train
    weights = next((data / "weights").glob(f"{name}-*.th"))
    teacher = zoo.load_model(name, weights=str(weights)).model.eval()
    pruner = ChannelPruner(teacher, bundle.search.x[:1], prune_blocks=True)
    if name == "resnet20":
        damage = ("blocks `layer1.1`, `layer2.2` removed and the other first- and second-stage blocks at half "
                  "width")
        kept = [0 if u.block in ("layer1.1", "layer2.2") else u.kept_for(0.5) if u.removable else u.channels
                for u in pruner.units]
    elif args.policy is not None:
        damage, kept = _policy_cut(args.policy, pruner)
    elif args.cut == "thin":
        damage = "every block kept, inner channels thinned to 8, 24 and 40 of 16, 32 and 64 by stage"
        width = {"layer1": 8, "layer2": 24, "layer3": 40}
        kept = [u.kept_for(width[u.block.split(".")[0]] / u.channels) if u.removable and u.block else u.channels
                for u in pruner.units]
    else:
        damage = "blocks 1, 3, 5 and 7 of each stage removed (ResNet-32's depth)"
        kept = [0 if u.block and int(u.block.rsplit(".", 1)[1]) % 2 == 1 and int(u.block.rsplit(".", 1)[1]) < 8
                else u.channels for u in pruner.units]
    chosen = SETTINGS if args.only is None else [SETTINGS[int(i)] for i in args.only.split(",")]
    if args.policy is not None:
        damaged = _rebuild_as_searched(weights, data, kept)
    else:
        damaged = pruner.apply(kept).model
        recalibrate_batchnorm(damaged, full.search.x[:256])
    start_acc, teacher_acc = evaluate(damaged, bundle.report), evaluate(teacher, bundle.report)
    rows = []
    cache: dict = {}  # the teacher's answers, shared by settings that draw the same batches
    for label, setting in chosen:
        kw = dict(setting)
        if kw.pop("search", False) and both is None:
            print(f"bench_recovery: '{label}' needs --train-data", file=sys.stderr)
            return 1
        trained_on = dataclasses.replace(bundle, train=both if setting.get("search") else train_only)
        model = copy.deepcopy(damaged)
        t0 = time.perf_counter()
        torch.set_num_threads(args.threads)
        model, result = recover(model, trained_on, RecoveryConfig(epochs=args.epochs, **kw), teacher=teacher,
                                num_threads=args.threads, teacher_cache=cache)
        acc = evaluate(model, bundle.report)
        rows.append((label, acc, result, time.perf_counter() - t0))
        print(f"{label}: {acc:.4f} (best epoch {result.best_epoch}, "
              f"held-out {json.dumps([round(h['holdout_accuracy'], 3) for h in result.history])})",
              file=sys.stderr, flush=True)
    lines = [f"{name} (pretrained, {teacher_acc:.2%} on these {len(bundle.report):,} report images) with {damage}: "
             f"{start_acc:.2%} after BN re-estimation. Trained back {args.epochs} epochs (a tenth of the training images held out).",
             *[f"'{label}' trained on {result.train}; epoch picked on {result.holdout}." for label, _, result, _ in rows],
             "", f"| setting | accuracy ({len(bundle.report):,} report images) | best epoch | held-out accuracy by epoch | time |",
             "|---|---:|---:|---|---:|"]
    for label, acc, result, seconds in rows:
        held = ", ".join(f"{h['holdout_accuracy']:.3f}" for h in result.history)
        lines.append(f"| {label} | {acc:.2%} | {result.best_epoch} | {held} | {seconds:.0f} s |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
