"""Float32 against post-training int8 for the pretrained CIFAR-10 ResNets (issue 24). Needs ../shared/data.

For each of ResNet-20/32/44/56: the float ONNX export and its int8 form (`compressor.export.quantize`:
ONNX Runtime static quantization, QDQ, int8 weights per channel, uint8 activations, calibrated on
`--calibration` images of the search split, images 0-4999 of the CIFAR-10 test set), both scored on
the report split (test images 5000-9999) from the files themselves with ONNX Runtime, and timed on
`local` (ONNX Runtime, 1 thread) in `--rounds` interleaved rounds, the fastest round's median kept: on
a shared 2-core machine other processes only ever slow a round down. Also the int8 file's check
against PyTorch on held-out search images (top-1 agreement, 99th-percentile largest logit
difference as a share of the logits' range), which is what the export's thresholds come from.

    python -m benchmarks.bench_int8 --rounds 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_int8", description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="20,32,44,56", help="which CIFAR ResNets")
    p.add_argument("--calibration", type=int, default=256, help="calibration images from the search split")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the fastest round is kept)")
    p.add_argument("--data", default=str(DATA), help="../shared/data")
    p.add_argument("--out", default="runs/bench_int8", help="where the ONNX files go")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "cifar10_test.npz").is_file():
        _log(f"bench_int8: {data} has no cifar10_test.npz (see DESIGN.md, 'Data and weights')")
        return 1

    import torch

    from compressor import zoo
    from compressor.data import load_dataset
    from compressor.export import onnx as onnx_export
    from compressor.export import quantize
    from profiler.devices.local import LocalDevice
    from profiler.measure import measure
    from profiler.protocol import MeasureConfig

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    files: list[tuple[Path, Path]] = []
    bundle = None
    for depth in [int(d) for d in args.depths.split(",") if d]:
        entry = zoo.MODELS[f"resnet{depth}"]
        weights = zoo.pretrained_path(entry, data)
        if weights is None:
            _log(f"bench_int8: no pretrained weights for resnet{depth} under {data}")
            return 1
        model = zoo.load_model(entry.name, weights=str(weights)).model.eval()
        if bundle is None:
            bundle = load_dataset(f"cifar10:{data / 'cifar10_test.npz'}", input_shape=entry.input_shape,
                                  mean=entry.mean, std=entry.std)
        example = torch.zeros(1, *entry.input_shape)
        t = time.perf_counter()
        fp = onnx_export.export(model, example, out / f"resnet{depth}.onnx").path
        q = quantize.export(model, example, out / f"resnet{depth}.int8.onnx", calibration=bundle.search,
                            float_path=fp, calibration_images=args.calibration)
        seconds = time.perf_counter() - t
        _log(f"resnet{depth}: exported and quantized in {seconds:.1f} s; scoring the report split from both files")
        rows.append({"depth": depth, "float_acc": quantize.evaluate_file(fp, bundle.report),
                     "int8_acc": quantize.evaluate_file(q.path, bundle.report), "agreement": q.top1_agreement,
                     "p99_rel": q.p99_abs_diff / q.output_range, "float_kb": fp.stat().st_size / 1024,
                     "int8_kb": q.size_bytes / 1024, "quantize_s": seconds})
        files.append((fp, q.path))
    assert bundle is not None

    device = LocalDevice()
    config = MeasureConfig(threads=1)
    best: dict[Path, float] = {}
    for r in range(args.rounds):
        for pair in files:
            for path in pair:
                ms = measure(device, path, config, cache=None).median_ms
                best[path] = min(best.get(path, ms), ms)
        _log(f"timing round {r + 1}/{args.rounds}: " + ", ".join(f"{p.name} {best[p]:.3f}" for pair in files
                                                                  for p in pair))
    print(f"Report split: {bundle.report.description}. Calibration: {args.calibration} images of the search split "
          f"({bundle.search.description}); the check: {quantize.CHECK_IMAGES} other search images. Latency: `local`, "
          f"ONNX Runtime, 1 thread, median of {config.runs} runs, fastest of {args.rounds} interleaved rounds.\n")
    print("| model | float acc | int8 acc | Δ (points) | top-1 agreement (check) | p99 diff / range | float ms | "
          "int8 ms | speed-up | float KiB | int8 KiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row, (fp, qp) in zip(rows, files):
        f_ms, q_ms = best[fp], best[qp]
        print(f"| ResNet-{row['depth']} | {100 * row['float_acc']:.2f}% | {100 * row['int8_acc']:.2f}% | "
              f"{100 * (row['int8_acc'] - row['float_acc']):+.2f} | {100 * row['agreement']:.1f}% | "
              f"{100 * row['p99_rel']:.1f}% | {f_ms:.3f} | {q_ms:.3f} | {f_ms / q_ms:.2f}× | "
              f"{row['float_kb']:.0f} | {row['int8_kb']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
