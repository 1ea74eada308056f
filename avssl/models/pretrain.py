"""The composed audio-visual pretraining model: encoders + projection heads + objectives + metrics.

Everything about a training step that is not Lightning lives here, so a LightningModule and a plain PyTorch loop
call the same ``forward(batch, generator=...)``. Only the parts an objective with a positive weight needs are built,
so every trainable parameter receives a gradient.

Objectives (weights in ``objectives``; names are the ``loss_<name>`` log keys):
``sync`` (synchrony InfoNCE on projected pooled segment embeddings), ``mae_video`` / ``mae_audio`` (per-modality
MAE), ``joint_mae`` (CAV-MAE joint reconstruction, video + audio MSE) and ``joint_contrastive`` (CAV-MAE's
contrastive term on mean-pooled joint-layer outputs). CAV-MAE = ``{"joint_mae": 1.0, "joint_contrastive": 0.01}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avssl.data.sampling import video_id
from avssl.models.base import Encoder
from avssl.models.heads import ProjectionHead
from avssl.models.joint import JointMAE
from avssl.models.mae import MAEBranch, patch_dim_for
from avssl.objectives.combined import CombinedLoss
from avssl.objectives.contrastive import SyncContrastive, gather_no_grad, gather_with_grad, local_clip_slice
from avssl.objectives.metrics import retrieval_top1, sync_acc

OBJECTIVES = ("sync", "mae_video", "mae_audio", "joint_mae", "joint_contrastive")
MODALITIES = ("video", "audio")

SYNC_DEFAULTS: dict[str, Any] = {
    "temperature": 0.07, "learn_temperature": True, "temperature_min": 0.001, "temperature_max": 0.5,
    "negatives": "all", "curriculum_epochs": 0, "local_loss": False,
}
MAE_DEFAULTS: dict[str, Any] = {
    "video_mask_kind": "tube", "video_mask_ratio": 0.9, "audio_mask_kind": "random", "audio_mask_ratio": 0.8,
    "norm_pix": True, "decoder_dim": 256, "decoder_depth": 2, "decoder_heads": 8, "decoder_mlp_ratio": 4.0,
}
JOINT_DEFAULTS: dict[str, Any] = {
    "dim": None, "depth": 1, "num_heads": 8, "mlp_ratio": 4.0,
    "video_mask_kind": "random", "video_mask_ratio": 0.75, "audio_mask_kind": "random", "audio_mask_ratio": 0.75,
    "norm_pix": True, "decoder_dim": 256, "decoder_depth": 2, "decoder_heads": 8, "decoder_mlp_ratio": 4.0,
    "temperature": 0.05, "learn_temperature": False, "negatives": "all",
}


def _merge(defaults: Mapping[str, Any], given: Mapping[str, Any] | None, what: str) -> dict[str, Any]:
    given = dict(given or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"unknown {what} option(s) {unknown}; known: {sorted(defaults)}")
    return {**defaults, **given}


@dataclass
class PretrainOutput:
    """Result of one step: total ``loss``, detached ``logs`` and the L2-normalised segment embeddings [B, S, D]
    used for the cross-modal metrics (None when no objective aligns the modalities)."""

    loss: Tensor
    logs: dict[str, Tensor]
    audio_emb: Tensor | None = None
    video_emb: Tensor | None = None


class AVPretrainModel(nn.Module):
    """Video + audio encoders trained with a weighted sum of synchrony-contrastive and masked objectives.

    ``encoders`` and ``heads`` are ``nn.ModuleDict`` keyed by modality (``heads`` only with ``sync``). ``sync``,
    ``mae`` and ``joint`` take option dicts (see ``SYNC_DEFAULTS``, ``MAE_DEFAULTS``, ``JOINT_DEFAULTS``).
    ``gather_distributed`` gathers embeddings across DDP ranks (with gradients) before the contrastive losses.
    """

    def __init__(
        self,
        video_encoder: nn.Module,
        audio_encoder: nn.Module,
        *,
        embed_dim: int = 128,
        proj_hidden: int | None = None,
        proj_layers: int | None = None,
        objectives: Mapping[str, float] | None = None,
        sync: Mapping[str, Any] | None = None,
        mae: Mapping[str, Any] | None = None,
        joint: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
    ):
        super().__init__()
        weights = dict(objectives) if objectives is not None else {"sync": 1.0}
        unknown = sorted(set(weights) - set(OBJECTIVES))
        if unknown:
            raise ValueError(f"unknown objective(s) {unknown}; known: {list(OBJECTIVES)}")
        self.combine = CombinedLoss(weights)
        for m, enc in (("video", video_encoder), ("audio", audio_encoder)):
            if getattr(enc, "modality", m) != m:
                raise ValueError(f"the {m} encoder {type(enc).__name__} has modality {enc.modality!r}")
            if not isinstance(getattr(enc, "num_features", None), int):
                raise ValueError(f"the {m} encoder {type(enc).__name__} has no integer `num_features`")
        self.encoders = nn.ModuleDict({"video": video_encoder, "audio": audio_encoder})
        self.gather_distributed = gather_distributed
        self.sync_options = _merge(SYNC_DEFAULTS, sync, "sync")
        self.mae_options = _merge(MAE_DEFAULTS, mae, "mae")
        self.joint_options = _merge(JOINT_DEFAULTS, joint, "joint")

        self.heads: nn.ModuleDict | None = None
        self.sync: SyncContrastive | None = None
        if self.combine.active("sync"):
            layers = proj_layers if proj_layers is not None else (1 if proj_hidden is None else 2)
            self.heads = nn.ModuleDict({
                m: ProjectionHead(self.encoder(m).num_features, embed_dim, hidden_dim=proj_hidden, num_layers=layers)
                for m in MODALITIES
            })
            self.sync = SyncContrastive(**self.sync_options)

        o = self.mae_options
        branches = {}
        for m in MODALITIES:
            if self.combine.active(f"mae_{m}"):
                branches[m] = MAEBranch(
                    self.encoder(m).num_features, self._patch_dim(m), mask_kind=o[f"{m}_mask_kind"],
                    mask_ratio=o[f"{m}_mask_ratio"], norm_pix=o["norm_pix"],
                    decoder={"dim": o["decoder_dim"], "depth": o["decoder_depth"], "num_heads": o["decoder_heads"],
                             "mlp_ratio": o["decoder_mlp_ratio"]})
        self.mae = nn.ModuleDict(branches)

        self.joint: JointMAE | None = None
        if self.combine.active("joint_mae") or self.combine.active("joint_contrastive"):
            j = self.joint_options
            self.joint = JointMAE(
                {m: self.encoder(m).num_features for m in MODALITIES},
                {m: self._patch_dim(m) for m in MODALITIES} if self.combine.active("joint_mae") else {},
                dim=j["dim"], depth=j["depth"], num_heads=j["num_heads"], mlp_ratio=j["mlp_ratio"],
                mask_kind={m: j[f"{m}_mask_kind"] for m in MODALITIES},
                mask_ratio={m: j[f"{m}_mask_ratio"] for m in MODALITIES},
                norm_pix=j["norm_pix"], reconstruct=self.combine.active("joint_mae"),
                decoder={"dim": j["decoder_dim"], "depth": j["decoder_depth"], "num_heads": j["decoder_heads"],
                         "mlp_ratio": j["decoder_mlp_ratio"]},
                contrastive={"temperature": j["temperature"], "learn_temperature": j["learn_temperature"],
                             "negatives": j["negatives"]} if self.combine.active("joint_contrastive") else None,
            )

    def encoder(self, modality: str) -> Encoder:
        """The encoder of ``modality`` ("video" or "audio")."""
        return cast(Encoder, self.encoders[modality])

    def _patch_dim(self, modality: str) -> int:
        enc = self.encoder(modality)
        shape = getattr(enc, "input_shape", None)
        if shape is None:
            raise ValueError(f"masked objectives need the {modality} encoder's `input_shape` to size the decoder; "
                             f"{type(enc).__name__} has none")
        return patch_dim_for(enc, tuple(shape))

    @property
    def objective_weights(self) -> dict[str, float]:
        return dict(self.combine.weights)

    def set_epoch(self, epoch: int) -> None:
        """Advance epoch-dependent schedules (the negatives curriculum)."""
        if self.sync is not None:
            self.sync.set_epoch(epoch)
        if self.joint is not None and self.joint.contrastive is not None:
            self.joint.contrastive.set_epoch(epoch)

    @staticmethod
    def _check_batch(video: Tensor, audio: Tensor) -> tuple[int, int]:
        if video.dim() != 6:
            raise ValueError(f"batch['video'] must be [B, S, C, T, H, W], got shape {tuple(video.shape)}")
        if audio.dim() != 5:
            raise ValueError(f"batch['audio'] must be [B, S, 1, F, M], got shape {tuple(audio.shape)}")
        if video.shape[:2] != audio.shape[:2]:
            raise ValueError(f"video and audio disagree on [B, S]: {tuple(video.shape[:2])} vs "
                             f"{tuple(audio.shape[:2])}")
        return int(video.shape[0]), int(video.shape[1])

    def embed(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised projected segment embeddings ``(a, v)``, each [B, S, embed_dim]."""
        if self.heads is None:
            raise RuntimeError("embed() needs the projection heads, which are built only with the 'sync' objective")
        b, s = self._check_batch(video, audio)
        v = self.heads["video"](self.encoders["video"](video.flatten(0, 1)))
        a = self.heads["audio"](self.encoders["audio"](audio.flatten(0, 1)))
        return F.normalize(a, dim=-1).reshape(b, s, -1), F.normalize(v, dim=-1).reshape(b, s, -1)

    def _gather(self, x: Tensor) -> Tensor:
        return gather_with_grad(x) if self.gather_distributed else x

    @staticmethod
    def batch_video_ids(batch: Mapping[str, Any], b: int, device: torch.device) -> Tensor | None:
        """int64 [B] source-video id per clip: ``batch["video_id"]``, else hashed from ``batch["path"]`` (what the
        datasets and the shard reader carry); None (every clip its own video) when the batch has neither."""
        ids = batch.get("video_id")
        if isinstance(ids, Tensor):
            return ids.to(device=device, dtype=torch.int64).reshape(b)
        paths = batch.get("path")
        if isinstance(paths, (list, tuple)) and len(paths) == b and all(isinstance(p, str) for p in paths):
            return torch.tensor([video_id(p) for p in paths], dtype=torch.int64, device=device)
        return None

    def _contrast(self, module: SyncContrastive, a: Tensor, v: Tensor,
                  batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        """``module`` on the gathered embeddings; video ids only where the negatives need them (cross_video);
        with ``local_loss`` only this rank's rows against the gathered columns."""
        ids = None
        if module.current_negatives == "cross_video":
            ids = self.batch_video_ids(batch, int(a.shape[0]), a.device)
            if ids is not None and self.gather_distributed:
                ids = gather_no_grad(ids)
        local = local_clip_slice(int(a.shape[0])) if module.local_loss and self.gather_distributed else None
        return module(self._gather(a), self._gather(v), video_ids=ids, local_clips=local)

    def forward(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> PretrainOutput:
        """One step on ``batch`` (``video`` [B, S, C, T, H, W], ``audio`` [B, S, 1, F, M]); masks draw from
        ``generator`` in a fixed order (mae_video, mae_audio, joint), so a seeded generator reproduces a step."""
        for key in MODALITIES:
            if key not in batch:
                raise KeyError(f"batch has no {key!r} entry (keys: {sorted(batch)})")
        video, audio = batch["video"], batch["audio"]
        b, s = self._check_batch(video, audio)
        terms: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {}
        a_emb: Tensor | None = None
        v_emb: Tensor | None = None

        if self.sync is not None:
            a_emb, v_emb = self.embed(video, audio)
            terms["sync"], sync_logs = self._contrast(self.sync, a_emb, v_emb, batch)
            logs["loss_sync_a2v"] = sync_logs["loss_a2v"]
            logs["loss_sync_v2a"] = sync_logs["loss_v2a"]
            logs["temperature"] = sync_logs["temperature"]

        flat = {"video": video.flatten(0, 1), "audio": audio.flatten(0, 1)}
        for m in MODALITIES:
            if m in self.mae:
                terms[f"mae_{m}"], mae_logs = self.mae[m](self.encoder(m), flat[m], generator)
                logs[f"recon_{m}"] = mae_logs["recon"]
                logs[f"recon_baseline_{m}"] = mae_logs["recon_baseline"]

        if self.joint is not None:
            out = self.joint({m: self.encoder(m) for m in MODALITIES}, flat, generator)
            if out.recon:
                terms["joint_mae"] = out.recon["video"] + out.recon["audio"]
                for m in MODALITIES:
                    logs[f"recon_joint_{m}"] = out.recon[m].detach()
                    logs[f"recon_baseline_joint_{m}"] = out.recon_baseline[m]
            if self.joint.contrastive is not None:
                ja = out.embeddings["audio"].reshape(b, s, -1)
                jv = out.embeddings["video"].reshape(b, s, -1)
                terms["joint_contrastive"], joint_logs = self._contrast(self.joint.contrastive, ja, jv, batch)
                logs["temperature_joint"] = joint_logs["temperature"]
                if a_emb is None:
                    a_emb, v_emb = ja, jv

        loss, loss_logs = self.combine(terms)
        logs.update(loss_logs)
        if a_emb is not None and v_emb is not None:
            logs.update(sync_acc(a_emb.detach(), v_emb.detach()))
            logs.update(retrieval_top1(a_emb.detach(), v_emb.detach()))
        return PretrainOutput(loss=loss, logs=logs,
                              audio_emb=None if a_emb is None else a_emb.detach(),
                              video_emb=None if v_emb is None else v_emb.detach())


__all__ = ["OBJECTIVES", "SYNC_DEFAULTS", "MAE_DEFAULTS", "JOINT_DEFAULTS", "PretrainOutput", "AVPretrainModel"]
