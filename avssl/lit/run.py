"""Pretraining driver: composed config in, trained checkpoint and validation metrics out.

``avssl-train`` (``avssl.cli.train``) calls :func:`train` with Hydra's composed config; tests and notebooks can call
it with a config composed by ``hydra.compose``. Nothing here needs a running Hydra app.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, OmegaConf

from avssl.lit.callbacks import build_callbacks, resolve_monitor
from avssl.lit.datamodule import AVDataModule, preprocessing_from_data
from avssl.lit.distributed import (
    ExactResumeCallback,
    LocalValidationCallback,
    ShardEpochCallback,
    build_strategy,
    check_resume_config,
)
from avssl.lit.module import AVSSLModule

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: its folder, checkpoints and the final validation metrics."""

    output_dir: str
    last_checkpoint: str | None
    best_checkpoint: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    monitor: str | None = None  # the metric the best checkpoint was chosen by


def to_plain(cfg: DictConfig | dict[str, Any]) -> dict[str, Any]:
    """A resolved plain-dict copy of a config (no OmegaConf objects)."""
    if isinstance(cfg, DictConfig):
        out = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        assert isinstance(out, dict)
        return out  # type: ignore[return-value]
    return json.loads(json.dumps(cfg))


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on CUDA GPUs that support it, 16-mixed on other CUDA GPUs, 32-true otherwise."""
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _logger(cfg: dict[str, Any], output_dir: Path) -> Any:
    name = str(cfg["name"]).lower()
    if name in ("none", "null", "false"):
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(output_dir), name="logs", version=cfg.get("version"))
    if name == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(save_dir=str(output_dir), name="tb", version=cfg.get("version"))
    raise ValueError(f"logger.name: unknown logger {cfg['name']!r}; expected csv, tensorboard or none")


def build_trainer(cfg: dict[str, Any], output_dir: Path) -> pl.Trainer:
    """A Lightning Trainer from the ``trainer``, ``logger`` and ``callbacks`` sections."""
    t = dict(cfg["trainer"])
    t.pop("compile", None)
    t["precision"] = resolve_precision(str(t["precision"]), str(t["accelerator"]))
    if t.get("max_time") is None:
        t.pop("max_time", None)
    logger = _logger(cfg["logger"], output_dir)
    callbacks = build_callbacks(cfg["callbacks"], output_dir / "checkpoints", has_logger=logger is not False)
    # scale-out (avssl.lit.distributed): strategy objects from config, exact resume, streaming-shard epochs
    t["strategy"] = build_strategy(t.get("strategy"))
    callbacks += [ExactResumeCallback(int(cfg.get("seed") or 0), cfg.get("data")), ShardEpochCallback(),
                  LocalValidationCallback()]
    # AVDataModule splits train and validation data over ranks itself (EpochSampler, EvalBatchSampler)
    t["use_distributed_sampler"] = False
    return pl.Trainer(
        default_root_dir=str(output_dir),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=bool(cfg["callbacks"]["checkpoint"]["enabled"]),
        **t,
    )


def _final_metrics(trainer: pl.Trainer) -> dict[str, float]:
    out = {}
    for k, v in trainer.callback_metrics.items():
        if k.startswith(("val/", "data/")):
            out[k] = float(v.detach().float().item()) if isinstance(v, torch.Tensor) else float(v)
    return dict(sorted(out.items()))


def default_output_dir(task_name: str) -> Path:
    return Path("outputs") / task_name / time.strftime("%Y-%m-%d_%H-%M-%S")


def newest_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The most recently written of ``<output_dir>/checkpoints/last.ckpt`` and Lightning's SLURM pre-emption
    checkpoints ``<output_dir>/hpc_ckpt_<n>.ckpt`` (``ckpt_path=auto``); None when there is none."""
    out = Path(output_dir)
    found = [p for p in [out / "checkpoints" / "last.ckpt", *out.glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime_ns)) if found else None


def train(cfg: DictConfig | dict[str, Any], output_dir: str | os.PathLike[str] | None = None) -> TrainResult:
    """Pretrain (or only validate, with ``validate_only``) as the config says; return checkpoints and metrics.

    ``output_dir`` wins over ``cfg.output_dir``; with neither, ``outputs/<task_name>/<timestamp>``.
    """
    plain = to_plain(cfg)
    out_dir = Path(output_dir or plain.get("output_dir") or default_output_dir(plain["task_name"])).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "config.json", "w") as f:
        json.dump(plain, f, indent=1)
    start = time.time()
    pl.seed_everything(int(plain["seed"]), workers=True, verbose=False)

    module = AVSSLModule.from_config(plain, preprocessing_from_data(plain["data"]))
    model_parts: Any = module.model
    # only what the active objectives read is decoded (e.g. no video for an audio-only masked objective)
    dm = AVDataModule(plain["data"], seed=int(plain["seed"]), modalities=model_parts.modalities)
    ck = plain["callbacks"]["checkpoint"]
    resolve_monitor(ck, model_parts.default_monitor)  # "auto": what the active objectives track
    trainer = build_trainer(plain, out_dir)

    ckpt_path = plain.get("ckpt_path")
    if ckpt_path == "last":
        ckpt_path = str(out_dir / "checkpoints" / "last.ckpt")
    elif ckpt_path == "auto":  # a (re)queued job: resume from the newest checkpoint of output_dir, if any
        ckpt_path = newest_checkpoint(out_dir)
        log.info("ckpt_path=auto: %s", f"resuming from {ckpt_path}" if ckpt_path else "no checkpoint yet, starting")
    if ckpt_path is not None and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint at {ckpt_path}")
    if ckpt_path is not None:  # another model or data config is an error naming what differs
        saved = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        check_resume_config(saved, plain, dm.preprocessing, where=str(ckpt_path))
        del saved
    if plain.get("validate_only"):
        trainer.validate(module, datamodule=dm, ckpt_path=ckpt_path)
    else:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    metrics = _final_metrics(trainer)
    ckpt_cb = trainer.checkpoint_callback
    last = best = None
    if ckpt_cb is not None and not plain["trainer"].get("fast_dev_run"):
        last_path = Path(getattr(ckpt_cb, "dirpath", None) or out_dir / "checkpoints") / "last.ckpt"
        last = str(last_path) if last_path.is_file() else None
        best = ckpt_cb.best_model_path or None  # type: ignore[attr-defined]
    result = TrainResult(str(out_dir), last, best, metrics, time.time() - start, ck["monitor"])
    with open(out_dir / "metrics.json", "w") as f:
        json.dump({"metrics": metrics, "last_checkpoint": last, "best_checkpoint": best,
                   "seconds": round(result.seconds, 1)}, f, indent=1)
    return result


__all__ = ["TrainResult", "build_trainer", "default_output_dir", "newest_checkpoint", "resolve_precision", "to_plain", "train"]
