"""Synchrony-contrastive objective: InfoNCE over time-aligned audio/video segments.

A clip holds S consecutive segments cut at the same times in both modalities. Audio segment ``(i, s)`` and video
segment ``(i, s)`` form the positive pair; which other segments serve as negatives is set by ``negatives``:

- ``"all"`` (Synchformer): every other segment of the (gathered) batch, so other moments of the same video are
  hard negatives;
- ``"cross_video"``: only segments of other clips (the other segments of the same clip are masked out);
- ``"within_video"``: only the other segments of the same clip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_MODES = ("all", "cross_video", "within_video")


def _check_pair(a: Tensor, v: Tensor) -> None:
    if a.dim() != 3 or v.dim() != 3:
        raise ValueError(f"expected audio/video embeddings of shape [B, S, D], got {tuple(a.shape)} and {tuple(v.shape)}")
    if a.shape != v.shape:
        raise ValueError(f"audio and video embeddings differ in shape: {tuple(a.shape)} vs {tuple(v.shape)}")


def negatives_mask(batch: int, segments: int, negatives: str, device: torch.device | None = None) -> Tensor:
    """Bool [B*S, B*S]: True where a (row, column) pair enters the softmax (positives are always kept)."""
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"unknown negatives mode {negatives!r}; expected one of {NEGATIVE_MODES}")
    n = batch * segments
    if negatives == "all":
        return torch.ones(n, n, dtype=torch.bool, device=device)
    clip = torch.arange(batch, device=device).repeat_interleave(segments)
    same_clip = clip[:, None] == clip[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=device)
    if negatives == "cross_video":
        return ~same_clip | eye
    return same_clip


def sync_infonce(
    a: Tensor, v: Tensor, temperature: float | Tensor, negatives: str = "all"
) -> tuple[Tensor, dict[str, Tensor]]:
    """Symmetric InfoNCE over all B*S segments.

    ``a``, ``v``: L2-normalised [B, S, D] (already gathered across ranks if distributed). With
    ``z = a_flat @ v_flat.T / temperature`` (pairs excluded by ``negatives`` set to -inf),
    ``loss = (CE(z, diag) + CE(z.T, diag)) / 2``. Returns ``(loss, logs)`` with ``loss_a2v``, ``loss_v2a`` and
    ``num_negatives`` (negatives per positive).
    """
    _check_pair(a, v)
    b, s, _ = a.shape
    if negatives == "cross_video" and b < 2:
        raise ValueError("sync_infonce: negatives='cross_video' needs at least 2 clips in the batch (got B=1): "
                         "there are no negatives")
    if negatives == "within_video" and s < 2:
        raise ValueError("sync_infonce: negatives='within_video' needs at least 2 segments per clip (got S=1): "
                         "there are no negatives")
    if negatives == "all" and b * s < 2:
        raise ValueError("sync_infonce: a single segment has no negatives (B*S=1)")
    # a tensor temperature (LearnableTemperature) is clamped positive; checking it here would sync the device
    if not isinstance(temperature, Tensor) and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    af = a.reshape(b * s, -1).float()  # logits in float32 also under autocast
    vf = v.reshape(b * s, -1).float()
    logits = af @ vf.t() / temperature
    if negatives != "all":
        logits = logits.masked_fill(~negatives_mask(b, s, negatives, device=a.device), float("-inf"))
    target = torch.arange(b * s, device=a.device)
    loss_a2v = F.cross_entropy(logits, target)
    loss_v2a = F.cross_entropy(logits.t(), target)
    loss = 0.5 * (loss_a2v + loss_v2a)
    logs = {
        "loss_a2v": loss_a2v.detach(),
        "loss_v2a": loss_v2a.detach(),
        "num_negatives": torch.tensor(float({"all": b * s - 1, "cross_video": (b - 1) * s, "within_video": s - 1}[negatives])),
    }
    return loss, logs


class LearnableTemperature(nn.Module):
    """Softmax temperature stored as ``log(t)`` and clamped to ``[min, max]`` when read (Synchformer: 0.07 in
    [0.001, 0.5]). With ``learnable=False`` it is a constant buffer."""

    def __init__(self, init: float = 0.07, min: float = 0.001, max: float = 0.5, learnable: bool = True):
        super().__init__()
        if not 0 < min <= max:
            raise ValueError(f"temperature bounds must satisfy 0 < min <= max, got min={min}, max={max}")
        if not min <= init <= max:
            raise ValueError(f"initial temperature {init} lies outside [{min}, {max}]")
        self.min = float(min)
        self.max = float(max)
        log_t = torch.tensor(math.log(init), dtype=torch.float32)
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)

    def forward(self) -> Tensor:
        return self.log_temperature.exp().clamp(self.min, self.max)

    def extra_repr(self) -> str:
        return f"value={float(self()):.4g}, min={self.min}, max={self.max}"


class SyncContrastive(nn.Module):
    """Synchrony InfoNCE with its temperature and negatives schedule.

    ``curriculum_epochs > 0`` gives the AVTS-style curriculum: ``cross_video`` (easy) negatives for the first
    ``curriculum_epochs`` epochs, then ``negatives`` (hard, default ``all``). Call ``set_epoch`` each epoch.
    """

    def __init__(
        self,
        temperature: float = 0.07,
        learn_temperature: bool = True,
        temperature_min: float = 0.001,
        temperature_max: float = 0.5,
        negatives: str = "all",
        curriculum_epochs: int = 0,
    ):
        super().__init__()
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"unknown negatives mode {negatives!r}; expected one of {NEGATIVE_MODES}")
        if curriculum_epochs < 0:
            raise ValueError(f"curriculum_epochs must be >= 0, got {curriculum_epochs}")
        self.temperature = LearnableTemperature(temperature, temperature_min, temperature_max, learn_temperature)
        self.negatives = negatives
        self.curriculum_epochs = int(curriculum_epochs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def current_negatives(self) -> str:
        return "cross_video" if self.epoch < self.curriculum_epochs else self.negatives

    def forward(self, a: Tensor, v: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        t = self.temperature()
        loss, logs = sync_infonce(a, v, t, self.current_negatives)
        logs["temperature"] = t.detach()
        return loss, logs

    def extra_repr(self) -> str:
        return f"negatives={self.negatives!r}, curriculum_epochs={self.curriculum_epochs}"


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients (identity when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


__all__ = [
    "NEGATIVE_MODES",
    "negatives_mask",
    "sync_infonce",
    "LearnableTemperature",
    "SyncContrastive",
    "gather_with_grad",
]
