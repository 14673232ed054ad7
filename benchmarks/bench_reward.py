"""Does the search's reward predict the recovered model? (issue 7, part 5) Needs ../shared/data.

The pretrained ResNet-20 (cheap enough to recover 20 candidates on 2 cores; ResNet-56 would take
about three times as long per candidate) at `flops=0.5`, whole blocks removable, reward on the first
`--reward-samples` search images — the search's own `prepare`. `--candidates` distinct policies are
drawn exactly as a `random` search draws them (the environment's action wall, exploration around the
uniform policy), so every one is a candidate the search could produce, within budget. For each:

- the search's reward today: accuracy on the reward images after pruning, reconstruction and
  BatchNorm re-estimation (`Problem.score`);
- predictors from `compressor.predictors` (a few mimicking steps of the recovery's loss on the search
  images outside the reward set, then accuracy / agreement / KL on the reward images; PRACTISE's
  recoverability = the pooled-feature mimicking loss after those steps, lower is better);
- the truth: accuracy on the report split after a short fixed recovery (`compressor.finetune.recover`,
  distillation from the unpruned network, `--epochs` epochs on the search split, a tenth held out to
  pick the epoch; the teacher's answers shared across candidates).

Prints Spearman's rank correlation of each predictor with the recovered accuracy (with a bootstrap
90% interval over candidates) and each predictor's cost per candidate (median; pruning,
reconstruction and BN re-estimation included, the teacher's answers shared as a search would share
them). Progress on stderr; `--json` writes every candidate's numbers.

    python -m benchmarks.bench_reward --candidates 20 --epochs 3 --reward-samples 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _draw_candidates(problem, count: int, seed: int, max_episodes: int) -> list[list[int]]:
    """Distinct policies as the `random` strategy's episodes propose them (action wall included)."""
    from compressor.env import PruningEnv
    from compressor.strategies import make_strategy

    config = problem.config
    env = PruningEnv(problem.pruner, budget=problem.budget, a_min=config.a_min)
    strategy = make_strategy("random", pruner=problem.pruner, budget=problem.budget, a_min=config.a_min,
                             warmup=config.warmup_episodes, seed=seed, uniform_prior=config.uniform_prior)
    seen: list[list[int]] = []
    for episode in range(max_episodes):
        state = env.reset()
        while not env.done:
            state, _, _ = env.step(strategy.act(state, episode=episode, step=env.t))
        if env.kept not in seen:
            seen.append(list(env.kept))
        if len(seen) == count:
            break
    return seen


def _bootstrap(x, y, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentile of Spearman's rho over candidates resampled with replacement."""
    import numpy as np

    from compressor.predictors import spearman

    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rhos = []
    for _ in range(resamples):
        idx = rng.integers(0, len(x), len(x))
        rho = spearman(x[idx], y[idx])
        if rho == rho:  # not nan (a resample of constant values)
            rhos.append(rho)
    return float(np.percentile(rhos, 5)), float(np.percentile(rhos, 95))


def _table(rows: list[dict], args, *, steps: list[int], mimic_images: int, report_images: int,
           recovery_images: int, minutes: float | None) -> str:
    """The markdown section: each predictor's Spearman rho with the recovered accuracy, and the candidates."""
    from compressor.predictors import spearman

    truth = [r["recovered"] for r in rows]

    def median(values) -> float:
        return statistics.median(values)

    predictors: list[tuple[str, list[float], float]] = [
        ("reward today: accuracy after BN re-estimation (`Problem.score`)", [r["reward"] for r in rows],
         median([r["reward_s"] for r in rows]))]
    for k in [0, *steps]:
        get = [r["predictors"][k] for r in rows]
        cost = median([g["seconds"] for g in get])
        label = "no mimicking" if k == 0 else f"{k} mimicking steps"
        if k > 0:
            predictors.append((f"accuracy on the reward images after {label}", [g["accuracy"] for g in get], cost))
        predictors += [
            (f"agreement with the teacher's top-1, {label}", [g["agreement"] for g in get], cost),
            (f"−KL to the teacher's softened outputs, {label}", [-g["kl"] for g in get], cost),
            (f"−pooled-feature MSE (PRACTISE recoverability), {label}",
             [-(g["feature_mse"] if g["feature_mse"] is not None else float("inf")) for g in get], cost)]
    recovery_s = median([r["recovery_s"] for r in rows])
    reward_accs = [r["reward"] for r in rows]
    lines = [
        f"{args.model} (pretrained) at `{args.target}`, whole blocks removable, {len(rows)} distinct candidates drawn "
        f"as a `random` search draws them (seed {args.seed}; action wall, exploration around the uniform policy): "
        f"MACs kept {min(r['macs_ratio'] for r in rows):.3f}–{max(r['macs_ratio'] for r in rows):.3f}, "
        f"{sum(1 for r in rows if r['blocks_removed'])} with blocks removed. Reward images: the first "
        f"{args.reward_samples} search images; mimicking on the other {mimic_images} (batches of 64, "
        "augmented, lr 0.001, the recovery's loss: KL at T 4 + pooled-feature MSE). The truth: accuracy on the "
        f"first {report_images} report images after {args.epochs} epochs of recovery (distillation on "
        f"{recovery_images} search images, "
        f"a tenth held out to pick the epoch; median {recovery_s:.0f} s per candidate). Reward accuracy "
        f"{min(reward_accs):.2%}–{max(reward_accs):.2%}; recovered {min(truth):.2%}–{max(truth):.2%}. Torch "
        f"threads {args.threads}, a shared 2-core machine (costs are medians over candidates); total "
        + (f"{minutes:.0f} min." if minutes is not None else "(table rebuilt from the run's --json)."),
        "",
        "| predictor | Spearman ρ with recovered accuracy | bootstrap 90% interval | cost per candidate |",
        "|---|---:|---:|---:|",
    ]
    for label, values, cost in predictors:
        lo, hi = _bootstrap(values, truth)
        lines.append(f"| {label} | {spearman(values, truth):+.3f} | {lo:+.2f} … {hi:+.2f} | {cost:.1f} s |")
    lines.append(f"| (the truth itself: {args.epochs} epochs of recovery) | +1.000 | | {recovery_s:.0f} s |")
    lines += ["", "| # | MACs kept | blocks removed | reward | accuracy after "
              f"{steps[-1]} steps | recovered |", "|---:|---:|---:|---:|---:|---:|"]
    for i in sorted(range(len(rows)), key=lambda i: -truth[i]):
        r = rows[i]
        lines.append(f"| {i + 1} | {r['macs_ratio']:.3f} | {r['blocks_removed']} | {r['reward']:.2%} "
                     f"| {r['predictors'][steps[-1]]['accuracy']:.2%} | {r['recovered']:.2%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=["resnet20", "resnet32", "resnet44", "resnet56"])
    parser.add_argument("--target", default="flops=0.5")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3, help="recovery epochs (the truth)")
    parser.add_argument("--reward-samples", type=int, default=500)
    parser.add_argument("--steps", default="10,30", help="mimicking steps at which the predictors are read")
    parser.add_argument("--recovery-images", type=int, default=None,
                        help="first N search images for recovery (default: all; smaller only to try the benchmark)")
    parser.add_argument("--report-images", type=int, default=5000, help="first N report images for the truth")
    parser.add_argument("--seed", type=int, default=0, help="draws the candidates")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--json", default=None, help="write every candidate's numbers here")
    parser.add_argument("--from-json", default=None,
                        help="print the section from a --json file of an earlier run (same other arguments)")
    args = parser.parse_args(argv)
    data = Path(args.data_dir)
    if not (data / "cifar10_test.npz").is_file():
        _log(f"bench_reward: {data}/cifar10_test.npz not found; this benchmark needs ../shared/data")
        return 1
    steps = [int(s) for s in args.steps.split(",")]
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
        for row in rows:
            row["predictors"] = {int(k): v for k, v in row["predictors"].items()}
        print(_table(rows, args, steps=steps, mimic_images=5000 - args.reward_samples,
                     report_images=args.report_images, recovery_images=args.recovery_images or 5000, minutes=None))
        return 0
    import torch

    from compressor.config import SearchConfig
    from compressor.finetune import RecoveryConfig, recover
    from compressor.predictors import answers, mimic_scores
    from compressor.search import prepare
    from compressor.training import evaluate

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    weights = next((data / "weights").glob(f"{args.model}-*.th"))
    config = SearchConfig(model=args.model, weights=str(weights), data=f"cifar10:{data / 'cifar10_test.npz'}",
                          target=args.target, prune_blocks=True, reward_samples=args.reward_samples, seed=args.seed)
    problem = prepare(config)
    teacher = problem.model.eval()
    bundle = problem.bundle
    report = bundle.report.subset(range(min(args.report_images, len(bundle.report))),
                                  f"{bundle.report.description}, first {args.report_images}")
    search = bundle.search
    if args.recovery_images is not None:
        search = search.subset(range(args.recovery_images), f"{search.description}, first {args.recovery_images}")
    recovery_bundle = dataclasses.replace(bundle, train=None, search=search, report=report)
    mimic_images = bundle.search.x[args.reward_samples:]  # the reward images stay unseen until scored
    reward_answers = answers(teacher, problem.reward_split)
    mimic_cache: dict = {}
    teacher_cache: dict = {}
    candidates = _draw_candidates(problem, args.candidates, args.seed, max_episodes=50 * args.candidates)
    units = problem.pruner.units
    full_macs = problem.pruner.cost_model.cost(problem.pruner.cost_model.full).macs
    _log(f"setup {time.perf_counter() - t_start:.0f} s; {len(candidates)} candidates")
    rows = []
    for n, kept in enumerate(candidates):
        t0 = time.perf_counter()
        scored = problem.score(kept)
        reward_s = scored["prune_s"] + scored["reconstruct_s"] + scored["bn_s"] + scored["eval_s"]
        timings: dict[str, float] = {}
        student = problem.build(kept, timings).model
        build_s = sum(timings.values())
        scores = mimic_scores(student, teacher, mimic_images, problem.reward_split, checkpoints=[0, *steps],
                              teacher_answers=reward_answers, cache=mimic_cache, seed=args.seed)
        row = {"kept": kept, "macs_ratio": scored["macs"] / full_macs,
               "blocks_removed": sum(1 for u, k in zip(units, kept) if u.block and k == 0),
               "reward": scored["accuracy"], "reward_s": reward_s, "predictors": {}}
        evals = 0.0
        for s in scores:
            a = s.agreement
            cost = build_s + s.seconds - evals  # one comparison at this step count, none before
            evals += s.eval_seconds
            row["predictors"][s.steps] = {"accuracy": a.accuracy, "agreement": a.agreement, "kl": a.kl,
                                          "feature_mse": a.feature_mse, "seconds": cost}
        t1 = time.perf_counter()
        model = problem.build(kept).model
        model, result = recover(model, recovery_bundle, RecoveryConfig(epochs=args.epochs, seed=0), teacher=teacher,
                                teacher_cache=teacher_cache, num_threads=args.threads)
        row["recovered"] = evaluate(model, report, num_threads=args.threads)
        row["recovery_s"] = time.perf_counter() - t1
        row["best_epoch"] = result.best_epoch
        rows.append(row)
        p = row["predictors"]
        _log(f"[{n + 1}/{len(candidates)}] MACs {row['macs_ratio']:.3f} blocks {row['blocks_removed']} "
             f"reward {row['reward']:.4f} " + " ".join(f"acc@{k} {v['accuracy']:.4f} mse@{k} {v['feature_mse']:.4f}"
                                                      for k, v in p.items())
             + f" -> recovered {row['recovered']:.4f} (recovery {row['recovery_s']:.0f} s, "
               f"candidate {time.perf_counter() - t0:.0f} s)")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(_table(rows, args, steps=steps, mimic_images=len(mimic_images), report_images=len(report),
                 recovery_images=len(search), minutes=(time.perf_counter() - t_start) / 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
