"""Losses and metrics: synchrony InfoNCE, masked prediction, weighted sums, in-batch A/V metrics."""

from avssl.objectives.combined import CombinedLoss, weighted_sum
from avssl.objectives.contrastive import (
    NEGATIVE_MODES,
    LearnableTemperature,
    SyncContrastive,
    clamp_temperatures,
    gather_no_grad,
    gather_with_grad,
    local_clip_slice,
    negatives_mask,
    sync_infonce,
)
from avssl.objectives.masked import masked_mse, normalize_patches, recon_baseline
from avssl.objectives.metrics import retrieval_top1, sync_acc

__all__ = [
    "CombinedLoss",
    "weighted_sum",
    "NEGATIVE_MODES",
    "LearnableTemperature",
    "SyncContrastive",
    "clamp_temperatures",
    "gather_no_grad",
    "gather_with_grad",
    "local_clip_slice",
    "negatives_mask",
    "sync_infonce",
    "masked_mse",
    "normalize_patches",
    "recon_baseline",
    "retrieval_top1",
    "sync_acc",
]
