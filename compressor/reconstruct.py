"""Least-squares reconstruction of the layers that consume pruned channels.

After a unit loses channels, each consuming layer (any k×k convolution, via im2col, or a Linear) is
re-fitted so that its output matches the unpruned network's: min ‖X_S·W_Sᵀ − X·Wᵀ‖² over W_S, with X
the consumer's input sampled on calibration images (AMC samples 10 points per image) and S the kept
input dimensions. Since the target X·Wᵀ is linear in X, only the Gram matrix G = XᵀX is needed:
W_Sᵀ = G_SS⁻¹ · G_S· · Wᵀ. G is computed once per consumer, so each episode only solves small
systems — no feature maps are recomputed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from compressor.pruning import PrunedModel

log = logging.getLogger(__name__)

MAX_DIM = 4608  # 512 channels × 3×3; larger inputs (a flatten into a big Linear) are left as they are


def _features(module: nn.Module, x: torch.Tensor, points: int, gen: torch.Generator) -> torch.Tensor:
    """Rows of the consumer's im2col input at `points` random output positions per sample."""
    if isinstance(module, nn.Conv2d):
        cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                        stride=module.stride)  # B × (C·kh·kw) × L
        b, d, L = cols.shape
        k = min(points, L)
        pos = torch.stack([torch.randperm(L, generator=gen)[:k] for _ in range(b)])  # B × k
        picked = torch.gather(cols, 2, pos.unsqueeze(1).expand(b, d, k))
        return picked.permute(0, 2, 1).reshape(b * k, d)
    return x.reshape(-1, x.shape[-1])


class Reconstructor:
    """Caches each consumer's Gram matrix on calibration images and re-fits pruned consumers."""

    def __init__(self, model: nn.Module, consumers: Iterable[str], calibration: torch.Tensor, *,
                 points_per_image: int = 10, seed: int = 0, batch_size: int = 128, ridge: float = 1e-5):
        self.model = model.eval()
        self.ridge = ridge
        modules = dict(model.named_modules())
        self.grams: dict[str, torch.Tensor] = {}
        self.samples = 0
        wanted = {}
        for name in consumers:
            m = modules[name]
            if isinstance(m, nn.Conv2d) and m.groups != 1:
                continue
            d = (m.in_channels * m.kernel_size[0] * m.kernel_size[1]) if isinstance(m, nn.Conv2d) else m.in_features
            if d > MAX_DIM:
                log.info("reconstruction skips %s (%d input dimensions)", name, d)
                continue
            wanted[name] = m
        gen = torch.Generator().manual_seed(seed)
        grams = {name: torch.zeros(0) for name in wanted}

        def hook(name):
            def fn(module, inputs, _output):
                rows = _features(module, inputs[0].detach(), points_per_image, gen).double()
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
        self._weights = {n: m.weight.detach().double().flatten(1).clone() for n, m in wanted.items()}

    def apply(self, pruned: PrunedModel) -> int:
        """Re-fit, in place, every consumer whose input lost dimensions. Returns how many were re-fitted."""
        modules = dict(pruned.model.named_modules())
        done = 0
        for name, removed in pruned.removed_in.items():
            if name not in self.grams or not removed:
                continue
            module = modules[name]
            w_full = self._weights[name]  # out × d, unpruned
            removed_set = set(removed)
            if isinstance(module, nn.Conv2d):
                cin = w_full.shape[1] // (module.kernel_size[0] * module.kernel_size[1])
                kk = module.kernel_size[0] * module.kernel_size[1]
                keep_in = [c for c in range(cin) if c not in removed_set]
                cols = torch.tensor([c * kk + j for c in keep_in for j in range(kk)])
            else:
                cols = torch.tensor([c for c in range(w_full.shape[1]) if c not in removed_set])
            removed_rows = set(pruned.removed_out.get(name, []))
            rows = torch.tensor([r for r in range(w_full.shape[0]) if r not in removed_rows])
            g = self.grams[name]
            a = g[cols][:, cols]
            a = a + torch.eye(len(cols), dtype=a.dtype) * (self.ridge * a.diagonal().mean().clamp_min(1e-12))
            b = g[cols] @ w_full[rows].T  # |S| × out
            solution = torch.linalg.solve(a, b).T  # out × |S|
            with torch.no_grad():
                module.weight.copy_(solution.reshape(module.weight.shape).to(module.weight.dtype))
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
