"""Objectives as plug-ins (``avssl.objectives.base``), their losses and the composing pretraining model.

Built-in objectives (registered on import): ``sync`` (synchrony InfoNCE), ``mae`` (per-modality masked
autoencoding), ``joint`` (CAV-MAE joint reconstruction + contrastive), ``avc`` (audio-visual correspondence).
Adding one: its module here (a registered ``Objective`` with an ``Options`` dataclass), its YAML in
``conf/objective/``, and its import below.
"""

from avssl.objectives.base import (
    OBJECTIVES,
    Objective,
    ObjectiveOutput,
    StepInputs,
    all_terms,
    register_objective,
)
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

# the built-in plug-ins (importing registers them)
from avssl.objectives import sync, mae, joint, avc  # noqa: E402, F401, I001  isort: skip

__all__ = [
    "OBJECTIVES",
    "Objective",
    "ObjectiveOutput",
    "StepInputs",
    "all_terms",
    "register_objective",
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
