"""Typed schema of the ``avssl-eval`` config (``avssl/conf/eval/eval.yaml`` fills it; defaults live in the YAML).

Registered in Hydra's ConfigStore as ``eval_schema``: with struct mode on, a misspelt key or a value of the wrong
type fails at launch with a message naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalDataConfig:
    source: str = "demo"  # demo | folder | manifest
    path: str | None = None
    labels_csv: str | None = None
    eval_split: str | None = "val"
    max_items: int | None = None
    demo: dict[str, Any] = field(default_factory=dict)


@dataclass
class OffsetConfig:
    min: float = -2.0
    max: float = 2.0
    step: float = 0.2
    clips_per_item: int = 1
    clip_seconds: float | None = None


@dataclass
class RetrievalConfig:
    clip_seconds: float | None = None
    aggregate: str = "embedding"  # embedding | segments
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])


@dataclass
class ProbeConfig:
    train_split: str = "train"
    test_split: str = "val"
    window: float | None = None
    hop: float | None = None
    max_windows: int | None = None
    k: int = 5
    weight_decay: float = 1e-4


@dataclass
class FinetuneConfig:
    modality: str = "video"
    epochs: int = 5
    batch_size: int = 16
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.05
    segments_per_item: int = 8


@dataclass
class EvalConfig:
    checkpoint: str | None = None
    output_dir: str | None = None
    device: str = "cpu"
    seed: int = 0
    progress: bool = True
    tasks: list[str] = field(default_factory=list)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    offset: OffsetConfig = field(default_factory=OffsetConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


def register_eval_schema() -> None:
    """Store ``EvalConfig`` as ``eval_schema`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="eval_schema", node=EvalConfig)


__all__ = [
    "EvalConfig",
    "EvalDataConfig",
    "OffsetConfig",
    "RetrievalConfig",
    "ProbeConfig",
    "FinetuneConfig",
    "register_eval_schema",
]
