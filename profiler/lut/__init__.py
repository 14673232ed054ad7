"""Per-device latency lookup tables (nn-Meter style): every fused kernel the search can produce is
timed once as a tiny single-kernel model; a network's latency is predicted as the sum of its kernels'
latencies (interpolated linearly between measured channel counts) passed through a calibration
`measured ≈ a·sum + b`, fitted by least squares on real whole-model measurements and refined with
every measurement made afterwards (`observe`).

One table file per (device, runtime, threads) under the LUT folder, shared by every model measured
on that device; calibrations are kept per network structure (the kernel sequence without channel
counts), because the fixed overhead depends on how many kernels a network has, and per family (the
set of kernel shapes, however many of each): a structure seen too few times — a variant with some
residual blocks removed, say — is predicted with its family's calibration, which every measurement
of the family refines.

The parts, each importing only those listed before it:

- `keys`         the keys kernels, structures and families are filed under; op groups; `LutError`.
- `calibration`  `Calibration`: from a kernel sum to a network's latency, fitted on measurements.
- `table`        `LatencyTable` (entries, interpolation, prediction, persistence), `lut_path`,
                 `load_or_new`.
- `space`        what to time for a model (`model_kernels`, `kernel_grid`) and whole pruned variants to
                 calibrate on (`calibration_set`) or check against (`random_variants`).
- `build`        `build_lut`: time the missing kernels on a device, then calibrate.
- `check`        `check_lut`: how well a table predicts measured random variants.

Everything is importable from `profiler.lut` itself.
"""

from profiler.lut.build import (
    DEFAULT_KERNEL_PASSES,
    LUT_MEASURE,
    OVERHEAD_PROBE,
    build_lut,
    time_kernel,
    time_kernels,
)
from profiler.lut.calibration import GROUP_PRIOR, MAX_CALIBRATION_POINTS, Calibration
from profiler.lut.check import LutCheck, check_lut
from profiler.lut.keys import (
    LutError,
    Progress,
    family_key,
    kernel_channels,
    model_family,
    op_group,
    shape_key,
    structure_key,
)
from profiler.lut.space import (
    DEFAULT_CALIBRATION_VARIANTS,
    DEFAULT_MAX_POINTS,
    ModelKernels,
    calibration_set,
    kernel_grid,
    model_kernels,
    random_variants,
)
from profiler.lut.table import (
    LUT_VERSION,
    MIN_OWN_POINTS,
    STATISTICS,
    LatencyTable,
    Statistic,
    check_statistic,
    load_or_new,
    lut_path,
)

__all__ = [
    "DEFAULT_CALIBRATION_VARIANTS", "DEFAULT_KERNEL_PASSES", "DEFAULT_MAX_POINTS", "GROUP_PRIOR", "LUT_MEASURE",
    "LUT_VERSION", "MAX_CALIBRATION_POINTS", "MIN_OWN_POINTS", "OVERHEAD_PROBE", "STATISTICS", "Calibration",
    "LatencyTable", "LutCheck", "LutError", "ModelKernels", "Progress", "Statistic", "build_lut",
    "calibration_set", "check_lut", "check_statistic", "family_key", "kernel_channels", "kernel_grid",
    "load_or_new", "lut_path", "model_family", "model_kernels", "op_group", "random_variants", "shape_key",
    "structure_key", "time_kernel", "time_kernels",
]
