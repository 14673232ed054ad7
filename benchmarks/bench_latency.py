"""Latency truth: how well the lookup table predicts real latency, how noisy a measurement is, what a
measurement over (loopback) ADB costs beyond its timed runs, and a latency-targeted search against the
FLOPs-targeted one at the same measured latency.

1. LUT accuracy on `local`: for each model, `profiler.oracle.make_oracle` builds the device's table
   (kernels timed, calibrated on `--calibration` whole pruned variants), then `--samples` *other*
   random pruned variants (held out: no calibration configuration is scored) are predicted through
   exactly the search's path, `oracle.predict_ms(pruner.cost_model.kernels(kept))`, and measured
   (exported to ONNX, timed with the default protocol, cache bypassed).
2. Noise: coefficient of variation of `--repeats` measurements of the same model (cache bypassed).
3. ADB overhead: a phone emulator on a free loopback port, `adb:127.0.0.1:PORT`; wall time of one
   measurement minus the time of its timed runs, for a first push (agent and model), a new model
   (agent already there) and a model already on the phone.
4. ResNet-56 (pretrained, CIFAR-10; skipped without ../shared/data): FLOPs-targeted search, its model
   measured, then a latency-targeted search at that measured latency.

    python -m benchmarks.bench_latency --samples 100 --calibration 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
WHOLE_MODELS = None  # MeasureConfig() default: what the search uses to measure candidates


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _within(pred: list[float], meas: list[float], tol: float = 0.10) -> float:
    p, m = np.asarray(pred), np.asarray(meas)
    return float(np.mean(np.abs(p - m) <= tol * m)) if len(m) else float("nan")


def _rel_errors(pred: list[float], meas: list[float]) -> np.ndarray:
    p, m = np.asarray(pred), np.asarray(meas)
    return np.abs(p - m) / m


# -- 1. lookup-table accuracy ------------------------------------------------------------------------
def lut_accuracy(name: str, *, samples: int, calibration: int, max_points: int | None, work: Path,
                 seed: int) -> dict[str, Any]:
    from compressor import zoo
    from compressor.pruning import ChannelPruner
    from profiler.cache import MeasurementCache
    from profiler.devices import LocalDevice
    from profiler.export import export_onnx
    from profiler.lut import LatencyTable, model_kernels
    from profiler.measure import measure
    from profiler.oracle import make_oracle
    from profiler.paths import default_cache_path
    from profiler.protocol import MeasureConfig

    torch.manual_seed(0)
    loaded = zoo.load_model(name)
    model, x = loaded.model.eval(), torch.zeros(1, *loaded.entry.input_shape)
    cache = MeasurementCache(default_cache_path())
    t0 = time.perf_counter()
    # The default table folder ($AMC_CACHE_DIR, a fresh one): the latency search reuses this table.
    oracle = make_oracle("local", model=model, example_input=x, cache=cache,
                         max_points=max_points, calibration_variants=calibration,
                         progress=lambda d, t, m: _log(f"  [{name} lut] {d}/{t} {m}") if d % 25 == 0 else None)
    build_s = time.perf_counter() - t0
    table = oracle.table  # type: ignore[attr-defined]
    # A second copy refined with every measurement after it was predicted, as the oracle does in a
    # search (measure_ms -> observe): each variant is still predicted before it is used.
    online = LatencyTable.load(table.path)

    # The calibration configurations (make_oracle -> calibration_set: full, narrowest, then seed 0).
    mk = model_kernels(model, x)
    assert mk.sampler is not None
    rng0 = random.Random(0)
    calib = {tuple(mk.kernels), tuple(mk.sampler(None)[0])}
    calib |= {tuple(mk.sampler(rng0)[0]) for _ in range(max(calibration - 1, 0))}

    pruner = ChannelPruner(model, x)
    device = LocalDevice()
    # The unpruned model was a calibration point; measured again before and after scoring, it shows
    # how far the machine's speed drifts while the variants are measured.
    full_path = export_onnx(model, x, work / f"{name}-full.onnx", validate=False)
    full_kernels = pruner.cost_model.kernels([u.channels for u in pruner.units])
    full_before = measure(device, full_path, MeasureConfig(threads=1), cache=None).median_ms
    rng = random.Random(seed)
    pred, raw, meas, pred_online, skipped = [], [], [], [], 0
    t0 = time.perf_counter()
    while len(meas) < samples:
        kept = [rng.choice(u.candidates) for u in pruner.units]
        kernels = pruner.cost_model.kernels(kept)
        if tuple(kernels) in calib:
            skipped += 1
            continue
        p = oracle.predict_ms(kernels)
        path = export_onnx(pruner.apply(kept).model, x, work / f"{name}-scored.onnx", validate=False)
        m = measure(device, path, MeasureConfig(threads=1), cache=None).median_ms
        pred.append(p)
        raw.append(table.raw_sum(kernels))
        meas.append(m)
        pred_online.append(online.predict_ms(kernels))
        online.observe(kernels, m)
        if len(meas) % 20 == 0:
            _log(f"  [{name}] {len(meas)}/{samples} scored, {_within(pred, meas):.0%} within ±10% so far")
    full_after = measure(device, full_path, MeasureConfig(threads=1), cache=None).median_ms
    half = len(meas) // 2
    err = _rel_errors(pred, meas)
    raw_err = _rel_errors(raw, meas)
    online_err = _rel_errors(pred_online, meas)
    return {"online_within": _within(pred_online, meas), "online_mean_err": float(online_err.mean()),
            "online_max_err": float(online_err.max()),
            "model": name, "build_s": build_s, "kernels": len(table), "score_s": time.perf_counter() - t0,
            "samples": len(meas), "skipped": skipped, "within": _within(pred, meas),
            "mean_err": float(err.mean()), "max_err": float(err.max()),
            "raw_within": _within(raw, meas), "raw_mean_err": float(raw_err.mean()),
            "meas_min": min(meas), "meas_max": max(meas), "pred": pred, "meas": meas, "raw": raw,
            "pred_online": pred_online, "full_pred": oracle.predict_ms(full_kernels), "full_before": full_before,
            "full_after": full_after, "first_half": _within(pred[:half], meas[:half]),
            "second_half": _within(pred[half:], meas[half:]),
            "calibration": table.calibration(pruner.cost_model.kernels([u.channels for u in pruner.units]))}


# -- 2. noise ----------------------------------------------------------------------------------------
def noise(name: str, *, repeats: int, work: Path) -> dict[str, Any]:
    from compressor import zoo
    from profiler.devices import LocalDevice
    from profiler.export import export_onnx
    from profiler.measure import measure
    from profiler.protocol import MeasureConfig

    torch.manual_seed(0)
    loaded = zoo.load_model(name)
    x = torch.zeros(1, *loaded.entry.input_shape)
    path = export_onnx(loaded.model.eval(), x, work / f"{name}-noise.onnx", validate=False)
    device = LocalDevice()
    medians = [measure(device, path, MeasureConfig(threads=1), cache=None).median_ms for _ in range(repeats)]
    mean = statistics.fmean(medians)
    return {"model": name, "repeats": repeats, "mean": mean, "cv": statistics.stdev(medians) / mean,
            "min": min(medians), "max": max(medians)}


# -- 3. ADB overhead ---------------------------------------------------------------------------------
def adb_overhead(work: Path) -> dict[str, Any]:
    from compressor import zoo
    from device_agent.phone_sim.server import PhoneSimulator
    from profiler.devices import open_device
    from profiler.devices.keys import ensure_adb_key
    from profiler.export import export_onnx
    from profiler.measure import measure
    from profiler.protocol import MeasureConfig

    key = ensure_adb_key(work / "config" / "adbkey")
    torch.manual_seed(0)
    paths = []
    for i in range(4):  # ResNet-20 (0.27 M parameters, a ~1.1 MB ONNX file), different weights each
        loaded = zoo.load_model("resnet20")
        x = torch.zeros(1, *loaded.entry.input_shape)
        paths.append(export_onnx(loaded.model.eval(), x, work / f"adb-{i}.onnx", validate=False))
    config = MeasureConfig(threads=1)
    samples: dict[str, list[dict[str, float]]] = {}
    with PhoneSimulator(0, work / "phone", serial="BENCH-1", auth_keys=str(key) + ".pub") as sim:
        device = open_device(f"adb:{sim.address}", key_path=key)
        cases = [("first push (connect, agent + model)", paths[0])]
        cases += [("new model (agent already on the phone)", p) for p in paths[1:]]
        cases += [("model already on the phone", p) for p in paths[1:]]
        for label, path in cases:
            t0 = time.perf_counter()
            m = measure(device, path, config, cache=None)
            wall = time.perf_counter() - t0
            timed = m.runs * m.mean_ms / 1000
            samples.setdefault(label, []).append(
                {"wall": wall, "timed": timed, "overhead": wall - timed,
                 "load_warmup": (m.load_ms or 0) / 1000 + config.warmup * m.mean_ms / 1000})
            _log(f"  [adb] {label}: wall {wall:.2f} s, timed runs {timed:.2f} s")
        # 16 kernels timed one agent run each, then in one run (what a table does), alternately twice.
        from compressor.latency import KernelSpec
        from profiler.lut import LUT_MEASURE, build_lut, model_kernels, time_kernel, time_kernels

        specs = [KernelSpec("conv", c, d, k=3, h=8, w=8) for c in (8, 16, 24, 32) for d in (8, 16, 24, 32)]
        kernel_runs: dict[str, list[float]] = {"one agent run each": [], "all in one agent run": []}
        medians: dict[str, list[float]] = {}
        for _ in range(2):
            t0 = time.perf_counter()
            one = [time_kernel(device, k, runtime="onnxruntime", config=LUT_MEASURE, work_dir=work) for k in specs]
            kernel_runs["one agent run each"].append((time.perf_counter() - t0) / len(specs))
            t0 = time.perf_counter()
            many = time_kernels(device, specs, runtime="onnxruntime", config=LUT_MEASURE, work_dir=work)
            kernel_runs["all in one agent run"].append((time.perf_counter() - t0) / len(specs))
            medians = {"one": one, "many": [float(m) for m in many]}
            _log(f"  [adb] 16 kernels: {kernel_runs['one agent run each'][-1]:.3f} s a kernel one by one, "
                 f"{kernel_runs['all in one agent run'][-1]:.3f} s in one run")
        ratios = [m / o for o, m in zip(medians["one"], medians["many"], strict=True)]

        # A whole lookup table through the same phone: its kernels go 16 to an agent run (measure_many).

        tables = []
        for name in ("resnet20", "mobilenet-v2"):
            loaded = zoo.load_model(name)
            x = torch.zeros(1, *loaded.entry.input_shape)
            t0 = time.perf_counter()
            table = build_lut(device, model_kernels(loaded.model.eval(), x), lut_dir=work / "adb-lut" / name)
            tables.append({"model": name, "kernels": len(table), "wall": time.perf_counter() - t0})
            _log(f"  [adb] {name}'s table: {len(table)} kernels in {tables[-1]['wall']:.1f} s")
        device.close()
    rows = []
    for label, runs in samples.items():
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rows.append({"case": label, "n": len(runs), "size_mb": paths[0].stat().st_size / 1e6, **row})
    return {"rows": rows, "tables": tables, "kernel_runs": kernel_runs,
            "kernel_ratio": (min(ratios), statistics.median(ratios), max(ratios))}


# -- 4. latency-targeted vs FLOPs-targeted search ----------------------------------------------------
def searches(*, data_dir: Path, episodes: int, reward_samples: int, seed: int, work: Path) -> dict[str, Any] | None:
    from compressor.config import SearchConfig
    from compressor.search import run_search
    from profiler.devices import LocalDevice
    from profiler.measure import measure
    from profiler.protocol import MeasureConfig
    from server.compress_cli import make_oracle

    weights = data_dir / "weights" / "resnet56-4bfd9763.th"
    npz = data_dir / "cifar10_test.npz"
    if not (weights.is_file() and npz.is_file()):
        return None
    base = dict(model="resnet56", data=f"cifar10:{npz}", weights=str(weights), device="local",
                episodes=episodes, reward_samples=reward_samples, seed=seed)

    def progress(label: str):
        def on_event(event) -> None:
            if event.kind == "episode" and (event.episode % 20 == 0 or event.episode == event.episodes):
                r = event.record
                _log(f"  [{label}] episode {event.episode}/{event.episodes} acc {r['accuracy']:.4f} "
                     f"MACs {r['macs_ratio']:.3f}")
            elif event.kind == "phase":
                _log(f"  [{label}] {event.phase}: {event.message}")
        return on_event

    device = LocalDevice()

    def measured(*paths: Path, rounds: int = 5) -> list[float]:
        # Interleaved rounds, so a slow spell of the machine hits every model alike.
        runs: list[list[float]] = [[] for _ in paths]
        for _ in range(rounds):
            for i, path in enumerate(paths):
                runs[i].append(measure(device, path, MeasureConfig(threads=1), cache=None).median_ms)
        return [statistics.median(r) for r in runs]

    t0 = time.perf_counter()
    flops_cfg = SearchConfig(target="flops=0.5", **base)
    flops = run_search(flops_cfg, work / "search-flops", oracle=make_oracle(flops_cfg),
                       on_event=progress("flops"))
    flops_s = time.perf_counter() - t0
    x_ms = measured(work / "search-flops" / "model.onnx")[0]
    from compressor import zoo
    from compressor.errors import BudgetInfeasible
    from compressor.pruning import ChannelPruner
    from profiler.export import export_onnx

    full = zoo.load_model("resnet56", weights=str(weights))
    example = torch.zeros(1, *full.entry.input_shape)
    pruner = ChannelPruner(full.model.eval(), example)

    def kernels_of(report: dict) -> list:
        return pruner.cost_model.kernels([report["result"]["channels"].get(u.name, u.channels) for u in pruner.units])

    t0 = time.perf_counter()
    oracle = make_oracle(SearchConfig(target=f"latency-ms={x_ms:.4f}", **base))
    target, note = x_ms, None
    try:
        lat_cfg = SearchConfig(target=f"latency-ms={target:.4f}", **base)
        lat = run_search(lat_cfg, work / "search-latency", oracle=oracle, on_event=progress("latency"))
    except BudgetInfeasible as exc:
        # The machine ran faster when the FLOPs model was measured than when the table was calibrated:
        # the table's view of the FLOPs model is the same latency on the table's scale.
        target = max(oracle.predict_ms(kernels_of(flops)), (exc.smallest or 0.0) * 1.005)
        note = (f"`latency-ms={x_ms:.4f}` was refused (the table predicts at least {exc.smallest:.3f} ms for the "
                f"narrowest network: the machine ran faster when the FLOPs model was measured than when the table "
                f"was calibrated), so the latency search ran at the table's prediction for the FLOPs model, "
                f"`latency-ms={target:.4f}`.")
        _log(f"  [latency] {note}")
        lat_cfg = SearchConfig(target=f"latency-ms={target:.4f}", **base)
        lat = run_search(lat_cfg, work / "search-latency-2", oracle=oracle, on_event=progress("latency"))
    lat_dir = work / ("search-latency" if note is None else "search-latency-2")
    lat_s = time.perf_counter() - t0
    # Re-measure both final models and the unpruned one the same way, interleaved.
    full_path = export_onnx(full.model.eval(), example, work / "resnet56-full.onnx", validate=False)
    full_ms, flops_ms, latency_ms = measured(full_path, work / "search-flops" / "model.onnx", lat_dir / "model.onnx")
    # The lookup table's view of both results (one table, no drift between them).
    predicted = {"flops": oracle.predict_ms(kernels_of(flops)), "latency": oracle.predict_ms(kernels_of(lat))}
    return {"target_ms": x_ms, "latency_target_ms": target, "note": note, "full_ms": full_ms, "flops": flops,
            "latency": lat,
            "flops_ms": flops_ms, "latency_ms": latency_ms, "predicted": predicted,
            "flops_s": flops_s, "latency_s": lat_s, "episodes": episodes, "reward_samples": reward_samples}


# -- report ------------------------------------------------------------------------------------------
def _markdown(args, acc: list[dict], noi: list[dict], adb: dict | None, search: dict | None, total_s: float) -> str:
    lines = [
        f"Device `local` (this machine's CPU, ONNX Runtime, 1 thread); whole models timed with the default "
        f"protocol (10 warm-up, 50 runs, median); total {total_s / 60:.1f} min.",
    ]
    if acc:
        lines += _lut_markdown(args, acc)
    if noi:
        lines += ["", "### Measurement noise", "",
                  f"The same model measured {args.repeats} times in a row (cache bypassed, a new agent process "
                  "each time).", "", "| model | mean of medians | CV | min–max |", "|---|---|---|---|"]
        for r in noi:
            lines.append(f"| {r['model']} (unpruned) | {r['mean']:.3f} ms | {r['cv']:.1%} | "
                         f"{r['min']:.3f}–{r['max']:.3f} ms |")
    lines += _rest_markdown(args, adb, search)
    return "\n".join(lines) + "\n"


def _lut_markdown(args, acc: list[dict]) -> list[str]:
    lines = [
        "",
        "### Lookup table accuracy (random pruned variants, held out from calibration)",
        "",
        f"Per model: `make_oracle('local', model=...)` builds the table (`max_points={args.max_points}`, "
        f"calibrated on the full, the narrowest and {max(args.calibration - 1, 0)} random pruned variants, seed 0), "
        f"then {args.samples} other random pruned variants (seed {args.seed}; any configuration used for "
        "calibration is skipped) are predicted with `oracle.predict_ms(pruner.cost_model.kernels(kept))` and "
        "measured. Goal: ≥ 99% within ±10% (nn-Meter, Pixel 4 CPU; a plain per-operator sum gets 91.3% there).",
        "",
        "| model | kernels timed | build + calibration | scored | **within ±10%** | mean rel. error | max rel. error "
        "| refined online: within ±10% (mean, max error) | plain kernel sum: within ±10% (mean error) "
        "| measured range |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    pred_all, meas_all, raw_all, online_all = [], [], [], []
    for r in acc:
        pred_all += r["pred"]
        meas_all += r["meas"]
        raw_all += r["raw"]
        online_all += r["pred_online"]
        lines.append(f"| {r['model']} | {r['kernels']} | {r['build_s']:.0f} s | {r['samples']} | "
                     f"**{r['within']:.1%}** | {r['mean_err']:.1%} | {r['max_err']:.1%} | "
                     f"{r['online_within']:.1%} ({r['online_mean_err']:.1%}, {r['online_max_err']:.1%}) | "
                     f"{r['raw_within']:.1%} ({r['raw_mean_err']:.1%}) | "
                     f"{r['meas_min']:.2f}–{r['meas_max']:.2f} ms |")
    if len(acc) > 1:
        err = _rel_errors(pred_all, meas_all)
        raw_err = _rel_errors(raw_all, meas_all)
        on_err = _rel_errors(online_all, meas_all)
        lines.append(f"| **all** | | | {len(meas_all)} | **{_within(pred_all, meas_all):.1%}** | {err.mean():.1%} | "
                     f"{err.max():.1%} | {_within(online_all, meas_all):.1%} ({on_err.mean():.1%}, "
                     f"{on_err.max():.1%}) | {_within(raw_all, meas_all):.1%} ({raw_err.mean():.1%}) | |")
    lines += ["", "*within ±10%*: the table as calibrated when it was built (the search's first predictions). "
              "*Refined online*: the same variants, each predicted before its own measurement is added to the "
              "calibration (`LutOracle.measure_ms` does that during a search). *Plain kernel sum*: Σ kernel "
              "latencies with the runtime's per-inference overhead counted once, no calibration."]
    lines += ["", "Drift: the unpruned model (a calibration point) measured again right before and right after "
              "the variants were scored, and the share within ±10% in the first and second half of the scoring "
              "order:", "",
              "| model | unpruned: predicted | measured before | measured after | within ±10%: first half "
              "| second half |", "|---|---|---|---|---|---|"]
    for r in acc:
        lines.append(f"| {r['model']} | {r['full_pred']:.3f} ms | {r['full_before']:.3f} ms | {r['full_after']:.3f} ms "
                     f"({r['full_after'] / r['full_before'] - 1:+.1%}) | {r['first_half']:.0%} | {r['second_half']:.0%} |")
    lines += ["", "Calibration learned (per model structure; `measured ≈ a·Σ kernels + b` per op group):", ""]
    for r in acc:
        lines.append(f"- {r['model']}: {r['calibration'].describe()}")
    return lines


def _rest_markdown(args, adb: dict | None, search: dict | None) -> list[str]:
    lines: list[str] = []
    if adb is not None:
        lines += ["", "### Overhead per candidate over loopback ADB", "",
                  "Phone emulator (`device_agent.phone_sim.PhoneSimulator`, in-process) on a free port, device "
                  "`adb:127.0.0.1:PORT`; ResNet-20 ONNX. Overhead = wall time of one `measure()` − runs × mean "
                  "(what is left: push, agent start, model load, warm-up runs, result transfer). Goal < 1 s for a "
                  "1 MB model.", "",
                  "| case | measurements (median shown) | model size | wall | timed runs | overhead "
                  "| of which model load + warm-up |",
                  "|---|---|---|---|---|---|---|"]
        for r in adb["rows"]:
            lines.append(f"| {r['case']} | {r['n']} | {r['size_mb']:.2f} MB | {r['wall']:.2f} s | {r['timed']:.2f} s | "
                         f"**{r['overhead']:.2f} s** | {r['load_warmup']:.2f} s |")
        if adb.get("kernel_runs"):
            lo, mid, hi = adb["kernel_ratio"]
            lines += ["", "16 conv kernels (3×3, 8×8, 8–32 channels) timed through the same phone with the table's "
                      "protocol (10 warm-up, 50 runs), one agent run each and then all in one agent run, twice "
                      "alternately; wall time per kernel:", "",
                      "| how | first round | second round |", "|---|---:|---:|"]
            lines += [f"| {how} | {a:.3f} s | {b:.3f} s |" for how, (a, b) in adb["kernel_runs"].items()]
            lines += ["", f"Medians in one run against one run each (second round), per kernel: {lo:.2f}–{hi:.2f}× "
                      f"(median {mid:.2f}×)."]
        if adb.get("tables"):
            lines += ["", "A whole lookup table built through the same emulated phone (`build_lut`, default grid, no "
                      "calibration models; 16 kernels per agent run):", "",
                      "| model | kernels | wall | per kernel |", "|---|---:|---:|---:|"]
            lines += [f"| {t['model']} | {t['kernels']} | {t['wall']:.1f} s | {t['wall'] / t['kernels']:.3f} s |"
                      for t in adb["tables"]]
    lines += ["", "### Latency-targeted vs FLOPs-targeted search (ResNet-56, CIFAR-10)", ""]
    if search is not None and "error" in search:
        lines.append(f"Failed: {search['error']}")
    elif search is None:
        lines.append("Skipped (`--skip search`)." if "search" in args.skip else
                     f"Skipped: {args.data_dir} has no weights/resnet56-4bfd9763.th or cifar10_test.npz.")
    else:
        s = search
        lines += [
            f"Pretrained ResNet-56, DDPG, {s['episodes']} episodes each, reward on {s['reward_samples']} "
            "search-split images, accuracy on the report split (test images 5000–9999), no fine-tuning. "
            f"The FLOPs search (`flops=0.5`) ran first; its model measured {s['target_ms']:.3f} ms, which became "
            f"the latency search's target (`latency-ms={s['target_ms']:.4f}`, action wall on the LUT, the "
            "best 3 candidates measured). Latencies below are medians of 5 fresh measurements of each "
            "final `model.onnx`, taken afterwards in interleaved rounds (the machine's speed drifts by a few "
            "percent over minutes).",
            "", "| search | accuracy (report split) | MACs | measured latency | speed-up | LUT-predicted latency "
            "| search time |",
            "|---|---|---|---|---|---|---|",
            f"| unpruned | {s['flops']['baseline']['accuracy']:.2%} | {s['flops']['baseline']['macs'] / 1e6:.1f} M | "
            f"{s['full_ms']:.3f} ms | 1.00× | | |",
        ]
        for label, key, ms in (("FLOPs-targeted (`flops=0.5`)", "flops", s["flops_ms"]),
                               ("latency-targeted", "latency", s["latency_ms"])):
            r = s[key]["result"]
            pred = s["predicted"].get(key)
            lines.append(f"| {label} | {r['accuracy']:.2%} | {r['macs'] / 1e6:.1f} M | {ms:.3f} ms | "
                         f"{s['full_ms'] / ms:.2f}× | {'–' if pred is None else f'{pred:.3f} ms'} | "
                         f"{s[key + '_s'] / 60:.1f} min |")
        if s["note"]:
            lines += ["", s["note"]]
        lat = s["latency"].get("latency") or {}
        if lat:
            lines.append("")
            lines.append(f"The latency search's pick: predicted {lat.get('predicted_ms', float('nan')):.3f} ms, "
                         f"measured {lat.get('measured_ms') or float('nan'):.3f} ms during the search, "
                         f"target met: {lat.get('target_met')}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet56,mobilenet-v2")
    parser.add_argument("--samples", type=int, default=100, help="scored pruned variants per model")
    parser.add_argument("--calibration", type=int, default=30, help="whole-model calibration variants per model")
    parser.add_argument("--max-points", type=int, default=8,
                        help="channel counts timed per kernel axis (0: all; MobileNet-V2 then needs ~8000 kernels)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=80)
    parser.add_argument("--reward-samples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: lut,noise,adb,search")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    args.max_points = args.max_points or None
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="amc-bench-latency-") as tmp:
        work = Path(tmp)
        # Fresh lookup tables and measurement cache: nothing from earlier runs leaks into the numbers.
        os.environ["AMC_CACHE_DIR"] = str(work / "amc-cache")
        os.environ["AMC_CONFIG_DIR"] = str(work / "config")
        acc, noi, adb, search = [], [], None, None
        models = [m for m in args.models.split(",") if m]
        if "lut" not in skip:
            for name in models:
                _log(f"LUT accuracy: {name}")
                acc.append(lut_accuracy(name, samples=args.samples, calibration=args.calibration,
                                        max_points=args.max_points, work=work, seed=args.seed))
        if "noise" not in skip:
            for name in models:
                _log(f"noise: {name}")
                noi.append(noise(name, repeats=args.repeats, work=work))
        if "adb" not in skip:
            _log("ADB overhead")
            adb = adb_overhead(work)
        if "search" not in skip:
            _log("searches")
            try:
                search = searches(data_dir=Path(args.data_dir), episodes=args.episodes,
                                  reward_samples=args.reward_samples, seed=0, work=work)
            except Exception as exc:  # the other parts' numbers still get written
                _log(f"search comparison failed: {exc!r}")
                search = {"error": f"{type(exc).__name__}: {exc}"}
        print(_markdown(args, acc, noi, adb, search, time.perf_counter() - start))
    if acc:  # the scored samples in the order they were measured, for a closer look
        out = REPO / "runs" / "bench_latency"
        out.mkdir(parents=True, exist_ok=True)
        (out / "lut_samples.json").write_text(json.dumps(
            [{k: r[k] for k in ("model", "pred", "pred_online", "raw", "meas")} for r in acc]))
        _log(f"samples written to {out / 'lut_samples.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
