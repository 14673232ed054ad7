"""`amc compress`: run a search from the command line with a live progress bar.

It lives beside the server because it composes the search with a device's latency oracle
(`profiler`), which the search package itself never imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from compressor.config import REWARD_KINDS, STRATEGIES, SearchConfig
from compressor.errors import AmcError, ConfigError
from server.latency import make_oracle, needs_latency


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="search a pruning policy for a model under a budget (AMC)",
        description="Prune a CNN layer by layer with AMC (DDPG) under a FLOPs, parameter or latency budget. "
                    "Writes report.json, report.md, model.onnx, model.pt, policy.json and episodes.csv into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", help="zoo name (demo-cnn, resnet56, mobilenet-v2, ...) or package.module:factory")
    p.add_argument("--weights", help="weights file (state dict; loaded with weights_only=True) or .safetensors")
    p.add_argument("--data", help="digits | cifar10:PATH | imagefolder:PATH")
    p.add_argument("--target", default="flops=0.5", help="flops=F | params=F (fractions to keep) | latency-ms=MS")
    p.add_argument("--reward", choices=REWARD_KINDS, default=None,
                   help="accuracy-guaranteed mode: trade error against cost instead of clamping to --target")
    p.add_argument("--strategy", choices=STRATEGIES, default="ddpg")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--warmup", type=int, default=None,
                   help="DDPG warm-up episodes (default: 100, at most a quarter of --episodes)")
    p.add_argument("--no-uniform-prior", action="store_true",
                   help="explore uniformly over [a-min, 1] as AMC does, instead of around the uniform policy")
    p.add_argument("--device", default="local", help="local | adb:SERIAL | adb:HOST:PORT (latency targets)")
    p.add_argument("--out", default="runs/latest", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--granularity", choices=("channel", "weight"), default="channel")
    p.add_argument("--a-min", type=float, default=0.2, help="smallest preserve ratio of a layer")
    p.add_argument("--round-to", type=int, default=8, help="kept channels are multiples of this")
    p.add_argument("--no-reconstruct", action="store_true", help="skip least-squares reconstruction")
    p.add_argument("--no-bn-recalibration", action="store_true", help="skip BatchNorm re-estimation")
    p.add_argument("--prune-residual", action="store_true",
                   help="also prune channels coupled through residual additions")
    p.add_argument("--reward-samples", type=int, default=None,
                   help="images of the search split used for the reward (default: all)")
    p.add_argument("--finetune-epochs", type=int, default=0)
    p.add_argument("--compare", action="store_true",
                   help="also run uniform and random baselines at the same budget and episode count")
    p.add_argument("--tflite", action="store_true", help="also export model.tflite (needs the tflite extra)")
    p.add_argument("--resume", metavar="DIR", help="resume the killed search in DIR (same options)")
    p.add_argument("--json", action="store_true", help="print report.json instead of tables")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    missing = [name for name in ("model", "data") if getattr(args, name) is None]
    if missing:
        raise ConfigError(missing[0], f"--{missing[0]} is required")
    return SearchConfig(
        model=args.model, data=args.data, target=args.target, strategy=args.strategy, episodes=args.episodes,
        seed=args.seed, reward=args.reward, device=args.device, weights=args.weights,
        granularity=args.granularity, a_min=args.a_min, round_to=args.round_to,
        reconstruct=not args.no_reconstruct, bn_recalibration=not args.no_bn_recalibration,
        warmup=args.warmup, reward_samples=args.reward_samples, finetune_epochs=args.finetune_epochs,
        compare=args.compare, prune_residual=args.prune_residual, tflite=args.tflite,
        uniform_prior=not args.no_uniform_prior)


def _lut_progress(console):
    """A progress callback for building the device's lookup table (done once per device and model)."""
    state = {"last": -1}

    def progress(done: int, total: int, what: str) -> None:
        step = int(10 * done / max(total, 1))
        if step != state["last"] or done == total:
            state["last"] = step
            console.log(f"latency table: {done}/{total} {what}")
    return progress


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    console = Console(stderr=True, log_path=False)
    try:
        config = config_from_args(args)
        out_dir = Path(args.resume or args.out)
        if needs_latency(config):
            console.log(f"latency: preparing the lookup table of {config.device} for {config.model}")
        oracle = make_oracle(config, progress=_lut_progress(console))
        report = _run_with_progress(config, out_dir, oracle=oracle, resume=bool(args.resume), console=console)
    except AmcError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2
    except KeyboardInterrupt:
        console.print(f"[yellow]interrupted; resume with[/] amc compress ... --resume {args.resume or args.out}")
        return 130
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_summary(report, out_dir)
    return 0


def _run_with_progress(config: SearchConfig, out_dir: Path, *, oracle, resume: bool, console) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from compressor.events import SearchEvent
    from compressor.search import run_search

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                        transient=False)
    tasks: dict[str, int] = {}

    def on_event(event: SearchEvent) -> None:
        if event.kind == "phase":
            console.log(f"{event.phase}: {event.message}")
        elif event.kind == "episode":
            r = event.record
            if event.phase not in tasks:
                tasks[event.phase] = progress.add_task(event.phase, total=event.episodes, info="")
            info = (f"reward {r['reward']:.4f}  acc {r['accuracy']:.3f}  best {r['best_accuracy']:.3f}  "
                    f"MACs {r['macs_ratio']:.3f}" + (f"  {r['latency_ms']:.2f} ms" if r.get("latency_ms") else ""))
            progress.update(tasks[event.phase], completed=event.episode, total=event.episodes, info=info)

    with progress:
        return run_search(config, out_dir, oracle=oracle, on_event=on_event, resume=resume)


def print_summary(report: dict[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    from compressor.report import comparison_rows

    base = report["baseline"]
    table = Table(title=f"{report['model']} on {report['data']}, target {report['target']}")
    for col in ("policy", "MACs", "MACs kept", "params", "accuracy", "predicted ms", "measured ms"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for name, s in comparison_rows(report):
        table.add_row(name, f"{s['macs']:,}", f"{s['macs'] / base['macs']:.3f}", f"{s['params']:,}",
                      f"{100 * s['accuracy']:.2f}%", _ms(s.get("latency_predicted_ms")),
                      _ms(s.get("latency_measured_ms")))
    console = Console()
    console.print(table)
    console.print(f"accuracy on {report['splits']['report']}; outputs in {out_dir}/")


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="amc")
    register(parser.add_subparsers())
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
