"""In-batch audio-visual metrics on segment embeddings. The returned key names are contracts used by training and
evaluation: ``sync_acc_a2v``, ``sync_acc_v2a``, ``sync_acc``; ``retrieval_top1_a2v``, ``retrieval_top1_v2a``,
``retrieval_top1``. Ties go to the lowest index (``argmax``)."""

from __future__ import annotations

import torch
from torch import Tensor


def _check(a: Tensor, v: Tensor) -> None:
    if a.dim() != 3 or a.shape != v.shape:
        raise ValueError(f"expected audio/video embeddings of equal shape [B, S, D], got {tuple(a.shape)} and "
                         f"{tuple(v.shape)}")


@torch.no_grad()
def sync_acc(a: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Within each clip, the fraction of segments whose same-time partner has the highest similarity among the
    clip's S segments (audio->video and video->audio; chance 1/S)."""
    _check(a, v)
    sim = torch.einsum("bsd,btd->bst", a.float(), v.float())  # [B, S_audio, S_video]
    target = torch.arange(a.shape[1], device=a.device)
    a2v = (sim.argmax(dim=2) == target).float().mean()
    v2a = (sim.argmax(dim=1) == target).float().mean()
    return {"sync_acc_a2v": a2v, "sync_acc_v2a": v2a, "sync_acc": 0.5 * (a2v + v2a)}


@torch.no_grad()
def retrieval_top1(a: Tensor, v: Tensor) -> dict[str, Tensor]:
    """Clip-level in-batch top-1 retrieval; clip similarity ``C[i, j] = sum_s <a_is, v_js>`` (chance 1/B)."""
    _check(a, v)
    sim = torch.einsum("isd,jsd->ij", a.float(), v.float())  # [B_audio, B_video]
    target = torch.arange(a.shape[0], device=a.device)
    a2v = (sim.argmax(dim=1) == target).float().mean()
    v2a = (sim.argmax(dim=0) == target).float().mean()
    return {"retrieval_top1_a2v": a2v, "retrieval_top1_v2a": v2a, "retrieval_top1": 0.5 * (a2v + v2a)}


__all__ = ["sync_acc", "retrieval_top1"]
