"""Quantization-aware recovery: a few more epochs of recovery while the network computes as its int8
file will, so that its weights learn to live with int8 before ONNX Runtime quantizes them.

The simulation follows the scheme of compressor/export/quantize.py (ONNX Runtime's static
quantization, QDQ): every Conv2d and Linear weight is rounded to int8 per output channel, symmetrically
(scale = max |w| / 64: 7 bits, as the exporter's reduce_range; zero point 0), and every tensor the
exporter quantizes is rounded to uint8 per tensor with the min/max range of the same calibration images
the exporter uses (ONNX Runtime's MinMax calibration). Those tensors are found in the network's torch.fx graph where the exported graph has
them: the input, each weighted layer's output after its BatchNorm (folded at export) and after a
following ReLU (fused), each addition's and pooling's output (after its ReLU). A network torch.fx
cannot trace is simulated more coarsely (each Conv2d/Linear input and the output; not the inputs of
residual additions), and the log says so.

Rounding a weight per output channel commutes with the BatchNorm folded into it at export (a per-channel
factor scales max |w| with the weights), so the unfolded network rounds exactly what the folded file
holds. BatchNorm keeps its running statistics (frozen, as in the file); its affine weights train.
Gradients pass through the rounding unchanged (the straight-through estimator). Ranges are re-measured
before every epoch and every held-out evaluation, so they follow the weights as they change, and a
resumed recovery sees the ranges an uninterrupted one saw.

After training the simulation is removed: the network keeps the float weights that were trained, which
the exporter then quantizes with its own calibration (the same images, so the same ranges).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from compressor.data import DataBundle, Split
from compressor.export.int8_check import CALIBRATION_IMAGES, CHECK_IMAGES, pick_rows
from compressor.finetune import RecoveryConfig, RecoveryResult, recover

log = logging.getLogger(__name__)

# Symmetric int8 weights in 7 bits: -64..64, ONNX Runtime's range with reduce_range (compressor/export/quantize.py).
INT8_MAX = 64
UINT8_MAX = 255
QUANTIZED = (nn.Conv2d, nn.Linear)
CALIBRATION_BATCH = 64


class _Int8Weight(nn.Module):
    """A parametrization: the weight as its int8 form per output channel (symmetric), gradient passed straight through."""

    def __init__(self) -> None:
        super().__init__()
        self.enabled = True  # off while ranges are measured: the exporter calibrates the float network

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        absmax = w.detach().abs().flatten(1).amax(1)
        scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax)).float()
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=w.device)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -INT8_MAX, INT8_MAX)


class _Uint8Range:
    """Rounds a tensor to uint8 per tensor in its calibrated range; while `observing`, records the range instead."""

    def __init__(self) -> None:
        self.scale: float | None = None
        self.zero_point = 0
        self.observing = False
        self.lo, self.hi = 0.0, 0.0

    def round(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.observing:
            self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
            return None
        if self.scale is None:
            return None
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, 0, UINT8_MAX)

    def set_range(self) -> None:
        """ONNX Runtime's uint8 scale and zero point for [lo, hi] (widened to hold 0)."""
        lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
        if hi - lo <= 0:
            self.scale, self.zero_point = 1.0, 0
            return
        self.scale = (hi - lo) / UINT8_MAX
        self.zero_point = int(min(max(round(-lo / self.scale), 0), UINT8_MAX))


class _Uint8Tensor(nn.Module, _Uint8Range):
    """A graph node rounding the tensor it is given (inserted where the exporter puts QuantizeLinear)."""

    def __init__(self) -> None:
        nn.Module.__init__(self)
        _Uint8Range.__init__(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounded = self.round(x)
        return x if rounded is None else rounded


class _Uint8Input(_Uint8Range):
    """A forward pre-hook rounding a layer's input (the fallback for networks torch.fx cannot trace)."""

    def __call__(self, _module: nn.Module, args: tuple) -> tuple | None:
        rounded = self.round(args[0])
        return None if rounded is None else (rounded, *args[1:])


class _Uint8Output(_Uint8Range):
    """A forward hook rounding the network's output (the fallback's last rounding)."""

    def __call__(self, _module: nn.Module, _args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        return self.round(output)


_FOLDS_INTO_NEXT = (nn.Conv2d, nn.Linear)  # a layer whose only user is a BatchNorm: the exporter folds them
_PRODUCERS = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
              nn.MaxPool2d)
_PRODUCER_FUNCTIONS = {operator.add, torch.add, torch.cat, F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d}
_RELU_FUNCTIONS = {F.relu, torch.relu}


def _is_relu(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _RELU_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("relu", "relu_")
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), nn.ReLU)


def _is_producer(gm: torch.fx.GraphModule, node: torch.fx.Node) -> bool:
    """A node whose output the exporter quantizes: a weighted layer, pooling, an addition or concatenation."""
    if node.op == "placeholder":
        return True
    if node.op == "call_function":
        return node.target in _PRODUCER_FUNCTIONS
    if node.op == "call_method":
        return node.target in ("add", "add_")
    return node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _PRODUCERS)


def _rounding_points(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Where ONNX Runtime's QDQ quantizer puts QuantizeLinear in the exported graph: the input, every
    weighted layer's output (after the BatchNorm folded into it, and after a ReLU that follows it: the
    two fuse), every addition's and pooling's output (after their ReLU). Shape operations (flatten,
    slicing, padding with zeros) keep their input's grid."""
    points = []
    for node in gm.graph.nodes:
        if not _is_producer(gm, node):
            continue
        users = list(node.users)
        if node.op == "call_module" and isinstance(gm.get_submodule(str(node.target)), _FOLDS_INTO_NEXT) and users \
                and all(u.op == "call_module" and isinstance(gm.get_submodule(str(u.target)),
                                                             nn.modules.batchnorm._BatchNorm) for u in users):
            continue  # folded into its BatchNorm, which is rounded instead
        if users and all(_is_relu(gm, u) for u in users):
            points.extend(users)
        else:
            points.append(node)
    return points


def _not(node: torch.fx.Node) -> Callable[[torch.fx.Node], bool]:
    """replace_all_uses_with's filter that leaves `node`'s own input alone."""
    return lambda user: user is not node


def _traced(model: nn.Module) -> torch.fx.GraphModule | None:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - data-dependent control flow, unsupported calls: use the fallback
        log.warning("int8 simulation: %s cannot be traced by torch.fx (%s: %s); rounding each layer's input and the "
                    "output only (the residual additions' inputs are not rounded)", type(model).__name__,
                    type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return None


class Int8Simulation:
    """`model` computing as its int8 file (see the module's docstring) until `remove()`; `net` is the
    network to run and train (a traced copy sharing `model`'s layers, or `model` itself with hooks when
    it cannot be traced). `calibration`: the images whose min/max ranges set the uint8 scales (N x C x H x W)."""

    def __init__(self, model: nn.Module, calibration: torch.Tensor):
        if len(calibration) == 0:
            raise ValueError("int8 simulation needs calibration images; the search split is empty")
        self.model, self.calibration = model, calibration
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QUANTIZED)]
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no Conv2d or Linear layer to quantize")
        self.ranges: list[_Uint8Range] = []
        self._handles: list[Any] = []
        gm = _traced(model)  # traced before the parametrizations, so the layers stay leaves
        if gm is not None:
            for i, node in enumerate(_rounding_points(gm)):
                name = f"amc_int8_{i}"
                tensor = _Uint8Tensor()
                gm.add_submodule(name, tensor)
                with gm.graph.inserting_after(node):
                    rounded = gm.graph.call_module(name, (node,))
                node.replace_all_uses_with(rounded, delete_user_cb=_not(rounded))
                self.ranges.append(tensor)
            gm.recompile()
            self.net: nn.Module = gm
        else:
            for _name, m in self.layers:
                hook = _Uint8Input()
                self.ranges.append(hook)
                self._handles.append(m.register_forward_pre_hook(hook))
            output = _Uint8Output()
            self.ranges.append(output)
            self._handles.append(model.register_forward_hook(output))
            self.net = model
        self._weights = [_Int8Weight() for _ in self.layers]
        for (_name, m), weight in zip(self.layers, self._weights, strict=True):
            parametrize.register_parametrization(m, "weight", weight)
        self.traced = gm is not None
        self.calibrate()

    def calibrate(self, _model: nn.Module | None = None) -> None:
        """Measure every rounded tensor's range on the calibration images as the exporter does: the float network in eval mode."""
        net = self.net
        was_training = net.training
        device = next(net.parameters()).device
        for r in self.ranges:
            r.observing, r.lo, r.hi = True, 0.0, 0.0
        for w in self._weights:
            w.enabled = False
        net.eval()
        try:
            with torch.inference_mode():
                for i in range(0, len(self.calibration), CALIBRATION_BATCH):
                    net(self.calibration[i:i + CALIBRATION_BATCH].to(device))
        finally:
            for r in self.ranges:
                r.observing = False
            for w in self._weights:
                w.enabled = True
            net.train(was_training)
        for r in self.ranges:
            r.set_range()

    def remove(self) -> None:
        """Back to float: the hooks removed, each weight its trained float value (`model` as it was, trained)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for _name, m in self.layers:
            if parametrize.is_parametrized(m, "weight"):
                parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


@contextmanager
def simulated_int8(model: nn.Module, calibration: torch.Tensor) -> Iterator[Int8Simulation]:
    """`Int8Simulation` for the duration of a `with` block."""
    sim = Int8Simulation(model, calibration)
    try:
        yield sim
    finally:
        sim.remove()


def calibration_images(search: Split) -> torch.Tensor:
    """The search images the int8 exporter calibrates on (the same seeded rows), so the simulated
    ranges are the file's."""
    rows, _check = pick_rows(len(search), calibration=CALIBRATION_IMAGES, check=CHECK_IMAGES)
    return search.x[rows]


def recover_int8(model: nn.Module, bundle: DataBundle, config: RecoveryConfig, **kw) -> tuple[nn.Module, RecoveryResult]:
    """`recover` with the network computing as int8 throughout (BatchNorm statistics frozen); the
    held-out accuracy it reports and picks the epoch by is the simulated int8 network's. Returns the
    network in float (its trained weights) and what happened. `kw` as for `recover`."""
    if "refresh" in kw:
        raise TypeError("recover_int8 sets refresh itself")
    with simulated_int8(model, calibration_images(bundle.search)) as sim:
        log.info("quantization-aware recovery: %d layers simulated as int8, %d tensors rounded to uint8",
                 len(sim.layers), len(sim.ranges))
        _net, result = recover(sim.net, bundle, replace(config, freeze_bn=True), refresh=sim.calibrate, **kw)
    return model.eval(), result
