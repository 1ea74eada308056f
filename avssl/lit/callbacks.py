"""Callbacks of a pretraining run: checkpoints (last + best by a validation metric), LR monitor, early stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint


class TrainingPlan(Callback):
    """Prints, when training starts, how many clips, batches and optimiser steps the run will take."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        dm = getattr(trainer, "datamodule", None)
        clips = len(dm.train_set) if dm is not None and getattr(dm, "train_set", None) is not None else None
        batches = trainer.num_training_batches
        steps = trainer.estimated_stepping_batches
        what = f"{clips} clips/epoch in " if clips is not None else ""
        print(f"training plan: {what}{batches} batches/epoch per rank x {trainer.max_epochs} epochs (max_steps "
              f"{trainer.max_steps}) -> {steps} optimizer steps", flush=True)


def resolve_monitor(checkpoint: dict[str, Any], default: tuple[str, str]) -> None:
    """Fill ``callbacks.checkpoint.monitor: auto`` (and ``mode: auto``) in place with ``default``, the
    ``(metric, mode)`` the active objectives track (``AVPretrainModel.default_monitor``)."""
    if checkpoint["monitor"] == "auto":
        checkpoint["monitor"] = default[0]
        if checkpoint["mode"] == "auto":
            checkpoint["mode"] = default[1]
    elif checkpoint["mode"] == "auto":
        raise ValueError(f"callbacks.checkpoint.mode=auto goes with monitor=auto; give min or max for "
                         f"{checkpoint['monitor']}")


def build_callbacks(cfg: dict[str, Any], checkpoint_dir: str | Path, has_logger: bool = True) -> list[Callback]:
    """Callbacks from the ``callbacks`` config section; checkpoints go to ``checkpoint_dir``.

    ``checkpoint.every_n_epochs`` writes the best checkpoint(s) by ``checkpoint.monitor`` (and ``last.ckpt``);
    ``checkpoint.every_n_train_steps`` (optional) also writes ``last.ckpt`` every N optimizer steps.

    The LR monitor needs a logger and is left out without one.
    """
    out: list[Callback] = [TrainingPlan()]
    ck = cfg["checkpoint"]
    if "auto" in (ck["monitor"], ck["mode"]):
        raise ValueError("callbacks.checkpoint.monitor/mode 'auto' must be resolved first (resolve_monitor)")
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
        steps = ck.get("every_n_train_steps")
        if steps is not None:
            if int(steps) < 1:
                raise ValueError(f"callbacks.checkpoint.every_n_train_steps must be >= 1 or null, got {steps}")
            # Lightning's ModelCheckpoint takes one trigger: a second one writes last.ckpt every N steps (mid-epoch
            # too), which a resumed run (ckpt_path=last) continues from exactly
            out.append(ModelCheckpoint(dirpath=str(checkpoint_dir), monitor=None, save_top_k=0, save_last=True,
                                       every_n_train_steps=int(steps)))
    if cfg.get("lr_monitor") and has_logger:
        out.append(LearningRateMonitor(logging_interval="step"))
    patience = cfg.get("early_stopping_patience")
    if patience is not None:
        out.append(EarlyStopping(monitor=ck["monitor"], mode=ck["mode"], patience=int(patience)))
    return out


__all__ = ["build_callbacks"]
