"""PNG plots of evaluation results (matplotlib's object API: no pyplot state, no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch


def _save(fig, path: str | os.PathLike[str]) -> Path:  # noqa: ANN001 - matplotlib Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def plot_similarity_vs_offset(
    sim: torch.Tensor, offsets: Sequence[float], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Mean (± one std) similarity across clips against the audio offset; ``sim`` is [N, K]."""
    from matplotlib.figure import Figure

    s = sim.double()
    mean = s.mean(0).numpy()
    std = s.std(0, unbiased=False).numpy() if s.shape[0] > 1 else 0 * mean
    x = list(offsets)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.add_subplot()
    ax.plot(x, mean, marker="o", ms=3, label="mean over clips")
    ax.fill_between(x, mean - std, mean + std, alpha=0.25, label="± 1 std")
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_xlabel("audio offset (s)")
    ax.set_ylabel("cosine similarity")
    ax.set_title(title or f"A/V similarity vs offset ({s.shape[0]} clips)")
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_similarity_matrix(
    sim: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    xlabel: str = "video",
    ylabel: str = "audio",
    title: str = "",
) -> Path:
    """Heat map of a query x gallery similarity matrix (correct matches on the diagonal)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    im = ax.imshow(sim.double().numpy(), cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"cross-modal similarity ({sim.shape[0]} x {sim.shape[1]})")
    return _save(fig, path)


__all__ = ["plot_similarity_vs_offset", "plot_similarity_matrix"]
