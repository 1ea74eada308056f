"""Evaluation metrics on embeddings: pure functions, tensors in, plain Python numbers out.

Conventions: embeddings are compared by cosine similarity (rows L2-normalised here); a similarity matrix
``sim[i, j]`` scores query ``i`` against gallery item ``j`` and the correct match of query ``i`` is item ``i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def cosine_similarity_matrix(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Cosine similarity [Q, G] between rows of ``queries`` [Q, D] and ``gallery`` [G, D]."""
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"expected [Q, D] and [G, D] embeddings, got {tuple(queries.shape)} and {tuple(gallery.shape)}"
        )
    q = F.normalize(queries.double(), dim=-1)
    g = F.normalize(gallery.double(), dim=-1)
    return q @ g.T


def match_ranks(sim: torch.Tensor) -> torch.Tensor:
    """Rank (0 = best) of the correct item ``i`` in row ``i`` of ``sim`` [N, N]; ties count against the query."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got {tuple(sim.shape)}")
    correct = sim.diagonal().unsqueeze(1)
    others = torch.ones_like(sim, dtype=torch.bool).fill_diagonal_(False)
    return ((sim >= correct) & others).sum(dim=1)


def recall_at_k(sim: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Fraction of queries whose correct item is among the top ``k`` (``R@k``), for each ``k``."""
    ranks = match_ranks(sim)
    return {f"R@{k}": float((ranks < k).double().mean()) for k in ks}


def cross_modal_retrieval(
    audio: torch.Tensor, video: torch.Tensor, ks: Sequence[int] = (1, 5, 10)
) -> dict[str, float | int]:
    """Audio->video and video->audio recall@k for paired embeddings ``audio[i] <-> video[i]`` ([N, D] each).

    Also reports the median rank (1-based) per direction and the number of items (chance R@k = k / N).
    """
    if audio.shape != video.shape:
        raise ValueError(
            f"audio and video embeddings differ in shape: {tuple(audio.shape)} vs {tuple(video.shape)}"
        )
    return retrieval_from_similarity(cosine_similarity_matrix(audio, video), ks)


def retrieval_from_similarity(sim: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float | int]:
    """:func:`cross_modal_retrieval`'s metrics from an audio x video similarity matrix ``[N, N]`` (pairs on the
    diagonal)."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got {tuple(sim.shape)}")
    out: dict[str, float | int] = {"num_items": int(sim.shape[0])}
    for name, s in (("a2v", sim), ("v2a", sim.T)):
        for key, value in recall_at_k(s, ks).items():
            out[f"{name}_{key}"] = value
        out[f"{name}_median_rank"] = float(match_ranks(s).double().median() + 1)
    return out


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: probability that a random positive outscores a random negative (ties count 1/2).

    Computed exactly from average ranks (Mann-Whitney U). ``labels`` are bool or {0, 1}.
    """
    scores = scores.flatten().double()
    labels = labels.flatten().bool()
    if scores.numel() != labels.numel():
        raise ValueError(f"{scores.numel()} scores but {labels.numel()} labels")
    n_pos = int(labels.sum())
    n_neg = int(labels.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"ROC AUC needs positives and negatives, got {n_pos} positives and {n_neg} negatives"
        )
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    # average 1-based rank within each group of tied scores
    _, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    avg = ends - (counts.double() - 1) / 2
    ranks[order] = avg[inverse]
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def offset_grid(min_offset: float = -2.0, max_offset: float = 2.0, step: float = 0.2) -> list[float]:
    """Offsets ``min, min + step, ..., max`` in seconds, rounded to 1e-6 (default: the 21 Synchformer classes)."""
    if step <= 0 or max_offset < min_offset:
        raise ValueError(f"invalid offset grid: min={min_offset}, max={max_offset}, step={step}")
    n = int(round((max_offset - min_offset) / step)) + 1
    if abs(min_offset + (n - 1) * step - max_offset) > 1e-6:
        raise ValueError(f"offset range [{min_offset}, {max_offset}] is not a whole number of {step} s steps")
    return [round(min_offset + i * step, 6) for i in range(n)]


def offset_classification(
    sim: torch.Tensor, offsets: Sequence[float], true_offsets: torch.Tensor | Sequence[float] | None = None
) -> dict[str, float | int]:
    """Zero-shot offset classification from similarities.

    ``sim`` [N, K]: similarity of clip ``n``'s video with its audio shifted by candidate ``offsets[k]``. The
    prediction is the highest-scoring offset; the truth is ``true_offsets[n]`` (default 0 s, i.e. in sync). Reports
    ``acc`` (exact class), ``acc_within_1`` (within one grid step), ``auc_sync`` (ROC AUC of the similarity separating
    the true offset from every other offset on the grid), the mean absolute error in seconds and chance level.
    """
    if sim.ndim != 2 or sim.shape[1] != len(offsets):
        raise ValueError(f"expected similarities [N, {len(offsets)}], got {tuple(sim.shape)}")
    grid = torch.tensor(list(offsets), dtype=torch.float64)
    if true_offsets is None:
        truth = torch.zeros(sim.shape[0], dtype=torch.float64)
    else:
        truth = torch.as_tensor(true_offsets, dtype=torch.float64).flatten()
        if truth.numel() != sim.shape[0]:
            raise ValueError(f"{truth.numel()} true offsets for {sim.shape[0]} clips")
    distance = (grid.unsqueeze(0) - truth.unsqueeze(1)).abs()
    true_idx = distance.argmin(dim=1)
    if bool((distance.min(dim=1).values > 1e-6).any()):
        raise ValueError("every true offset must lie on the offset grid")
    pred_idx = sim.double().argmax(dim=1)
    steps = (pred_idx - true_idx).abs()
    labels = torch.zeros_like(sim, dtype=torch.bool)
    labels[torch.arange(sim.shape[0]), true_idx] = True
    return {
        "acc": float((steps == 0).double().mean()),
        "acc_within_1": float((steps <= 1).double().mean()),
        "auc_sync": roc_auc(sim, labels),
        "mean_abs_error_s": float((grid[pred_idx] - grid[true_idx]).abs().mean()),
        "chance_acc": 1.0 / len(offsets),
        "num_clips": int(sim.shape[0]),
        "num_offsets": len(offsets),
    }


__all__ = [
    "cosine_similarity_matrix",
    "match_ranks",
    "recall_at_k",
    "cross_modal_retrieval",
    "roc_auc",
    "offset_grid",
    "offset_classification",
    "retrieval_from_similarity",
]
