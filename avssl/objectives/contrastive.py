"""Synchrony-contrastive objective: InfoNCE over time-aligned audio/video segments.

A clip holds S consecutive segments cut at the same times in both modalities. Audio segment ``(i, s)`` and video
segment ``(i, s)`` form the positive pair; which other segments serve as negatives is set by ``negatives``:

- ``"all"`` (Synchformer): every other segment of the (gathered) batch, so other moments of the same video are
  hard negatives;
- ``"cross_video"``: only segments of other videos: the other segments of the same clip and every segment of
  other clips of the same video (``video_ids``) are masked out;
- ``"within_video"``: only the other segments of the same clip.

``local_clips`` gives open_clip's local loss: a rank computes only the rows of its own clips against the gathered
columns (``B_local*S x B*S`` logits per direction instead of ``(B*S)^2``); the gradients DDP averages are the full
loss's (see :func:`sync_infonce`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NEGATIVE_MODES = ("all", "cross_video", "within_video")


def _check_pair(a: Tensor, v: Tensor) -> None:
    if a.dim() != 3 or v.dim() != 3:
        raise ValueError(f"expected audio/video embeddings of shape [B, S, D], got {tuple(a.shape)} and {tuple(v.shape)}")
    if a.shape != v.shape:
        raise ValueError(f"audio and video embeddings differ in shape: {tuple(a.shape)} vs {tuple(v.shape)}")


def _check_video_ids(video_ids: Tensor | None, batch: int) -> None:
    if video_ids is not None and tuple(video_ids.shape) != (batch,):
        raise ValueError(f"video_ids must hold one id per clip, shape ({batch},), got {tuple(video_ids.shape)}")


def _local_range(local_clips: slice | None, batch: int) -> tuple[int, int]:
    if local_clips is None:
        return 0, batch
    start, stop, step = local_clips.indices(batch)
    if step != 1 or not 0 <= start < stop or local_clips.stop is None or local_clips.stop > batch:
        raise ValueError(f"local_clips must be a contiguous non-empty slice of the {batch} gathered clips, got "
                         f"{local_clips}")
    return start, stop


def negatives_mask(
    batch: int,
    segments: int,
    negatives: str,
    device: torch.device | None = None,
    video_ids: Tensor | None = None,
    local_clips: slice | None = None,
) -> Tensor:
    """Bool [R, B*S]: True where a (row, column) pair enters the softmax (positives are always kept).

    Rows are all B*S segments (R = B*S), or those of the clips ``local_clips`` (the local loss). ``video_ids``
    (int [B], default: every clip its own video) marks clips of one video, which ``cross_video`` excludes.
    """
    if negatives not in NEGATIVE_MODES:
        raise ValueError(f"unknown negatives mode {negatives!r}; expected one of {NEGATIVE_MODES}")
    _check_video_ids(video_ids, batch)
    c0, c1 = _local_range(local_clips, batch)
    n = batch * segments
    rows = slice(c0 * segments, c1 * segments)
    if negatives == "all":
        return torch.ones(rows.stop - rows.start, n, dtype=torch.bool, device=device)
    clip = torch.arange(batch, device=device).repeat_interleave(segments)
    if negatives == "within_video":
        return clip[rows, None] == clip[None, :]
    video = clip if video_ids is None else video_ids.to(device).repeat_interleave(segments)
    seg = torch.arange(n, device=device)
    return (video[rows, None] != video[None, :]) | (seg[rows, None] == seg[None, :])


def sync_infonce(
    a: Tensor,
    v: Tensor,
    temperature: float | Tensor,
    negatives: str = "all",
    *,
    video_ids: Tensor | None = None,
    local_clips: slice | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Symmetric InfoNCE over all B*S segments.

    ``a``, ``v``: L2-normalised [B, S, D] (already gathered across ranks if distributed). With
    ``z = a_flat @ v_flat.T / temperature`` (pairs excluded by ``negatives`` set to -inf),
    ``loss = (CE(z, diag) + CE(z.T, diag)) / 2``. ``video_ids`` (int [B]): clips with equal ids come from one
    video (``cross_video`` then excludes all of its segments; a row left without negatives adds 0 to the loss).

    ``local_clips`` (open_clip's ``local_loss``): only the rows of these clips, against all columns, in both
    directions: ``z_a2v = a[local] @ v.T``, ``z_v2a = v[local] @ a.T``, loss averaged over the local rows. With
    every rank passing its own equal-sized slice, the mean of the ranks' losses is the full loss, and as
    ``all_gather``'s backward sums every rank's gradient into each embedding's owner, the gradients DDP averages
    equal the full loss's, for ``B_local*S x B*S`` instead of ``(B*S)^2`` logits per rank.

    Returns ``(loss, logs)`` with ``loss_a2v``, ``loss_v2a`` and ``num_negatives`` (negatives per positive,
    averaged over the rows).
    """
    _check_pair(a, v)
    b, s, _ = a.shape
    _check_video_ids(video_ids, b)
    c0, c1 = _local_range(local_clips, b)
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
    rows = slice(c0 * s, c1 * s)
    if local_clips is None:
        logits_a2v = af @ vf.t() / temperature
        logits_v2a = logits_a2v.t()
    else:  # the mask is symmetric, so the v2a rows take the same one
        logits_a2v = af[rows] @ vf.t() / temperature
        logits_v2a = vf[rows] @ af.t() / temperature
    if negatives == "all":
        num_negatives = torch.tensor(float(b * s - 1))
    else:
        keep = negatives_mask(b, s, negatives, device=a.device, video_ids=video_ids, local_clips=local_clips)
        logits_a2v = logits_a2v.masked_fill(~keep, float("-inf"))
        logits_v2a = logits_v2a.masked_fill(~keep, float("-inf")) if local_clips is not None else logits_a2v.t()
        num_negatives = (keep.sum(dim=1) - 1).float().mean().detach()
    target = torch.arange(rows.start, rows.stop, device=a.device)
    loss_a2v = F.cross_entropy(logits_a2v, target)
    loss_v2a = F.cross_entropy(logits_v2a, target)
    loss = 0.5 * (loss_a2v + loss_v2a)
    logs = {"loss_a2v": loss_a2v.detach(), "loss_v2a": loss_v2a.detach(), "num_negatives": num_negatives}
    return loss, logs


def _clamp_after_load(module: nn.Module, _incompatible_keys: object) -> None:
    if isinstance(module, LearnableTemperature):
        module.clamp_()


class LearnableTemperature(nn.Module):
    """Softmax temperature stored as ``log(t)`` and kept in ``[min, max]`` (Synchformer: 0.07 in [0.001, 0.5]).
    With ``learnable=False`` it is a constant buffer.

    Forward returns ``exp(log_t)`` as is; the parameter is clamped in place by :meth:`clamp_` after each optimiser
    step (as CLIP and Synchformer do; ``AVSSLModule.optimizer_step`` does it, a plain loop calls
    :func:`clamp_temperatures`). Clamping on read instead would zero the gradient for good once a step took the
    parameter past a bound. A state dict is clamped on load (older checkpoints may hold a value past a bound).

    The stored ``log(t)`` has shape ``[1]``, not ``[]``: FSDP flattens parameters and refuses 0-d ones
    (``trainer=fsdp``). A 0-d value from an older state dict is loaded as ``[1]``; ``forward`` returns a 0-d
    tensor either way.
    """

    def __init__(self, init: float = 0.07, min: float = 0.001, max: float = 0.5, learnable: bool = True):
        super().__init__()
        if not 0 < min <= max:
            raise ValueError(f"temperature bounds must satisfy 0 < min <= max, got min={min}, max={max}")
        if not min <= init <= max:
            raise ValueError(f"initial temperature {init} lies outside [{min}, {max}]")
        self.min = float(min)
        self.max = float(max)
        log_t = torch.tensor([math.log(init)], dtype=torch.float32)
        if learnable:
            self.log_temperature = nn.Parameter(log_t)
        else:
            self.register_buffer("log_temperature", log_t)
        self.register_load_state_dict_post_hook(_clamp_after_load)

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        key = prefix + "log_temperature"
        value = state_dict.get(key)
        if isinstance(value, Tensor) and value.dim() == 0:  # saved before the [1] shape
            state_dict[key] = value.reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored ``log(t)`` in place to ``[log(min), log(max)]``."""
        self.log_temperature.clamp_(math.log(self.min), math.log(self.max))

    def forward(self) -> Tensor:
        return self.log_temperature.exp().reshape(())

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
        local_loss: bool = False,
    ):
        super().__init__()
        if negatives not in NEGATIVE_MODES:
            raise ValueError(f"unknown negatives mode {negatives!r}; expected one of {NEGATIVE_MODES}")
        if curriculum_epochs < 0:
            raise ValueError(f"curriculum_epochs must be >= 0, got {curriculum_epochs}")
        self.temperature = LearnableTemperature(temperature, temperature_min, temperature_max, learn_temperature)
        self.negatives = negatives
        self.curriculum_epochs = int(curriculum_epochs)
        self.local_loss = bool(local_loss)  # read by the caller that gathers (AVPretrainModel)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def current_negatives(self) -> str:
        return "cross_video" if self.epoch < self.curriculum_epochs else self.negatives

    def forward(
        self, a: Tensor, v: Tensor, *, video_ids: Tensor | None = None, local_clips: slice | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """``sync_infonce`` of (gathered) ``a``, ``v`` with the current negatives and temperature."""
        t = self.temperature()
        loss, logs = sync_infonce(a, v, t, self.current_negatives, video_ids=video_ids, local_clips=local_clips)
        logs["temperature"] = t.detach()
        return loss, logs

    def extra_repr(self) -> str:
        return (f"negatives={self.negatives!r}, curriculum_epochs={self.curriculum_epochs}, "
                f"local_loss={self.local_loss}")


def clamp_temperatures(module: nn.Module) -> None:
    """Clamp every :class:`LearnableTemperature` in ``module`` in place; call after each ``optimizer.step()``."""
    for m in module.modules():
        if isinstance(m, LearnableTemperature):
            m.clamp_()


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping gradients (identity when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    if torch.distributed.get_world_size() == 1:
        return x
    import torch.distributed.nn.functional as dist_fn

    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` (e.g. int video ids) from every rank along dim 0, without autograd (identity when not
    distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return x
    world = torch.distributed.get_world_size()
    if world == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world)]
    torch.distributed.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def local_clip_slice(local_batch: int) -> slice | None:
    """This rank's clips in a batch gathered from equal-sized local batches (None when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    rank = torch.distributed.get_rank()
    return slice(rank * local_batch, (rank + 1) * local_batch)


__all__ = [
    "NEGATIVE_MODES",
    "negatives_mask",
    "sync_infonce",
    "LearnableTemperature",
    "SyncContrastive",
    "clamp_temperatures",
    "gather_with_grad",
    "gather_no_grad",
    "local_clip_slice",
    "batch_video_ids",
    "contrast",
]


def batch_video_ids(batch: Mapping[str, Any], b: int, device: torch.device) -> Tensor | None:
    """int64 [B] source-video id per clip: ``batch["video_id"]``, else hashed from ``batch["path"]`` (what the
    datasets and the shard reader carry); None (every clip its own video) when the batch has neither."""
    from avssl.data.sampling import video_id

    ids = batch.get("video_id")
    if isinstance(ids, Tensor):
        return ids.to(device=device, dtype=torch.int64).reshape(b)
    paths = batch.get("path")
    if isinstance(paths, (list, tuple)) and len(paths) == b and all(isinstance(p, str) for p in paths):
        return torch.tensor([video_id(p) for p in paths], dtype=torch.int64, device=device)
    return None


def contrast(module: SyncContrastive, a: Tensor, v: Tensor, batch: Mapping[str, Any],
             gather_distributed: bool) -> tuple[Tensor, dict[str, Tensor]]:
    """``module`` on the (gathered) embeddings [B, S, D]; video ids only where the negatives need them
    (cross_video); with ``local_loss`` only this rank's rows against the gathered columns."""
    ids = None
    if module.current_negatives == "cross_video":
        ids = batch_video_ids(batch, int(a.shape[0]), a.device)
        if ids is not None and gather_distributed:
            ids = gather_no_grad(ids)
    local = local_clip_slice(int(a.shape[0])) if module.local_loss and gather_distributed else None
    if gather_distributed:
        a, v = gather_with_grad(a), gather_with_grad(v)
    return module(a, v, video_ids=ids, local_clips=local)
