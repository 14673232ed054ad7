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

from compressor.config import SearchConfig
from compressor.errors import AmcError, ConfigError
from server.latency import make_oracle, needs_latency
from server.options import DEFAULT_DEVICE_WAIT_S, add_search_arguments, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress", help="search a pruning policy for a model under a budget (AMC)",
        description="Prune a CNN layer by layer with AMC (DDPG) under a FLOPs, parameter or latency budget. "
                    "Writes report.json, report.md, model.onnx, model.pt, policy.json and episodes.csv into --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_search_arguments(p, repeatable=("target",))  # one flag per SearchConfig field
    p.add_argument("--reference", action="append", default=[], metavar="NAME=WEIGHTS|FILE.onnx",
                   help="a model a user could pick instead (zoo name with its weights, or an ONNX file), "
                        "scored on the same split and timed on the same device; with several --target, "
                        "shown on the frontier (repeatable)")
    p.add_argument("--out", default="runs/latest", help="output folder")
    p.add_argument("--resume", metavar="DIR", help="resume the killed search in DIR (same options)")
    p.add_argument("--device-wait-s", type=float, default=DEFAULT_DEVICE_WAIT_S, metavar="S",
                   help="how long to wait for the device when it stops answering (unplugged, rebooting) before "
                        "stopping; the work done is kept: continue with --resume DIR")
    p.add_argument("--json", action="store_true", help="print report.json instead of tables")
    p.set_defaults(func=run)


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
        targets = list(dict.fromkeys(args.target or ["flops=0.5"]))
        args.target = targets[0]
        config = config_from_args(args)
        out_dir = Path(args.resume or args.out)
        frontier = len(targets) > 1 or bool(args.reference)
        if frontier and args.resume:
            raise ConfigError("resume", "a frontier (several --target or --reference) cannot be resumed yet; "
                                        "resume each target's folder on its own")
        # A frontier is judged on measured latency, so it asks the device even for FLOPs targets.
        wants_device = frontier or any(t.lower().startswith("latency-ms") for t in targets)
        if needs_latency(config) or wants_device:
            console.log(f"latency: preparing the lookup table of {config.device} for {config.model}")
        if args.device_wait_s < 0:
            raise ConfigError("device_wait_s", f"--device-wait-s must be at least 0, not {args.device_wait_s}")

        def on_wait(notice: Any) -> None:
            console.log(f"[yellow]{notice.describe()}[/]")

        oracle = make_oracle(config, progress=_lut_progress(console), force=wants_device,
                             device_wait_s=args.device_wait_s, on_wait=on_wait)
        if frontier:
            result = _run_with_progress(config, out_dir, oracle=oracle, resume=False, console=console,
                                        targets=targets, references=args.reference)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print_frontier(result, out_dir)
            return 0
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _run_with_progress(config: SearchConfig, out_dir: Path, *, oracle, resume: bool, console,
                       targets: list[str] | None = None, references: list[str] | None = None) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from compressor.events import SearchEvent
    from compressor.search import run_search

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console,
                        transient=False)
    tasks: dict[str, TaskID] = {}

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
        elif event.kind == "epoch":  # recovery after the search
            r = event.record
            name = event.phase.replace("finetune", "recovery", 1).replace("qat", "int8 recovery", 1)
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=event.episodes, info="")
            held = r.get("holdout_accuracy")
            eta = r.get("eta_seconds")
            info = f"loss {r['loss']:.4f}" + (f"  held-out acc {held:.3f}" if held is not None else "") + \
                f"  {r['seconds']:.0f} s/epoch" + (f"  ETA {_duration(eta)}" if eta else "")
            progress.update(tasks[name], completed=event.episode, total=event.episodes, info=info)
        elif event.kind == "step":  # within a recovery epoch
            r = event.record
            name = event.phase.replace("finetune", "recovery", 1).replace("qat", "int8 recovery", 1)
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=event.episodes, info="")
            progress.update(tasks[name], completed=event.episode - 1 + r["images"] / max(r["of"], 1),
                            info=f"epoch {r['epoch']}: {r['images']}/{r['of']} images, epoch ends in "
                                 f"{_duration(r['epoch_eta_seconds'])}")

    with progress:
        if targets is not None:
            from compressor.frontier import run_frontier

            return run_frontier(config, targets, out_dir, oracle=oracle, references=references or [],
                                on_event=on_event)
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


def print_frontier(frontier: dict[str, Any], out_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"frontier: {frontier['model']} on {frontier['data']}, device {frontier['device']}")
    for col in ("model", "accuracy", "before recovery", "measured ms", "MACs", "blocks removed"):
        table.add_column(col, justify="left" if col == "model" else "right")
    u = frontier["unpruned"]
    table.add_row(f"{u['name']} (unpruned)", f"{100 * u['accuracy']:.2f}%", "—", _ms(u.get("latency_measured_ms")),
                  f"{u['macs']:,}", "—")
    for p in frontier["points"]:
        before = p.get("accuracy_before_recovery")
        table.add_row(p["target"], f"{100 * p['accuracy']:.2f}%", "—" if before is None else f"{100 * before:.2f}%",
                      _ms(p.get("latency_measured_ms")), f"{p['macs']:,}", str(p["blocks_removed"]))
    for r in frontier["references"]:
        table.add_row(f"{r['name']} (reference)", f"{100 * r['accuracy']:.2f}%", "—", _ms(r.get("latency_measured_ms")),
                      "—" if r.get("macs") is None else f"{r['macs']:,}", "—")
    console = Console()
    console.print(table)
    console.print(f"accuracy on {frontier['report_split']}; frontier.json, frontier.svg, report.md and one "
                  f"folder per target in {out_dir}/")


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.3f}"


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="amc")
    register(parser.add_subparsers())
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
