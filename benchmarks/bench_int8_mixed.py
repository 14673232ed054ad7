"""Per-layer precision (HAQ-style) against all-int8 for the pretrained CIFAR-10 ResNets (issue 24): does
keeping the sensitive layers in float (the first convolution, which sees the image, and the classifier)
buy accuracy worth its latency? Needs ../shared/data.

For each of ResNet-20/32/44/56: the float ONNX export, its all-int8 form and its int8 form with
`--keep-float` layers left in float32 (`compressor.export.quantize`, `keep_float`: ONNX Runtime static
quantization, QDQ, the named layers excluded), all three scored on the report split (test images
5000-9999) from the files and timed on `local` (ONNX Runtime, 1 thread) in `--rounds` interleaved
rounds, the fastest kept.

    python -m benchmarks.bench_int8_mixed --rounds 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
WEIGHTS = {20: "resnet20-12fca82f.th", 32: "resnet32-d509ac18.th", 44: "resnet44-014dd654.th",
           56: "resnet56-4bfd9763.th"}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench_int8_mixed", description=__doc__.splitlines()[0])
    p.add_argument("--depths", default="20,32,44,56")
    p.add_argument("--keep-float", default="conv1,linear", help="PyTorch modules left in float32")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--out", default="runs/bench_int8_mixed")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "cifar10_test.npz").is_file():
        _log(f"bench_int8_mixed: {data} has no cifar10_test.npz (see DESIGN.md, 'Data and weights')")
        return 1
    import torch

    from compressor import zoo
    from compressor.data import load_dataset
    from compressor.export import onnx as onnx_export
    from compressor.export import quantize
    from profiler.devices.local import LocalDevice
    from profiler.measure import measure
    from profiler.protocol import MeasureConfig

    keep = tuple(k for k in args.keep_float.split(",") if k)
    depths = [int(d) for d in args.depths.split(",") if d]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entry = zoo.MODELS["resnet56"]
    bundle = load_dataset(f"cifar10:{data / 'cifar10_test.npz'}", input_shape=entry.input_shape, mean=entry.mean,
                          std=entry.std, seed=0)
    example = torch.zeros(1, *entry.input_shape)
    rows, files = [], []
    for d in depths:
        model = zoo.load_model(f"resnet{d}", weights=str(data / "weights" / WEIGHTS[d])).model.eval()
        fp = onnx_export.export(model, example, out / f"resnet{d}.onnx").path
        full = quantize.export(model, example, out / f"resnet{d}.int8.onnx", calibration=bundle.search, float_path=fp)
        mixed = quantize.export(model, example, out / f"resnet{d}.int8-mixed.onnx", calibration=bundle.search,
                                float_path=fp, keep_float=keep)
        accs = [quantize.evaluate_file(f, bundle.report) for f in (fp, full.path, mixed.path)]
        _log(f"ResNet-{d}: float {accs[0]:.2%}, int8 {accs[1]:.2%}, int8 with {', '.join(keep)} in float {accs[2]:.2%}")
        rows.append({"depth": d, "accuracy": accs})
        files += [fp, full.path, mixed.path]
    _log(f"timing {len(files)} files in {args.rounds} interleaved rounds")
    runs: list[list[float]] = [[] for _ in files]
    for _ in range(args.rounds):
        for i, f in enumerate(files):
            runs[i].append(measure(LocalDevice(), f, MeasureConfig(threads=1), cache=None).min_ms)
    ms = [min(r) for r in runs]
    lines = [f"Each pretrained CIFAR ResNet as float32, all-int8 and int8 with `{', '.join(keep)}` (the first "
             "convolution and the classifier) left in float32; calibrated on 256 search images; accuracy on the "
             "report split (test images 5000-9999) scored from the files; latency on `local` (ONNX Runtime, 1 "
             f"thread), the fastest of {args.rounds} interleaved rounds.", "",
             "| model | float acc | int8 acc | mixed acc | mixed − int8 (points) | float ms | int8 ms | mixed ms | "
             "mixed / int8 latency |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(rows):
        f_ms, i_ms, m_ms = ms[3 * i:3 * i + 3]
        a = r["accuracy"]
        lines.append(f"| ResNet-{r['depth']} | {a[0]:.2%} | {a[1]:.2%} | {a[2]:.2%} | {100 * (a[2] - a[1]):+.2f} | "
                     f"{f_ms:.3f} | {i_ms:.3f} | {m_ms:.3f} | {m_ms / i_ms:.2f}× |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
