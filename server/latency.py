"""Turning a search's device into a latency oracle: shared by `amc compress` and the job workers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from compressor.config import SearchConfig
from compressor.latency import LatencyOracle

if TYPE_CHECKING:  # pragma: no cover
    from profiler.waiting import DeviceWait


def needs_latency(config: SearchConfig) -> bool:
    """Whether the search asks a device: a latency target (with the action wall) or the latency reward."""
    return config.reward == "latency" or (
        config.parsed_target.kind == "latency-ms" and config.reward in (None, "err"))


def make_oracle(config: SearchConfig, *, progress: Callable[[int, int, str], None] | None = None,
                force: bool = False, statistic: str = "median", device_wait_s: float | None = None,
                on_wait: Callable[[DeviceWait], None] | None = None,
                should_stop: Callable[[], bool] | None = None) -> LatencyOracle | None:
    """The device's latency oracle (int8 or float: `latency_precision`), its lookup table completed for this
    model, when the search needs one (or, with `force` or `quantize`, whenever results are to be timed on the device). `statistic`: which number
    of a measurement stands for a model (`median`; `min` on a machine shared with other work).
    `device_wait_s`: how long a device that stops answering is waited for (`on_wait` hears of it) before
    the search fails with DeviceWaitExpired, to be resumed; None fails at once. `should_stop` (the job's
    cancel flag) ends such a wait early (DeviceWaitStopped: the job ends as cancelled)."""
    # An int8 model is reported with its measured latency beside the float one's, so the device is asked.
    if not (needs_latency(config) or force or config.quantize != "none"):
        return None
    import torch

    from compressor import zoo
    from profiler.oracle import make_oracle as profiler_oracle  # only latency searches pay for it

    loaded = zoo.load_model(config.model)
    example = torch.zeros(1, *loaded.entry.input_shape)
    return profiler_oracle(config.device, model=loaded.model, example_input=example, round_to=config.round_to,
                           a_min=config.a_min, prune_residual=config.prune_residual,
                           prune_blocks=config.prune_blocks, progress=progress,
                           statistic=statistic, device_wait_s=device_wait_s,  # type: ignore[arg-type]
                           on_wait=on_wait, should_stop=should_stop, precision=latency_precision(config))


def latency_precision(config: SearchConfig) -> str:
    """The form in which a search's candidates are timed: int8 when it ships an int8 model and its target or
    reward is a latency (that is the model a user runs, and int8 kernels have other costs than float ones:
    a network pruned to a float latency is not the fastest int8 network at the same accuracy); else float32."""
    return "int8" if config.quantize == "int8" and needs_latency(config) else "float32"
