"""Least-squares reconstruction of the layers that consume pruned channels.

After a unit loses channels, each consuming layer (any k×k convolution, via im2col, or a Linear: the
per-op registry's `refit` says how a layer kind sees its input) is re-fitted so that its output matches the unpruned network's: min ‖X_S·W_Sᵀ − X·Wᵀ‖² over W_S, with X
the consumer's input sampled on calibration images (AMC samples 10 points per image) and S the kept
input dimensions. Since the target X·Wᵀ is linear in X, only the Gram matrix G = XᵀX is needed:
W_Sᵀ = G_SS⁻¹ · G_S· · Wᵀ. G is computed once per consumer, so each episode only solves small
systems — no feature maps are recomputed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from compressor.ops import Refit, op_for
from compressor.pruning import PrunedModel

log = logging.getLogger(__name__)

MAX_DIM = 4608  # 512 channels × 3×3; larger inputs (a flatten into a big Linear) are left as they are


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


class Reconstructor:
    """Caches each consumer's Gram matrix on calibration images and re-fits pruned consumers."""

    def __init__(self, model: nn.Module, consumers: Iterable[str], calibration: torch.Tensor, *,
                 points_per_image: int = 10, seed: int = 0, batch_size: int = 128, ridge: float = 1e-5):
        self.model = model.eval()
        self.ridge = ridge
        modules = dict(model.named_modules())
        self.grams: dict[str, torch.Tensor] = {}
        self.samples = 0
        wanted: dict[str, nn.Module] = {}
        self._refits: dict[str, Refit] = {}
        for name in consumers:
            m = modules[name]
            op = op_for(m)
            refit = op.refit(m) if op is not None else None
            if refit is None:
                continue
            if refit.dim > MAX_DIM:
                log.info("reconstruction skips %s (%d input dimensions)", name, refit.dim)
                continue
            wanted[name] = m
            self._refits[name] = refit
        gen = torch.Generator().manual_seed(seed)
        grams = {name: torch.zeros(0) for name in wanted}

        def hook(name: str) -> Callable[..., None]:
            def fn(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
                rows = self._refits[name].features(inputs[0].detach(), points_per_image, gen).double()
                g = rows.T @ rows
                grams[name] = g if grams[name].numel() == 0 else grams[name] + g
            return fn

        handles = [m.register_forward_hook(hook(n)) for n, m in wanted.items()]
        try:
            with torch.inference_mode():
                for start in range(0, len(calibration), batch_size):
                    model(calibration[start:start + batch_size])
        finally:
            for h in handles:
                h.remove()
        self.grams = grams
        self.samples = len(calibration)
        self._weights = {n: _weight(m).detach().double().flatten(1).clone() for n, m in wanted.items()}

    def apply(self, pruned: PrunedModel) -> int:
        """Re-fit, in place, every consumer whose input lost dimensions. Returns how many were re-fitted."""
        modules = dict(pruned.model.named_modules())
        done = 0
        for name, removed in pruned.removed_in.items():
            if name not in self.grams or not removed:
                continue
            module = modules[name]
            w_full = self._weights[name]  # out × d, unpruned
            refit = self._refits[name]
            removed_set = set(removed)
            cols = refit.columns([c for c in range(refit.inputs) if c not in removed_set])
            removed_rows = set(pruned.removed_out.get(name, []))
            rows = torch.tensor([r for r in range(w_full.shape[0]) if r not in removed_rows])
            g = self.grams[name]
            a = g[cols][:, cols]
            a = a + torch.eye(len(cols), dtype=a.dtype) * (self.ridge * a.diagonal().mean().clamp_min(1e-12))
            b = g[cols] @ w_full[rows].T  # |S| × out
            solution = torch.linalg.solve(a, b).T  # out × |S|
            weight = _weight(module)
            with torch.no_grad():
                weight.copy_(solution.reshape(weight.shape).to(weight.dtype))
            done += 1
        return done


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, *, batch_size: int = 128) -> None:
    """Re-estimate BatchNorm running statistics on `images` (EagleEye, ECCV 2020): pruning shifts the
    statistics each BN layer sees, and stale statistics make pre-fine-tune accuracy a poor guide."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start:start + batch_size])
    finally:
        for m, (momentum, training) in zip(norms, saved):
            m.momentum = momentum
            m.train(training)
