"""Names every part of the lookup table shares: the keys a kernel, a network structure and a model
family are filed under, the op group a kernel's calibration slope belongs to, and `LutError`."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from compressor.latency import KernelSpec
from profiler.errors import ProfilerError

# Progress callback: (done, total, message).
Progress = Callable[[int, int, str], None]


class LutError(ProfilerError):
    """A lookup table cannot answer (empty, wrong file, unknown kernel op)."""


def shape_key(spec: KernelSpec) -> str:
    """Everything about a kernel except its channel counts (and the fused activation, which costs
    next to nothing and which kernel lists do not always agree on)."""
    return f"{spec.op}|k{spec.k}|s{spec.stride}|{spec.h}x{spec.w}"


def structure_key(kernels: Sequence[KernelSpec]) -> str:
    """A network's structure without channel counts: pruned variants of one model share it."""
    text = ";".join(shape_key(k) for k in kernels)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def family_key(kernels: Sequence[KernelSpec]) -> str:
    """Networks made of the same kinds of kernel, in any number: a model, its variants with residual
    blocks removed, its deeper or shallower siblings. What a calibration corrects (how the runtime's
    whole-network time differs from the sum of its kernels) depends on the kinds of kernel far more
    than on how many there are of each. Used when the caller does not say which model a kernel list
    is a variant of (`model_family`)."""
    text = ";".join(sorted({shape_key(k) for k in kernels}))
    return "family:" + hashlib.sha1(text.encode()).hexdigest()[:16]


def model_family(full_kernels: Sequence[KernelSpec]) -> str:
    """The family of every pruned variant of one model (blocks removed or not): its full structure."""
    return "family:" + structure_key(full_kernels)


def kernel_channels(spec: KernelSpec) -> tuple[int, int]:
    """The channel counts a table entry of this kernel is filed under (the second 0 where there is one)."""
    # Depthwise convs, adds and pools have one channel count.
    if spec.op in ("dwconv", "add", "pool"):
        return spec.cout if spec.op == "dwconv" else spec.cin, 0
    return spec.cin, spec.cout


def op_group(spec: KernelSpec) -> str:
    """Which calibration slope a kernel shares: its op and kernel size (`conv1`, `conv3`, `dwconv3`,
    `linear`, ...). Isolated timings of 1×1 convs, 3×3 convs and depthwise convs drift from their
    in-network cost by different factors (data reuse, memory-bound vs compute-bound)."""
    return f"{spec.op}{spec.k}" if spec.op in ("conv", "dwconv") else spec.op

