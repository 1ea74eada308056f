"""The ``avc`` objective: audio-visual correspondence (L3-Net, Arandjelovic & Zisserman 2017; AVID's AVC task).

A small fusion network says whether an audio segment belongs to a video segment: positives are the segment's own
audio, negatives the audio of the same position in a clip of another video of the batch (another clip when every
clip comes from one video). Binary cross-entropy over as many negatives as positives; logs ``avc_acc``. It aligns
no embedding space. Config: ``objective.avc`` (conf/objective/avc.yaml), weight ``objective.weights.avc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avssl.models.base import Encoder
from avssl.objectives.base import BuildContext, Objective, ObjectiveOutput, StepInputs, register_objective
from avssl.objectives.contrastive import batch_video_ids


@dataclass
class AvcOptions:
    hidden_dim: int  # width of the fusion MLP
    dropout: float


def negative_clips(b: int, ids: Tensor | None) -> Tensor:
    """For each clip, the nearest following clip (cyclically) of another video; the next clip when none is."""
    shift = torch.ones(b, dtype=torch.int64)
    if ids is not None and b > 1:
        ids = ids.cpu()
        for c in range(b):
            for k in range(1, b):
                if ids[(c + k) % b] != ids[c]:
                    shift[c] = k
                    break
    return (torch.arange(b) + shift) % b


@register_objective
class AVCObjective(Objective):
    name = "avc"
    Options = AvcOptions
    config = "avc"
    terms = ("avc",)
    order = 40

    def __init__(self, options: AvcOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        dv, da = ctx.encoders["video"].num_features, ctx.encoders["audio"].num_features
        self.fusion = nn.Sequential(
            nn.Linear(dv + da, int(options.hidden_dim)), nn.ReLU(inplace=True), nn.Dropout(float(options.dropout)),
            nn.Linear(int(options.hidden_dim), 1),
        )

    @property
    def monitor(self) -> tuple[str, str]:
        return ("val/avc_acc", "max")

    def forward(self, encoders: Mapping[str, Encoder], step: StepInputs) -> ObjectiveOutput:
        b, s = step.b, step.s
        if b < 2:
            raise ValueError("the avc objective needs at least 2 clips per batch (negatives come from other clips)")
        v = encoders["video"](step.flat("video")).reshape(b, s, -1)
        a = encoders["audio"](step.flat("audio")).reshape(b, s, -1)
        other = negative_clips(b, batch_video_ids(step.batch, b, a.device)).to(a.device)
        pos = torch.cat([v, a], dim=-1)
        neg = torch.cat([v, a[other]], dim=-1)
        logits = self.fusion(torch.cat([pos, neg]).flatten(0, 1)).squeeze(-1)
        labels = torch.cat([torch.ones(b * s), torch.zeros(b * s)]).to(logits)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        acc = ((logits > 0).to(labels) == labels).float().mean()
        return ObjectiveOutput({"avc": loss}, {"avc_acc": acc.detach()})
