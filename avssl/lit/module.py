"""LightningModule for audio-visual pretraining: encoders + heads + objectives, optimiser, metrics.

Hyperparameters are plain containers of primitives, so a checkpoint loads with ``torch.load(..., weights_only=True)``
and holds everything needed to rebuild the encoders and their preprocessing:

- ``hparams["model"]``: encoder names and keyword arguments per modality, embedding width, model extras;
- ``hparams["objective"]``: loss weights and settings;
- ``hparams["preprocessing"]``: segment length, segments per clip, fps, frame size, video normalisation, sample
  rate, log-mel settings and statistics (see ``avssl.lit.datamodule.preprocessing_from_data``);
- ``hparams["optimizer"]``, ``hparams["compile"]``, ``hparams["seed"]``, ``hparams["avssl_version"]``.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

import avssl
from avssl.lit.optim import build_optimizer
from avssl.objectives.build import INPUT_SIZE_KWARGS, build_pretrain_model, encoder_kwargs  # noqa: F401
from avssl.objectives.contrastive import clamp_temperatures
from avssl.objectives.metrics import retrieval_top1, sync_acc

VAL_MASK_SEED = 1234  # masks in validation are drawn from generators seeded with VAL_MASK_SEED + batch_idx


def _batch_size(batch: dict[str, Any]) -> int:
    """Clips in a batch (it holds the modalities the objectives read: video, audio or both)."""
    return int(next(batch[m] for m in ("video", "audio") if m in batch).shape[0])


class AVSSLModule(pl.LightningModule):
    """Pretrains a video and an audio encoder with the objectives named in ``objective``.

    Logged metrics (``train/…`` per step and epoch, ``val/…`` per epoch over the whole val set): ``loss``, each
    loss term the model reports (``loss_sync``, ``recon_video``, ``recon_baseline_video``, …), ``sync_acc``
    (+ ``_a2v``, ``_v2a``) and ``retrieval_top1`` (+ directions; val: over full batches of ``val_batch_size``
    clips only), and ``data/bad_files`` (distinct files found undecodable so far, over workers and ranks).

    Learnable temperatures are clamped in place right after each optimiser step (:meth:`optimizer_step`).
    """

    def __init__(
        self,
        model: dict[str, Any],
        objective: dict[str, Any],
        optimizer: dict[str, Any],
        preprocessing: dict[str, Any],
        compile: bool = False,
        seed: int | None = None,
        avssl_version: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_pretrain_model(model, objective, preprocessing)
        self.retrieval_batch = int(preprocessing.get("val_batch_size", 16))
        self._compiled = False
        self.bad_files: set[str] = set()  # this rank's distinct undecodable files (from batch["bad_files"])
        self._counts_bad_files = False  # True once a batch carried "bad_files" (map-style datasets do)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], preprocessing: dict[str, Any]) -> AVSSLModule:
        """Build from a resolved train config (plain dict, see ``avssl.config.TrainConfig``)."""
        return cls(
            model=copy.deepcopy(cfg["model"]),
            objective=copy.deepcopy(cfg["objective"]),
            optimizer=copy.deepcopy(cfg["optimizer"]),
            preprocessing=copy.deepcopy(preprocessing),
            compile=bool(cfg.get("trainer", {}).get("compile", False)),
            seed=cfg.get("seed"),
            avssl_version=avssl.__version__,
        )

    # --- encoders -------------------------------------------------------------------------------------------

    @property
    def encoders(self) -> nn.ModuleDict:
        """The encoders keyed by modality ("video", "audio")."""
        return self.model.encoders  # type: ignore[return-value]

    def configure_model(self) -> None:
        if self.hparams["compile"] and not self._compiled:
            self.model.compile()  # in place: parameter names (and checkpoints) stay unchanged
            self._compiled = True

    # --- steps ----------------------------------------------------------------------------------------------

    def _set_epoch(self) -> None:
        model: Any = self.model
        if hasattr(model, "set_epoch"):
            model.set_epoch(self.current_epoch)

    def on_train_epoch_start(self) -> None:
        self._set_epoch()

    def on_validation_epoch_start(self) -> None:
        self._set_epoch()

    def _log_dict(self, prefix: str, values: dict[str, Any], batch_size: int, on_step: bool) -> None:
        for k, v in values.items():
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    continue
                v = v.detach().float()
            self.log(f"{prefix}/{k}", v, on_step=on_step, on_epoch=True, batch_size=batch_size,
                     sync_dist=not on_step)

    def _log_bad_files(self, batch: dict[str, Any]) -> None:
        """Collect the broken files a batch reports. ``batch["bad_files"]`` (``AVClipDataset``): per sample the
        newline-separated paths its worker newly found undecodable; they are counted once each, across workers
        and (at epoch end) ranks. A batch without it (shard data) counts its skipped samples instead."""
        found = batch.get("bad_files")
        if isinstance(found, (list, tuple)):
            self._counts_bad_files = True
            self.bad_files.update(p for entry in found for p in str(entry).split("\n") if p)
            return
        skipped = batch.get("num_skipped")
        if isinstance(skipped, Tensor):
            self.log("data/bad_files", skipped.sum().float(), on_step=False, on_epoch=True, reduce_fx="sum",
                     batch_size=1, sync_dist=True)

    def _log_bad_file_count(self) -> None:
        if not self._counts_bad_files:
            return
        files = self.bad_files
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, sorted(files))
            files = set().union(*gathered)
        self.log("data/bad_files", float(len(files)), on_step=False, on_epoch=True, batch_size=1)

    def on_train_epoch_end(self) -> None:
        self._log_bad_file_count()

    def on_validation_epoch_end(self) -> None:
        self._log_bad_file_count()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["avssl_bad_files"] = sorted(self.bad_files)  # this rank's; a list of str loads weights_only

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from avssl.objectives.pretrain import upgrade_state_dict

        self.bad_files = set(checkpoint.get("avssl_bad_files", []))
        if isinstance(checkpoint.get("state_dict"), dict):  # format-1 layouts (before objective plug-ins)
            checkpoint["state_dict"] = upgrade_state_dict(checkpoint["state_dict"], prefix="model.")
        # the temperature's log(t) was 0-d before it became [1] (FSDP refuses 0-d parameters); no parameter is
        # 0-d now, so a 0-d per-parameter optimiser tensor other than Adam's step count is that one's
        for opt in checkpoint.get("optimizer_states") or []:
            for state in (opt.get("state") or {}).values() if isinstance(opt, dict) else ():
                for k, v in list(state.items()):
                    if k != "step" and isinstance(v, Tensor) and v.dim() == 0:
                        state[k] = v.reshape(1)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out = self.model(batch, generator=None)
        logs = {"loss": out.loss.detach(), **dict(out.logs)}  # includes in-batch sync_acc / retrieval_top1
        self._log_dict("train", logs, _batch_size(batch), on_step=True)
        self._log_bad_files(batch)
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(VAL_MASK_SEED + batch_idx)
        out = self.model(batch, generator=gen)
        bsz = _batch_size(batch)
        logs = {k: v for k, v in out.logs.items() if not k.startswith(("sync_acc", "retrieval_top1"))}
        logs["loss"] = out.loss.detach()
        if out.unmasked and out.audio_emb is not None and out.video_emb is not None:
            emb: tuple[Tensor, Tensor] | None = (out.audio_emb, out.video_emb)  # the loss's, unmasked: encode once
        elif "video" in batch and "audio" in batch:  # e.g. joint-contrastive ones come from masked inputs
            emb = self.segment_embeddings(batch["video"], batch["audio"])
        else:  # a one-modality objective: no cross-modal metrics
            emb = None
        if emb is not None:
            a, v = emb
            logs.update(sync_acc(a, v))
            if bsz == self.retrieval_batch:  # retrieval is defined at a fixed batch size
                self._log_dict("val", dict(retrieval_top1(a, v)), bsz, on_step=False)
        self._log_dict("val", logs, bsz, on_step=False)
        self._log_bad_files(batch)

    @torch.no_grad()
    def segment_embeddings(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor] | None:
        """L2-normalised segment embeddings ``(audio, video)``, each [B, S, D], of the unmasked inputs in the
        space of the first active objective that has one (``sync``: projection heads; ``joint``: the joint
        layer's mean-pooled outputs); None when no objective aligns the modalities (e.g. ``avc`` alone)."""
        model: Any = self.model
        if model.embedding_objective() is None:
            return None
        return model.embed(video, audio)

    # --- optimisation ---------------------------------------------------------------------------------------

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The step, then every learnable temperature clamped in place to its bounds (CLIP, Synchformer), before
        any callback (a checkpoint) sees the weights."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        clamp_temperatures(self.model)

    def configure_optimizers(self) -> Any:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        opt, sched, _ = build_optimizer(self.model, self.hparams["optimizer"], total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


__all__ = ["AVSSLModule", "build_pretrain_model", "VAL_MASK_SEED"]
