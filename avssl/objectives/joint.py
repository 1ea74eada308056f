"""CAV-MAE-style joint masked autoencoder.

Each modality encoder turns its visible tokens into features; a shared joint transformer layer (with a learned
embedding per modality) processes the concatenated audio+video tokens; one decoder (shared blocks, per-modality mask
token, modality embedding and output head, sin-cos positions per grid) reconstructs both modalities' hidden patches.
The contrastive term runs the joint layer on each modality alone and mean-pools its outputs (as CAV-MAE does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avssl.models.base import Encoder
from avssl.models.vit import TransformerBlock, init_transformer_weights
from avssl.objectives.base import BuildContext, Objective, ObjectiveOutput, StepInputs, register_objective
from avssl.objectives.contrastive import SyncContrastive
from avssl.objectives.mae import (
    MaskedInput,
    MaskingOptions,
    check_mask_config,
    masked_input,
    pos_embed,
    scatter_visible,
)
from avssl.objectives.masked import masked_mse, recon_baseline

MODALITIES = ("video", "audio")


class JointLayer(nn.Module):
    """Shared transformer layer(s) over tokens of both modalities; widths are projected to ``dim`` if needed."""

    def __init__(self, in_dims: Mapping[str, int], dim: int | None = None, *, depth: int = 1, num_heads: int = 8,
                 mlp_ratio: float = 4.0):
        super().__init__()
        dim = int(dim or max(in_dims.values()))
        self.dim = dim
        self.depth, self.num_heads, self.mlp_ratio = int(depth), int(num_heads), float(mlp_ratio)  # for export
        self.proj = nn.ModuleDict(
            {m: nn.Identity() if d == dim else nn.Linear(d, dim) for m, d in in_dims.items()})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in in_dims})
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(init_transformer_weights)
        for p in self.modality_embed.values():
            nn.init.normal_(p, std=0.02)

    def forward(self, tokens: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``tokens[m]``: [N, L_m, D_m] for any subset of modalities -> same keys, [N, L_m, dim], jointly attended."""
        names = list(tokens)
        xs = [self.proj[m](tokens[m]) + self.modality_embed[m].to(tokens[m].dtype) for m in names]
        x = torch.cat(xs, dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        return dict(zip(names, x.split([t.shape[1] for t in xs], dim=1)))


class JointMAEDecoder(nn.Module):
    """One decoder for both modalities: shared blocks, per-modality embed/mask token/modality embedding/head."""

    def __init__(self, in_dim: int, patch_dims: Mapping[str, int], *, dim: int = 256, depth: int = 2,
                 num_heads: int = 8, mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.ModuleDict({m: nn.Linear(in_dim, dim) for m in patch_dims})
        self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in patch_dims})
        self.modality_embed = nn.ParameterDict({m: nn.Parameter(torch.zeros(dim)) for m in patch_dims})
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.ModuleDict({m: nn.Linear(dim, p) for m, p in patch_dims.items()})
        self.apply(init_transformer_weights)
        for p in [*self.mask_token.values(), *self.modality_embed.values()]:
            nn.init.normal_(p, std=0.02)

    def forward(self, visible: Mapping[str, Tensor], masks: Mapping[str, Tensor],
                grids: Mapping[str, tuple[int, ...]]) -> dict[str, Tensor]:
        names = list(visible)
        xs = []
        for m in names:
            x = scatter_visible(self.embed[m](visible[m]), masks[m], self.mask_token[m])
            pos = pos_embed(grids[m], x.shape[-1], x.device, x.dtype)
            xs.append(x + pos + self.modality_embed[m].to(x.dtype))
        x = torch.cat(xs, dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        parts = x.split([t.shape[1] for t in xs], dim=1)
        return {m: self.head[m](p) for m, p in zip(names, parts)}


@dataclass
class JointOutput:
    """Per-modality reconstruction losses/baselines and the pooled, L2-normalised joint embeddings [N, D]."""

    recon: dict[str, Tensor] = field(default_factory=dict)
    recon_baseline: dict[str, Tensor] = field(default_factory=dict)
    embeddings: dict[str, Tensor] = field(default_factory=dict)


class JointMAE(nn.Module):
    """Joint layer + joint decoder (if ``reconstruct``) + contrastive module (if ``contrastive`` is given).

    ``contrastive``: kwargs of ``SyncContrastive`` (CAV-MAE: fixed temperature 0.05), or None to skip the term.
    """

    def __init__(self, in_dims: Mapping[str, int], patch_dims: Mapping[str, int], *, dim: int | None = None,
                 depth: int = 1, num_heads: int = 8, mlp_ratio: float = 4.0,
                 mask_kind: Mapping[str, str] | None = None, mask_ratio: Mapping[str, float] | None = None,
                 norm_pix: bool = True, reconstruct: bool = True, decoder: dict[str, Any] | None = None,
                 contrastive: dict[str, Any] | None = None):
        super().__init__()
        if set(in_dims) != set(MODALITIES):
            raise ValueError(f"JointMAE needs widths for {MODALITIES}, got {sorted(in_dims)}")
        if not reconstruct and contrastive is None:
            raise ValueError("JointMAE with neither reconstruction nor a contrastive term has nothing to compute")
        self.mask_kind = {m: "random" for m in MODALITIES} | dict(mask_kind or {})
        self.mask_ratio = {m: 0.75 for m in MODALITIES} | {k: float(v) for k, v in (mask_ratio or {}).items()}
        for m in MODALITIES:
            check_mask_config(self.mask_kind[m], self.mask_ratio[m])
        self.norm_pix = norm_pix
        self.joint = JointLayer(in_dims, dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        self.decoder = (JointMAEDecoder(self.joint.dim, patch_dims, **(decoder or {})) if reconstruct else None)
        self.contrastive = SyncContrastive(**contrastive) if contrastive is not None else None

    def forward(self, encoders: Mapping[str, Encoder], inputs: Mapping[str, Tensor],
                generator: torch.Generator | None = None) -> JointOutput:
        """``inputs[m]``: segments [N, ...] of each modality -> losses and pooled joint embeddings."""
        masked: dict[str, MaskedInput] = {}
        visible: dict[str, Tensor] = {}
        for m in MODALITIES:  # fixed order: masks draw from the generator reproducibly
            masked[m] = masked_input(encoders[m], inputs[m], mask_kind=self.mask_kind[m],
                                     mask_ratio=self.mask_ratio[m], norm_pix=self.norm_pix, generator=generator)
            visible[m] = encoders[m].forward_features(inputs[m], mask=masked[m].mask)
        out = JointOutput()
        if self.decoder is not None:
            joint = self.joint(visible)
            preds = self.decoder(joint, {m: masked[m].mask for m in MODALITIES},
                                 {m: masked[m].grid for m in MODALITIES})
            for m in MODALITIES:
                target, mask = masked[m].target, masked[m].mask
                if preds[m].shape != target.shape:
                    raise ValueError(f"joint decoder predicts {tuple(preds[m].shape)} for {m}, target is "
                                     f"{tuple(target.shape)}: the input shape differs from the one the model was "
                                     "built for")
                out.recon[m] = masked_mse(preds[m], target, mask)
                out.recon_baseline[m] = recon_baseline(target, mask)
        if self.contrastive is not None:
            for m in MODALITIES:
                pooled = self.joint({m: visible[m]})[m].mean(dim=1)
                out.embeddings[m] = F.normalize(pooled, dim=-1)
        return out

    def extra_repr(self) -> str:
        return f"mask_kind={self.mask_kind}, mask_ratio={self.mask_ratio}, norm_pix={self.norm_pix}"


# --- the ``joint`` objective (CAV-MAE) ------------------------------------------------------------------------


@dataclass
class JointOptions(MaskingOptions):
    """``objective.joint``: the shared masking options plus the joint layer and the contrastive term."""

    dim: Optional[int]  # noqa: UP045  joint layer width; None: the encoders' width (OmegaConf reads Optional)
    depth: int
    num_heads: int
    mlp_ratio: float
    temperature: float
    learn_temperature: bool
    negatives: str


@register_objective
class JointObjective(Objective):
    """``joint``: CAV-MAE. Terms ``joint_mae`` (joint masked reconstruction of both modalities, video + audio
    MSE) and ``joint_contrastive`` (InfoNCE on the joint layer's mean-pooled outputs); its embedding space is the
    joint layer's. Config: ``objective.joint`` (conf/objective/masked_av.yaml)."""

    name = "joint"
    Options = JointOptions
    config = "masked_av"
    terms = ("joint_mae", "joint_contrastive")
    embedding = "joint"
    order = 30

    def __init__(self, options: JointOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        from avssl.objectives.mae import encoder_patch_dim

        j = options
        recon = ctx.active("joint_mae")
        self.net = JointMAE(
            {m: ctx.encoders[m].num_features for m in MODALITIES},
            {m: encoder_patch_dim(ctx.encoders[m], m) for m in MODALITIES} if recon else {},
            dim=j.dim, depth=j.depth, num_heads=j.num_heads, mlp_ratio=j.mlp_ratio,
            mask_kind={m: j.mask_kind(m) for m in MODALITIES}, mask_ratio={m: j.mask_ratio(m) for m in MODALITIES},
            norm_pix=j.norm_pix, reconstruct=recon, decoder=j.decoder(),
            contrastive={"temperature": j.temperature, "learn_temperature": j.learn_temperature,
                         "negatives": j.negatives} if ctx.active("joint_contrastive") else None,
        )

    def set_epoch(self, epoch: int) -> None:
        if self.net.contrastive is not None:
            self.net.contrastive.set_epoch(epoch)

    def embedding_modules(self) -> dict[str, nn.Module]:
        return {"joint": self.net.joint} if self.net.contrastive is not None else {}

    def embed(self, encoders: Mapping[str, Encoder], video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        if self.net.contrastive is None:
            raise NotImplementedError("the joint objective has an embedding space only with joint_contrastive")
        b, s = int(video.shape[0]), int(video.shape[1])
        out = []
        for m, x in (("audio", audio), ("video", video)):
            tokens = encoders[m].forward_features(x.flatten(0, 1))
            out.append(F.normalize(self.net.joint({m: tokens})[m].mean(dim=1), dim=-1).reshape(b, s, -1))
        return out[0], out[1]

    def forward(self, encoders: Mapping[str, Encoder], step: StepInputs) -> ObjectiveOutput:
        from avssl.objectives.contrastive import contrast

        res = self.net(encoders, {m: step.flat(m) for m in MODALITIES}, step.generator)
        out = ObjectiveOutput({})
        if res.recon:
            out.terms["joint_mae"] = res.recon["video"] + res.recon["audio"]
            for m in MODALITIES:
                out.logs[f"recon_joint_{m}"] = res.recon[m].detach()
                out.logs[f"recon_baseline_joint_{m}"] = res.recon_baseline[m]
        if self.net.contrastive is not None:
            ja = res.embeddings["audio"].reshape(step.b, step.s, -1)
            jv = res.embeddings["video"].reshape(step.b, step.s, -1)
            out.terms["joint_contrastive"], logs = contrast(self.net.contrastive, ja, jv, step.batch,
                                                            step.gather_distributed)
            out.logs["temperature_joint"] = logs["temperature"]
            out.embeddings = (ja.detach(), jv.detach())  # of masked inputs: validation re-embeds unmasked
        return out


__all__ = ["MODALITIES", "JointLayer", "JointMAEDecoder", "JointOutput", "JointMAE", "JointOptions", "JointObjective"]
