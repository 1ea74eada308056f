"""The ``sync`` objective: synchrony InfoNCE (Synchformer / AVTS style) on projected segment embeddings.

Audio and video of the same segment are positives; the other segments of the batch, the other moments of the same
clip included, are negatives (``negatives``: all | cross_video | within_video). Config: ``objective.sync``
(conf/objective/sync_contrastive.yaml), weight ``objective.weights.sync``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from avssl.models.base import Encoder
from avssl.models.heads import ProjectionHead
from avssl.objectives.base import (
    MODALITIES,
    BuildContext,
    Objective,
    ObjectiveOutput,
    StepInputs,
    register_objective,
)
from avssl.objectives.contrastive import SyncContrastive, contrast


@dataclass
class SyncOptions:
    temperature: float
    learn_temperature: bool
    temperature_min: float
    temperature_max: float
    negatives: str  # all | cross_video | within_video
    curriculum_epochs: int  # epochs of cross_video negatives before `negatives`
    local_loss: bool  # DDP: each rank's rows against the gathered columns (open_clip); same gradients


@register_objective
class SyncObjective(Objective):
    name = "sync"
    Options = SyncOptions
    config = "sync_contrastive"
    terms = ("sync",)
    embedding = "head"
    order = 10

    def __init__(self, options: SyncOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        m = ctx.model
        if m.get("embed_dim") is None:
            raise ValueError("the sync objective's projection heads need model.embed_dim (conf/model/*.yaml)")
        hidden = m.get("proj_hidden")
        layers = m.get("proj_layers")
        layers = int(layers) if layers is not None else (1 if hidden is None else 2)
        self.heads = nn.ModuleDict({
            mod: ProjectionHead(ctx.encoders[mod].num_features, int(m["embed_dim"]), hidden_dim=hidden,
                                num_layers=layers, norm=str(m.get("proj_norm") or "none"))
            for mod in MODALITIES
        })
        self.loss = SyncContrastive(**dataclasses.asdict(options))

    def project(self, encoders: Mapping[str, Encoder], video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised projected segment embeddings ``(a, v)`` [B, S, embed_dim] (with gradients)."""
        b, s = int(video.shape[0]), int(video.shape[1])
        v = self.heads["video"](encoders["video"](video.flatten(0, 1)))
        a = self.heads["audio"](encoders["audio"](audio.flatten(0, 1)))
        return F.normalize(a, dim=-1).reshape(b, s, -1), F.normalize(v, dim=-1).reshape(b, s, -1)

    def embed(self, encoders: Mapping[str, Encoder], video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        return self.project(encoders, video, audio)

    def embedding_modules(self) -> dict[str, nn.Module]:
        return {"head": self.heads}

    def set_epoch(self, epoch: int) -> None:
        self.loss.set_epoch(epoch)

    def forward(self, encoders: Mapping[str, Encoder], step: StepInputs) -> ObjectiveOutput:
        a, v = self.project(encoders, step.batch["video"], step.batch["audio"])
        loss, logs = contrast(self.loss, a, v, step.batch, step.gather_distributed)
        return ObjectiveOutput(
            {"sync": loss},
            {"loss_sync_a2v": logs["loss_a2v"], "loss_sync_v2a": logs["loss_v2a"], "temperature": logs["temperature"]},
            (a.detach(), v.detach()),
            unmasked=True,
        )
