"""Optimiser and learning-rate schedule: AdamW with decay-free groups, linear warmup then cosine decay per step."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn


def split_decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float, no_decay_keywords: Sequence[str]
) -> list[dict[str, Any]]:
    """Two AdamW groups: weights with decay, and norms/biases/1-d params/named keywords without.

    A parameter goes without decay when it has fewer than 2 dimensions (biases, norm scales, scalar temperatures)
    or its name contains one of ``no_decay_keywords`` (positional embeddings, class/mask tokens, temperature).
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    decay_names: list[str] = []
    no_decay_names: list[str] = []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim < 2 or any(k in name for k in no_decay_keywords):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "names": decay_names})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "names": no_decay_names})
    return groups


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at ``step``: linear from 1/(warmup+1) to 1 over ``warmup_steps``, then cosine to ``min_ratio``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    model: nn.Module, cfg: dict[str, Any], total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int]:
    """AdamW + per-step LambdaLR from an ``optimizer`` config section. Returns (optimizer, scheduler, warmup)."""
    name = str(cfg.get("name", "adamw")).lower()
    if name != "adamw":
        raise ValueError(f"optimizer.name: unknown optimizer {name!r}; supported: 'adamw'")
    lr = float(cfg["lr"])
    groups = split_decay_groups(model.named_parameters(), float(cfg["weight_decay"]), cfg.get("no_decay_keywords", []))
    for g in groups:
        g.pop("names")
    betas = tuple(float(b) for b in cfg.get("betas", (0.9, 0.999)))
    if len(betas) != 2:
        raise ValueError(f"optimizer.betas must hold two numbers, got {cfg.get('betas')}")
    opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=float(cfg.get("eps", 1e-8)))  # type: ignore[arg-type]
    total_steps = max(1, int(total_steps))
    if cfg.get("warmup_steps") is not None:
        warmup = int(cfg["warmup_steps"])
    else:
        warmup = int(round(float(cfg.get("warmup_fraction", 0.0)) * total_steps))
    warmup = max(0, min(warmup, total_steps - 1))
    min_ratio = float(cfg.get("min_lr_ratio", 0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, warmup, total_steps, min_ratio))
    return opt, sched, warmup


__all__ = ["build_optimizer", "split_decay_groups", "warmup_cosine"]
