"""Masked-prediction losses (MAE-style): normalised-patch targets, masked MSE and its predict-the-mean baseline.

Predictions and targets are ``[N, L, P]`` per token in grid order; masks are bool ``[N, L]``, True = hidden (masks
are drawn in ``avssl.objectives.mae.make_mask``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_patches(target: Tensor, eps: float = 1e-6) -> Tensor:
    """Per-patch normalisation (MAE ``norm_pix_loss``): zero mean, unit (biased) variance over the last dim."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=False)
    return (target - mean) / (var + eps).sqrt()


def _check(pred: Tensor, target: Tensor, mask: Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask.shape != pred.shape[:-1] or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool {tuple(pred.shape[:-1])}, got {mask.dtype} {tuple(mask.shape)}")
    if not bool(mask.any()):
        raise ValueError("mask hides no token: the masked loss is undefined")


def masked_mse(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean over hidden tokens of the per-token mean squared error: ``sum_m mean_d (p - t)^2 / #hidden``.

    ``pred``, ``target``: [N, L, P]; ``mask``: bool [N, L]. Visible tokens do not contribute.
    """
    _check(pred, target, mask)
    per_token = (pred.float() - target.float()).pow(2).mean(dim=-1)
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum()


@torch.no_grad()
def recon_baseline(target: Tensor, mask: Tensor) -> Tensor:
    """Loss of predicting each patch's own mean value (its DC level): zeros for ``norm_pix`` targets, so then
    ``masked_mse(0, target, mask)`` = mean squared norm / dim, about 1.0 for non-constant patches.
    ``recon < baseline`` means the model predicts structure, not just brightness."""
    return masked_mse(target.mean(dim=-1, keepdim=True).expand_as(target), target, mask)


__all__ = [
    "normalize_patches",
    "masked_mse",
    "recon_baseline",
]
