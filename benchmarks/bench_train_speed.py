"""What one recovery epoch costs on this machine: seconds per 50,000 images for a training step of the
student (forward, backward, SGD step) and for the teacher's forward pass, for CIFAR ResNets of several
depths, with and without channels-last tensors, at two batch sizes. Random weights and images (the cost
does not depend on them). Prints a markdown section on stdout; progress on stderr.

    python -m benchmarks.bench_train_speed --depths 20,56 --batches 64,128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time

from benchmarks.progress import log


def _seconds_per(images: int, fn, batch: int, steps: int) -> float:
    fn()  # warm-up: first-call allocations and kernel selection
    t = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t) / (steps * batch) * images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", default="20,56")
    parser.add_argument("--batches", default="64,128")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per setting (after one warm-up)")
    parser.add_argument("--images", type=int, default=50_000, help="seconds are given per this many images")
    args = parser.parse_args(argv)
    import torch

    from compressor.zoo import cifar_resnet

    torch.set_num_threads(args.threads)
    rows = []
    for depth in [int(d) for d in args.depths.split(",")]:
        for batch in [int(b) for b in args.batches.split(",")]:
            for channels_last in (False, True):
                fmt = torch.channels_last if channels_last else torch.contiguous_format
                model = cifar_resnet(depth).to(memory_format=fmt)
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
                x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
                y = torch.randint(0, 10, (batch,))

                step, forward = _steps(model, opt, x, y)
                train_s = _seconds_per(args.images, step, batch, args.steps)
                teach_s = _seconds_per(args.images, forward, batch, args.steps)
                rows.append((depth, batch, channels_last, train_s, teach_s))
                log(f"ResNet-{depth} batch {batch} channels-last {channels_last}: train {train_s:.0f} s, "
                    f"forward {teach_s:.0f} s per {args.images} images")
    lines = [f"Seconds per {args.images:,} images on this machine, {args.threads} torch threads, random weights and "
             f"images, {args.steps} timed steps after one warm-up:", "",
             "| model | batch | channels-last | training step (student) | forward only (teacher) |",
             "|---|---:|:-:|---:|---:|"]
    lines += [f"| ResNet-{d} | {b} | {'yes' if cl else 'no'} | {t:.0f} s | {f:.0f} s |" for d, b, cl, t, f in rows]
    print("\n".join(lines))
    return 0


def _steps(model, opt, x, y):
    """A student's training step and a teacher's forward pass on one batch."""
    import torch
    import torch.nn.functional as F

    def step() -> None:
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return step, forward


if __name__ == "__main__":
    sys.exit(main())
