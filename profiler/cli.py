"""`amc bench`, `amc devices` and `amc lut build|check`: the profiler's command line (rich output for
people, `--json` for scripts).

Model names (a zoo name, `package.module:factory`) become PyTorch models through a `ModelLoader` the
composer passes to `register` (`server.profiler_cli` passes the zoo's): the profiler does not know the
search's model zoo. Without one, `amc bench` takes .onnx/.tflite files only."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from profiler.protocol import PRECISIONS

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

# A model name -> (the model in eval mode, an example input). The same name must give the same weights
# each time, so that the measurement cache recognises the exported file.
ModelLoader = Callable[[str], "tuple[nn.Module, torch.Tensor]"]

RUNTIME_CHOICES = ("onnxruntime", "litert", "tflite_runtime", "benchmark_model")


def _device_args(p: argparse.ArgumentParser, *, default: str | None = "local") -> None:
    p.add_argument("--device", default=default, required=default is None, metavar="SPEC",
                   help="local | adb:HOST:PORT (TCP) | adb:SERIAL (USB)" + (f" (default {default})" if default else ""))
    p.add_argument("--runtime", default="onnxruntime", choices=RUNTIME_CHOICES, help="runtime on the device")
    p.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    p.add_argument("--python", default="python3", help="Python command on an ADB device (default python3)")
    p.add_argument("--benchmark-binary", default=None, metavar="PATH",
                   help="path of the stock TFLite benchmark_model binary on the device (--runtime benchmark_model)")
    p.add_argument("--adb-key", type=Path, default=None, help="ADB private key (default ~/.config/amc/adbkey)")


def _drop_stub(subparsers: argparse._SubParsersAction, name: str) -> None:
    """Remove a placeholder parser the composer may have added for one of our commands."""
    if name in subparsers.choices:
        subparsers.choices.pop(name)
        subparsers._choices_actions[:] = [a for a in subparsers._choices_actions if a.dest != name]


def register(subparsers: argparse._SubParsersAction, *, load_model: ModelLoader | None = None) -> None:
    """Add `bench`, `devices` and `lut` to the `amc` command line; `load_model` turns model names into
    models (none: model files only)."""
    for name in ("bench", "devices", "lut"):
        _drop_stub(subparsers, name)
    bench = subparsers.add_parser("bench", help="measure a model's latency on a device",
                                  description="Time a model (.onnx/.tflite file or zoo name) on a device: warm-up, "
                                              "timed runs, median and p90. Results are cached per device and model.")
    bench.add_argument("model", help="path to .onnx/.tflite, or a zoo model name (e.g. demo-cnn)")
    _device_args(bench)
    bench.add_argument("--runs", type=int, default=50, help="timed runs (default 50)")
    bench.add_argument("--warmup", type=int, default=10, help="untimed warm-up runs (default 10)")
    bench.add_argument("--cpu-mask", default=None, metavar="HEX", help="pin to these CPUs (e.g. f0)")
    bench.add_argument("--cooldown", type=float, default=0.0, metavar="S", help="seconds of rest before timing")
    bench.add_argument("--no-cache", action="store_true", help="measure even if this model was measured before")
    bench.add_argument("--json", action="store_true", help="print the measurement as one JSON object")
    bench.add_argument("--all-models", action="store_true",
                       help="time the model on each phone model of the phone farm (one phone of each, at once) "
                            "instead of on --device; needs a farm (--ray or $AMC_RAY_ADDRESS)")
    bench.add_argument("--ray", default=None, metavar="HOST:PORT",
                       help="the phone farm's Ray cluster (default $AMC_RAY_ADDRESS; docs/FARM.md)")
    bench.set_defaults(func=run_bench, load_model=load_model)

    devices = subparsers.add_parser("devices", help="list devices (local, USB phones, registered TCP devices) with health",
                                    description="List devices with health; `add HOST:PORT` / `remove HOST:PORT` "
                                                "manage registered network devices.")
    devices.add_argument("--json", action="store_true", help="print the list as JSON")
    devices.add_argument("--no-health", action="store_true", help="list without contacting the devices")
    devices.add_argument("--ray", default=None, metavar="HOST:PORT",
                         help="list the phones of the phone farm on this Ray cluster (default $AMC_RAY_ADDRESS; "
                              "docs/FARM.md)")
    dsub = devices.add_subparsers(dest="devices_action", metavar="ACTION")
    add = dsub.add_parser("add", help="register a network device (HOST:PORT)")
    add.add_argument("address", help="HOST:PORT (e.g. 192.168.1.20:5555)")
    add.add_argument("--name", default=None, help="a label")
    add.add_argument("--no-check", action="store_true", help="register without checking it answers")
    rm = dsub.add_parser("remove", help="forget a registered network device")
    rm.add_argument("address", help="HOST:PORT")
    devices.set_defaults(func=run_devices)

    lut = subparsers.add_parser("lut", help="build or check a per-device latency lookup table",
                                description="Per-device latency lookup tables of fused kernels.")
    lsub = lut.add_subparsers(dest="lut_action", metavar="ACTION", required=True)
    build = lsub.add_parser("build", help="time the kernels a model's pruned variants can have")
    _device_args(build, default=None)
    build.add_argument("--model", required=True, help="zoo name or package.module:factory")
    build.add_argument("--round-to", type=int, default=8, help="channel rounding of the search (default 8)")
    build.add_argument("--a-min", type=float, default=0.2, help="smallest preserve ratio (default 0.2)")
    build.add_argument("--max-points", type=int, default=8,
                       help="channel counts timed per axis, the rest interpolated (0: all; default 8)")
    build.add_argument("--calibration-variants", type=int, default=10,
                       help="pruned variants measured whole, besides the full model, to calibrate (default 10)")
    build.add_argument("--runs", type=int, default=50, help="timed runs per kernel (default 50, as for whole models)")
    build.add_argument("--out", type=Path, default=None, help="LUT folder (default ~/.cache/amc/lut)")
    build.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="float32 (default), or int8: kernels and calibration models timed as post-training "
                            "int8 ONNX (a table of its own, for searches with --quantize int8)")
    build.add_argument("--json", action="store_true", help="print a JSON summary")
    build.set_defaults(func=run_lut_build, load_model=load_model)
    check = lsub.add_parser("check", help="share of random pruned variants predicted within ±10%%")
    _device_args(check, default=None)
    check.add_argument("--model", required=True, help="zoo name or package.module:factory")
    check.add_argument("--samples", type=int, default=10, help="random pruned variants (default 10)")
    check.add_argument("--round-to", type=int, default=8)
    check.add_argument("--a-min", type=float, default=0.2)
    check.add_argument("--runs", type=int, default=50, help="timed runs per variant (default 50)")
    check.add_argument("--out", type=Path, default=None, help="LUT folder (default ~/.cache/amc/lut)")
    check.add_argument("--seed", type=int, default=1)
    check.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="which table: float32 (default) or int8 (the variants timed as int8)")
    check.add_argument("--json", action="store_true", help="print a JSON summary")
    check.set_defaults(func=run_lut_check, load_model=load_model)


# -- helpers ------------------------------------------------------------------------------------------


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def _fail(message: str) -> int:
    _console(stderr=True).print(f"[red]error:[/red] {message}", markup=True)
    return 1


def _device_options(args: argparse.Namespace) -> dict[str, Any]:
    from profiler.devices import parse_device_spec

    opts: dict[str, Any] = {"benchmark_binary": args.benchmark_binary}
    if parse_device_spec(args.device).kind != "local":
        opts.update(python=args.python, key_path=args.adb_key)
    return opts


def _load_model(args: argparse.Namespace, spec: str) -> tuple[nn.Module, torch.Tensor]:
    load_model: ModelLoader | None = getattr(args, "load_model", None)
    if load_model is None:
        from compressor.errors import ModelLoadError

        raise ModelLoadError(f"{spec!r} is a model name, and this command line has no model zoo: run it as "
                             "`amc ...` (which composes the zoo), or give an .onnx/.tflite file")
    return load_model(spec)


@contextmanager
def _model_file(args: argparse.Namespace, spec: str):
    """A path to time: the file itself, or a zoo model exported to a temporary ONNX file."""
    path = Path(spec)
    if path.suffix.lower() in (".onnx", ".tflite"):
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        yield path
        return
    from profiler.export import export_onnx

    model, example = _load_model(args, spec)
    with tempfile.TemporaryDirectory(prefix="amc-bench-") as tmp:
        yield export_onnx(model, example, Path(tmp) / f"{spec.replace(':', '_')}.onnx")


@contextmanager
def _progress(enabled: bool, description: str):
    """A rich progress bar; yields a `(done, total, message)` callback."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[msg]}"), console=_console(stderr=True)) as bar:
        task = bar.add_task(description, total=None, msg="")

        def update(done: int, total: int, message: str) -> None:
            bar.update(task, completed=done, total=max(total, 1), msg=message)

        yield update


# -- commands -------------------------------------------------------------------------------------


def run_bench_all_models(args: argparse.Namespace) -> int:
    """`amc bench MODEL --all-models`: the model's latency on each phone model of the farm."""
    from compressor.errors import AmcError
    from profiler.cache import MeasurementCache
    from profiler.farm.names import farm_address, insecure_from_env
    from profiler.paths import default_cache_path
    from profiler.protocol import MeasureConfig

    address = farm_address(args.ray)
    if address is None:
        return _fail("--all-models times the model on every phone model of a phone farm, and no farm is set: set "
                     "AMC_RAY_ADDRESS or --ray HOST:PORT (docs/FARM.md). Without a farm there is only the one "
                     "device you name: amc bench MODEL --device SPEC")
    from profiler.farm.client import Farm, measure_each_model

    try:
        config = MeasureConfig(threads=args.threads, warmup=args.warmup, runs=args.runs, cpu_mask=args.cpu_mask,
                               cooldown_s=args.cooldown)
        cache = None if args.no_cache else MeasurementCache(default_cache_path())
        with _model_file(args, args.model) as path, _console(stderr=True).status(
                f"timing {args.model} on every phone model of the farm at {address}"):
            rows = measure_each_model(Farm(address, insecure=insecure_from_env()), path, config,
                                      runtime=args.runtime, cache=cache)
    except (AmcError, FileNotFoundError) as exc:
        return _fail(str(exc))
    rc = 0 if rows and all(r["median_ms"] is not None for r in rows) else 1  # every phone model measured
    if args.json:
        print(json.dumps({"model": args.model, "farm": address, "runtime": args.runtime, "threads": args.threads,
                          "phone_models": rows}))
        return rc
    from rich.table import Table

    table = Table(title=f"{args.model} on every phone model of the farm at {address} ({args.runtime}, "
                        f"{args.threads} thread{'s' if args.threads > 1 else ''})")
    for col in ("phone model", "phones", "median ms", "p90 ms", "min ms", "measured on", "note"):
        table.add_column(col, justify="left" if col in ("phone model", "measured on", "note") else "right")
    for r in rows:
        measured = r["median_ms"] is not None
        table.add_row(r["model"], str(r["phones"]), f"{r['median_ms']:.4g}" if measured else "-",
                      f"{r['p90_ms']:.4g}" if measured else "-", f"{r['min_ms']:.4g}" if measured else "-",
                      str(r.get("measured_on") or "-"), "cached" if r.get("cached") else (r["error"] or ""))
    _print_farm_table(table, empty_note=None if rows else "the farm serves no phones")
    return rc


def _print_farm_table(table, *, empty_note: str | None) -> None:
    """Print a table of the farm; `empty_note` (the farm has no phones) says how phones join it."""
    console = _console()
    console.print(table)
    if empty_note is not None:
        console.print(f"note: {empty_note}; run `amc device-host --address ADDRESS` on the hosts the phones are "
                      "plugged into", markup=False)


def run_bench(args: argparse.Namespace) -> int:
    if args.all_models:
        return run_bench_all_models(args)
    from compressor.errors import AmcError
    from profiler.cache import MeasurementCache
    from profiler.devices import open_device
    from profiler.measure import measure
    from profiler.paths import default_cache_path
    from profiler.protocol import MeasureConfig

    device = None
    try:
        config = MeasureConfig(threads=args.threads, warmup=args.warmup, runs=args.runs, cpu_mask=args.cpu_mask,
                               cooldown_s=args.cooldown)
        device = open_device(args.device, **_device_options(args))
        cache = None if args.no_cache else MeasurementCache(default_cache_path())
        with _model_file(args, args.model) as path:
            result = measure(device, path, config, runtime=args.runtime, cache=cache)
    except (AmcError, FileNotFoundError) as exc:
        return _fail(str(exc))
    finally:
        if device is not None:
            device.close()
    if args.json:
        data = result.raw if result.raw.get("kind") == "bench" else result.to_dict()
        data = {**data, "device_id": result.device_id, "cached": result.cached}
        print(json.dumps(data, indent=None))
        return 0
    from rich.table import Table

    table = Table(title=f"{args.model} on {args.device} ({args.runtime}, {args.threads} thread"
                        f"{'s' if args.threads > 1 else ''}){' [cached]' if result.cached else ''}")
    for col in ("median ms", "p90 ms", "mean ms", "std ms", "min ms", "max ms", "runs", "load ms", "temp °C"):
        table.add_column(col, justify="right")

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4g}"

    table.add_row(f(result.median_ms), f(result.p90_ms), f(result.mean_ms), f(result.std_ms), f(result.min_ms),
                  f(result.max_ms), str(result.runs), f(result.load_ms), f(result.temperature_c))
    _console().print(table)
    return 0


def run_farm_devices(args: argparse.Namespace, address: str) -> int:
    """`amc devices` with a farm: every phone of the cluster, with host, model, Android, health and lease."""
    from compressor.errors import AmcError
    from profiler.farm.client import Farm
    from profiler.farm.names import insecure_from_env

    try:
        with _console(stderr=True).status(f"asking the farm at {address}"):
            phones = Farm(address, insecure=insecure_from_env()).phones(check_health=not args.no_health)
    except AmcError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"devices": [p.to_dict() for p in phones], "notes": [f"farm: {address}"]}))
        return 0
    from rich.table import Table

    table = Table(title=f"phones of the farm at {address}")
    for col in ("spec", "host", "model", "android", "health", "lease", "measurements"):
        table.add_column(col)
    for p in phones:
        state = {"ok": "[green]ok[/green]", "unhealthy": "[red]down[/red]"}.get(p.health, p.health)
        lease = "-" if not p.lease else f"{p.lease['holder']}{' (measuring)' if p.lease.get('measuring') else ''}"
        table.add_row(p.spec, p.host, p.model or "?", p.android or "?", state, lease, str(p.measurements))
    _print_farm_table(table, empty_note=None if phones else "no phones")
    return 0


def run_devices(args: argparse.Namespace) -> int:
    from compressor.errors import AmcError
    from profiler.devices import open_device
    from profiler.farm.names import farm_address
    from profiler.registry import DeviceRegistry, discover

    action = getattr(args, "devices_action", None)
    address = farm_address(args.ray)
    if address is not None and action is None:
        return run_farm_devices(args, address)
    registry = DeviceRegistry()
    try:
        if action == "add":
            spec = registry.add(args.address, name=args.name)
            if not args.no_check:
                device = open_device(spec)
                try:
                    health = device.health()
                finally:
                    device.close()
                note = "healthy" if health.ok else f"registered, but not healthy now: {health.detail}"
            else:
                note = "registered"
            _console().print(f"{spec}: {note}", markup=False)
            return 0
        if action == "remove":
            removed = registry.remove(args.address)
            _console().print(f"{args.address}: {'removed' if removed else 'was not registered'}", markup=False)
            return 0 if removed else 1
        found, notes = discover(registry=registry, health=not args.no_health)
    except AmcError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps({"devices": [d.to_dict() for d in found], "notes": notes}))
        return 0
    from rich.table import Table

    table = Table(title="devices")
    for col in ("spec", "source", "health", "model", "python", "detail"):
        table.add_column(col)
    for d in found:
        state = "-" if d.ok is None else ("[green]ok[/green]" if d.ok else "[red]down[/red]")
        table.add_row(d.spec, d.source, state, str(d.info.get("model") or d.info.get("machine") or ""),
                      str(d.info.get("python") or ""), d.detail)
    console = _console()
    console.print(table)
    for note in notes:
        console.print(f"note: {note}", markup=False)
    return 0


def run_lut_build(args: argparse.Namespace) -> int:
    from compressor.errors import AmcError
    from profiler.cache import MeasurementCache
    from profiler.devices import open_device
    from profiler.lut.build import build_lut
    from profiler.lut.space import calibration_set, model_kernels
    from profiler.oracle import device_table
    from profiler.paths import default_cache_path
    from profiler.protocol import MeasureConfig

    device = None
    try:
        device = open_device(args.device, **_device_options(args))
        model, example = _load_model(args, args.model)
        config = MeasureConfig(threads=args.threads, runs=args.runs)
        table = device_table(device, lut_dir=args.out, runtime=args.runtime, threads=args.threads,
                             precision=args.precision)
        table.meta["device_spec"] = args.device
        mk = model_kernels(model, example, round_to=args.round_to, a_min=args.a_min)
        with tempfile.TemporaryDirectory(prefix="amc-lut-") as tmp:
            calibrate = calibration_set(model, example, Path(tmp), variants=args.calibration_variants,
                                        round_to=args.round_to, a_min=args.a_min, precision=args.precision)
            with _progress(not args.json, f"LUT {args.device}") as cb:
                table = build_lut(device, mk, runtime=args.runtime, config=config, table=table,
                                  max_points=args.max_points or None, round_to=args.round_to, a_min=args.a_min,
                                  cache=MeasurementCache(default_cache_path()),
                                  calibrate_with=calibrate, progress=cb)
    except AmcError as exc:
        return _fail(str(exc))
    finally:
        if device is not None:
            device.close()
    cal = table.calibration(mk.kernels)
    summary = {"path": str(table.path), "kernels": len(table), "device_id": table.device_id,
               "runtime": table.runtime, "threads": table.threads, "precision": table.precision,
               "predicted_full_ms": table.predict_ms(mk.kernels),
               "calibration": {"a": cal.a, "b": cal.b, "points": len(cal.points)}}
    if args.json:
        print(json.dumps(summary))
    else:
        _console().print(f"{table.precision} lookup table {summary['path']}: {summary['kernels']} kernels; "
                         f"{args.model} predicted "
                         f"{summary['predicted_full_ms']:.3f} ms (calibration a={cal.a:.3f}, b={cal.b:.4f} ms)",
                         markup=False)
    return 0


def run_lut_check(args: argparse.Namespace) -> int:
    from compressor.errors import AmcError
    from profiler.cache import MeasurementCache
    from profiler.devices import open_device
    from profiler.lut.check import check_lut
    from profiler.oracle import LutOracle, device_table
    from profiler.paths import default_cache_path
    from profiler.pool import DevicePool
    from profiler.protocol import MeasureConfig

    try:
        device = open_device(args.device, **_device_options(args))
        table = device_table(device, lut_dir=args.out, runtime=args.runtime, threads=args.threads,
                             precision=args.precision)
        if table.path is None or not table.path.is_file():
            more = "" if args.precision == "float32" else f" --precision {args.precision}"
            return _fail(f"no {args.precision} lookup table for {args.device} ({table.device_id}) at {table.path}; "
                         f"run `amc lut build --device {args.device} --model {args.model}{more}` first")
        pool = DevicePool([device], cache=MeasurementCache(default_cache_path()))
        oracle = LutOracle(table, pool, runtime=args.runtime,
                           config=MeasureConfig(threads=args.threads, runs=args.runs), save=False)
        model, example = _load_model(args, args.model)

        def measure_fn(m, x):
            # Measure without letting the check's own samples refine the calibration it is judging.
            from profiler.export import export_for_timing

            with tempfile.TemporaryDirectory(prefix="amc-check-") as tmp:
                path = export_for_timing(m, x, Path(tmp) / "v.onnx", precision=table.precision)
                result = pool.measure(path, oracle.config, runtime=args.runtime)
            return None if result is None else result.median_ms

        with _progress(not args.json, f"checking {args.device}") as cb:
            report = check_lut(table, measure_fn, model, example, samples=args.samples, seed=args.seed,
                               round_to=args.round_to, a_min=args.a_min, progress=cb)
        pool.close()
    except AmcError as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(report.to_dict()))
        return 0
    from rich.table import Table

    table_out = Table(title=f"{args.model} ({table.precision}) on {args.device}: {report.within:.0%} within ±10% "
                            f"(mean |error| {report.mean_abs_rel_error:.1%})")
    for col in ("#", "predicted ms", "measured ms", "error"):
        table_out.add_column(col, justify="right")
    for i, s in enumerate(report.samples, 1):
        err = (s["predicted_ms"] - s["measured_ms"]) / s["measured_ms"]
        table_out.add_row(str(i), f"{s['predicted_ms']:.4f}", f"{s['measured_ms']:.4f}", f"{err:+.1%}")
    _console().print(table_out)
    return 0


def main(argv: list[str] | None = None, *, load_model: ModelLoader | None = None) -> int:
    """`python -m profiler.cli ...`: the profiler's commands without the rest of `amc` (and, without
    `load_model`, without model names: `python -m server.profiler_cli` has the zoo's)."""
    parser = argparse.ArgumentParser(prog="amc")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), load_model=load_model)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
