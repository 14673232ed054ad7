"""What the int8 exports (ONNX in `quantize`, TFLite in `tflite_int8`) share, below both: the result
record, how calibration and check images are picked from the search split, and the check of an int8 file
against its float model on held-out search images."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from compressor.errors import ExportError
from compressor.export.common import ExportResult, Runner

log = logging.getLogger(__name__)

# ResNet-20, top-1 agreement with float on search images 4000-4999 (apart from calibration): 64 calibration
# images 99.5%, 256 99.5%, 1000 99.7%; 256 calibrate ResNet-56 in about 4 s on this machine
CALIBRATION_IMAGES = 256
CHECK_IMAGES = 256

# The checks, from quantizing the pretrained CIFAR-10 ResNet-20/32/44/56 and the digits demo-cnn with
# these settings (docs/BENCHMARKS.md, "Post-training int8"): on 256 held-out search images, top-1
# agreement with the float model was 98.4-100%, and the 99th percentile of an image's largest
# |int8 - float| output was 1.0-2.9% of the float outputs' range. The thresholds leave several times
# that room (a correct quantization must not fail on the luck of a few hundred images), while a broken
# one (wrong ranges, a layer off by its scale) disagrees on most images and fails.
MIN_AGREEMENT = 0.95
MAX_RELATIVE_P99 = 0.15


@dataclass(frozen=True)
class QuantizedExport(ExportResult):
    """An int8 ONNX file checked against its float model on held-out search images."""

    top1_agreement: float = 1.0  # share of check images where int8 and float pick the same class
    p99_abs_diff: float = 0.0  # 99th percentile over check images of the largest |int8 - float| output
    output_range: float = 0.0  # max - min of the float outputs over the check images
    calibration_images: int = 0
    check_images: int = 0
    calibration_indices: tuple[int, ...] = ()  # source rows of the images calibration read
    scheme: str = "int8"

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "scheme": self.scheme, "file": self.path.name, "size_bytes": self.size_bytes,
                "max_abs_diff": self.max_abs_diff, "p99_abs_diff": self.p99_abs_diff,
                "output_range": self.output_range, "top1_agreement": self.top1_agreement,
                "calibration_images": self.calibration_images, "check_images": self.check_images,
                "seconds": self.seconds}



def pick_rows(n: int, *, calibration: int, check: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded rows of a split of `n` images for calibration and, apart from them, for the check (the
    check reuses calibration rows only when the split is too small to hold both)."""
    if n == 0:
        raise ExportError("int8 calibration needs images: the search split is empty")
    order = np.random.default_rng(seed).permutation(n).tolist()
    cal = order[: min(calibration, n)]
    rest = order[len(cal):]
    chk = (rest or cal)[:check]
    if not rest:
        log.warning("the search split holds only %d images: the int8 check reuses the calibration images", n)
    return cal, chk



@dataclass(frozen=True)
class Check:
    agreement: float
    p99: float
    max_diff: float
    spread: float
    what: str


def agreement(run_int8: Callable[[np.ndarray], np.ndarray], reference: Runner, images: np.ndarray, *, name: str,
               min_agreement: float, max_relative_p99: float) -> Check:
    """The int8 file (`run_int8`: one C x H x W image -> outputs) beside the float model on held-out search
    images: ExportError when they pick another class too often or drift apart further than 8 bits do."""
    f = np.asarray(reference(images), dtype=np.float64).reshape(len(images), -1)
    q = np.concatenate([np.asarray(run_int8(x), dtype=np.float64).reshape(1, -1) for x in images])
    per_image = np.abs(q - f).max(axis=1)
    finite = bool(np.all(np.isfinite(per_image)))
    max_diff = float(per_image.max()) if finite else float("inf")
    p99 = float(np.quantile(per_image, 0.99)) if finite else float("inf")
    spread = float(f.max() - f.min())
    agreement = float((q.argmax(1) == f.argmax(1)).mean())
    what = (f"top-1 agreement with float {100 * agreement:.1f}%, 99th-percentile max |int8 - float| {p99:.3g} "
            f"({p99 / max(spread, 1e-12):.1%} of the float outputs' range {spread:.3g}), over {len(images)} "
            "held-out search images")
    if not (agreement >= min_agreement and p99 <= max_relative_p99 * spread):
        raise ExportError(f"the int8 model {name} disagrees with the float model: {what}; "
                          f"needed at least {100 * min_agreement:.0f}% agreement and at most "
                          f"{max_relative_p99:.0%} of the range (a model whose classes are near-ties, e.g. "
                          "untrained, or one with layers that do not survive 8 bits)")
    return Check(agreement, p99, max_diff, spread, what)
