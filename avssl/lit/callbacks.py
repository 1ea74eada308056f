"""Callbacks of a pretraining run: checkpoints (last + best by a validation metric), LR monitor, early stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint


def build_callbacks(cfg: dict[str, Any], checkpoint_dir: str | Path, has_logger: bool = True) -> list[Callback]:
    """Callbacks from the ``callbacks`` config section; checkpoints go to ``checkpoint_dir``.

    The LR monitor needs a logger and is left out without one.
    """
    out: list[Callback] = []
    ck = cfg["checkpoint"]
    if ck["enabled"]:
        if ck["mode"] not in ("min", "max"):
            raise ValueError(f"callbacks.checkpoint.mode must be 'min' or 'max', got {ck['mode']!r}")
        out.append(
            ModelCheckpoint(
                dirpath=str(checkpoint_dir),
                filename="best-epoch{epoch:03d}",
                auto_insert_metric_name=False,
                monitor=ck["monitor"],
                mode=ck["mode"],
                save_last=bool(ck["save_last"]),
                save_top_k=int(ck["save_top_k"]),
                every_n_epochs=int(ck["every_n_epochs"]),
            )
        )
    if cfg.get("lr_monitor") and has_logger:
        out.append(LearningRateMonitor(logging_interval="step"))
    patience = cfg.get("early_stopping_patience")
    if patience is not None:
        out.append(EarlyStopping(monitor=ck["monitor"], mode=ck["mode"], patience=int(patience)))
    return out


__all__ = ["build_callbacks"]
