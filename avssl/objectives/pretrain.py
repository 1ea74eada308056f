"""The composed audio-visual pretraining model: encoders + the active objective plug-ins + metrics.

Everything about a training step that is not Lightning lives here, so a LightningModule and a plain PyTorch loop
call the same ``forward(batch, generator=...)``. The objectives come from the registry
(``avssl.objectives.base.OBJECTIVES``): each one whose loss terms have a positive weight is built with its options
from the config and computes its own terms; the model only sums them (``loss = sum_k weights[k] * terms[k]``), so
adding an objective never touches this file. Only what an active objective needs is built, so every trainable
parameter receives a gradient.

Terms of the built-in objectives (``loss_<term>`` in the logs): ``sync`` (synchrony InfoNCE on projected pooled
segment embeddings), ``mae_video`` / ``mae_audio`` (per-modality MAE), ``joint_mae`` + ``joint_contrastive``
(CAV-MAE), ``avc`` (audio-visual correspondence).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from avssl.models.base import Encoder
from avssl.objectives.base import (
    MODALITIES,
    OBJECTIVES,
    BuildContext,
    Objective,
    StepInputs,
    all_terms,
    options_from,
)
from avssl.objectives.combined import CombinedLoss
from avssl.objectives.metrics import retrieval_top1, sync_acc


@dataclass
class PretrainOutput:
    """Result of one step: total ``loss``, detached ``logs`` and the L2-normalised segment embeddings [B, S, D]
    used for the cross-modal metrics (None when no objective aligns the modalities)."""

    loss: Tensor
    logs: dict[str, Tensor]
    audio_emb: Tensor | None = None
    video_emb: Tensor | None = None
    unmasked: bool = False  # the embeddings are of the unmasked inputs


@functools.cache
def packaged_options(name: str) -> dict[str, Any]:
    """The option values objective ``name`` has in its packaged YAML (``conf/objective/<config>.yaml``): what
    ``avssl-train objective=<config>`` uses, read from the config (the one source) for models built from Python
    with partial options and for old checkpoints that did not store them."""
    from importlib.resources import files

    from omegaconf import OmegaConf

    cls = OBJECTIVES[name]
    node: Any = OmegaConf.load(str(files("avssl.conf").joinpath("objective", f"{cls.config}.yaml")))
    block = OmegaConf.to_container(node.get(name), resolve=True) if name in node else None
    if not isinstance(block, dict):
        raise ValueError(f"conf/objective/{cls.config}.yaml has no '{name}' block of options")
    return {str(k): v for k, v in block.items()}


def _split_legacy(objective: Mapping[str, Any] | None, legacy: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(objective or {})
    if legacy.get("objectives") is not None:
        cfg["weights"] = dict(legacy["objectives"])
    for key in OBJECTIVES:
        if legacy.get(key) is not None:
            cfg[key] = dict(legacy[key])
    return cfg


class AVPretrainModel(nn.Module):
    """Video + audio encoders trained with the weighted sum of the active objectives' terms.

    ``objective``: the ``objective`` config section (``weights`` by term plus one options block per objective,
    e.g. ``{"weights": {"sync": 1.0}, "sync": {...}}``); options an objective's block leaves out come from its
    packaged YAML. ``model``: the ``model`` section's head settings (``embed_dim``, ``proj_hidden``,
    ``proj_layers``). Built the same way from Python as by ``avssl-train`` (``avssl.objectives.build``).
    The older keywords (``objectives=`` for the weights, ``sync=``, ``mae=``, ``joint=``, ``embed_dim=``, ...)
    are still accepted.
    """

    def __init__(
        self,
        video_encoder: nn.Module,
        audio_encoder: nn.Module,
        *,
        objective: Mapping[str, Any] | None = None,
        model: Mapping[str, Any] | None = None,
        gather_distributed: bool = True,
        **legacy: Any,
    ):
        super().__init__()
        unknown_kw = sorted(set(legacy) - {"objectives", "embed_dim", "proj_hidden", "proj_layers", "proj_norm",
                                           *OBJECTIVES})
        if unknown_kw:
            raise TypeError(f"AVPretrainModel got unexpected keyword argument(s) {unknown_kw}")
        cfg = _split_legacy(objective, legacy)
        model_cfg: dict[str, Any] = {k: legacy[k] for k in ("embed_dim", "proj_hidden", "proj_layers", "proj_norm")
                                     if k in legacy}
        model_cfg.update(dict(model or {}))
        if not cfg.get("weights"):
            raise ValueError("objective.weights is not set: give each loss term its weight, e.g. {'sync': 1.0}")
        weights = {k: float(v) for k, v in cfg["weights"].items()}
        terms = all_terms()
        unknown = sorted(set(weights) - set(terms))
        if unknown:
            raise ValueError(f"unknown objective term(s) {unknown}; known: {sorted(terms)}")
        self.combine = CombinedLoss(weights)
        for m, enc in (("video", video_encoder), ("audio", audio_encoder)):
            if getattr(enc, "modality", m) != m:
                raise ValueError(f"the {m} encoder {type(enc).__name__} has modality {enc.modality!r}")
            if not isinstance(getattr(enc, "num_features", None), int):
                raise ValueError(f"the {m} encoder {type(enc).__name__} has no integer `num_features`")
        self.encoders = nn.ModuleDict({"video": video_encoder, "audio": audio_encoder})
        self.gather_distributed = gather_distributed
        ctx = BuildContext(encoders={m: self.encoder(m) for m in MODALITIES}, weights=self.combine.weights,
                           model=model_cfg)
        active = sorted((cls for cls in OBJECTIVES.values() if any(ctx.active(t) for t in cls.terms)),
                        key=lambda c: (c.order, c.name))
        built: dict[str, Objective] = {}
        for cls in active:
            opts = {**packaged_options(cls.name), **dict(cfg.get(cls.name) or {})}
            built[cls.name] = cls(options_from(cls, opts), ctx)
        self.objectives = nn.ModuleDict(built)

    # --- what the parts need ------------------------------------------------------------------------------------

    def encoder(self, modality: str) -> Encoder:
        """The encoder of ``modality`` ("video" or "audio")."""
        return cast(Encoder, self.encoders[modality])

    @property
    def objective_weights(self) -> dict[str, float]:
        return dict(self.combine.weights)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The inputs the active objectives read (the DataModule decodes only these)."""
        needed = {m for obj in self._objectives() for m in obj.needs}
        return tuple(m for m in MODALITIES if m in needed)

    def _objectives(self) -> list[Objective]:
        return [cast(Objective, o) for o in self.objectives.values()]

    def embedding_objective(self) -> Objective | None:
        """The first active objective (in step order) with an embedding space, or None."""
        return next((o for o in self._objectives() if o.embedding_modules()), None)

    @property
    def heads(self) -> nn.ModuleDict | None:
        """The projection heads of the objective whose space is ``head`` (None without one)."""
        obj = self.embedding_objective()
        return None if obj is None else cast("nn.ModuleDict | None", obj.embedding_modules().get("head"))

    @property
    def embedding_space(self) -> str | None:
        obj = self.embedding_objective()
        return None if obj is None else obj.embedding

    @property
    def default_monitor(self) -> tuple[str, str]:
        """``(metric, mode)`` for ``callbacks.checkpoint.monitor: auto``: the first active objective's (in step
        order) that tracks more than the loss, else ``("val/loss", "min")``."""
        found = [o.monitor for o in self._objectives()]
        return next((m for m in found if m[0] != "val/loss"), ("val/loss", "min"))

    def set_epoch(self, epoch: int) -> None:
        """Advance epoch-dependent schedules (the negatives curriculum)."""
        for obj in self._objectives():
            obj.set_epoch(epoch)

    @torch.no_grad()
    def embed(self, video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """L2-normalised segment embeddings ``(a, v)``, each [B, S, D], of unmasked inputs in the shared space."""
        obj = self.embedding_objective()
        if obj is None:
            raise RuntimeError(f"no active objective aligns the modalities ({sorted(self.objectives)}): "
                               "there is no shared embedding space")
        self._check_batch({"video": video, "audio": audio}, MODALITIES)
        return obj.embed({m: self.encoder(m) for m in MODALITIES}, video, audio)

    @staticmethod
    def _check_batch(batch: Mapping[str, Any], needed: tuple[str, ...]) -> tuple[int, int]:
        for key in needed:
            if key not in batch:
                raise KeyError(f"batch has no {key!r} entry (keys: {sorted(batch)})")
        ranks = {"video": 6, "audio": 5}
        shapes = {"video": "[B, S, C, T, H, W]", "audio": "[B, S, 1, F, M]"}
        for key in needed:
            if batch[key].dim() != ranks[key]:
                raise ValueError(f"batch[{key!r}] must be {shapes[key]}, got shape {tuple(batch[key].shape)}")
        lead = {tuple(batch[k].shape[:2]) for k in needed}
        if len(lead) != 1:
            raise ValueError(f"video and audio disagree on [B, S]: {sorted(lead)}")
        b, s = lead.pop()
        return int(b), int(s)

    def forward(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> PretrainOutput:
        """One step on ``batch`` (``video`` [B, S, C, T, H, W], ``audio`` [B, S, 1, F, M]: the modalities the
        active objectives need); masks draw from ``generator`` in the objectives' fixed order, so a seeded
        generator reproduces a step."""
        b, s = self._check_batch(batch, self.modalities)
        # read per step: DDP validation switches it off (avssl.lit.distributed), and every objective must see that
        step = StepInputs(batch, b, s, generator, self.gather_distributed)
        encoders = {m: self.encoder(m) for m in MODALITIES}
        terms: dict[str, Tensor] = {}
        logs: dict[str, Tensor] = {}
        emb: tuple[Tensor, Tensor] | None = None
        unmasked = False
        for obj in self._objectives():
            out = obj(encoders, step)
            terms.update(out.terms)
            logs.update(out.logs)
            if emb is None and out.embeddings is not None:
                emb, unmasked = out.embeddings, out.unmasked
        loss, loss_logs = self.combine(terms)
        logs.update(loss_logs)
        if emb is not None:
            logs.update(sync_acc(emb[0], emb[1]))
            logs.update(retrieval_top1(emb[0], emb[1]))
        return PretrainOutput(loss=loss, logs=logs, audio_emb=None if emb is None else emb[0],
                              video_emb=None if emb is None else emb[1], unmasked=unmasked)


# --- checkpoints written before the objectives were plug-ins -------------------------------------------------------

_V1_PREFIXES = (("heads.", "objectives.sync.heads."), ("sync.", "objectives.sync.loss."),
                ("mae.", "objectives.mae.branches."), ("joint.", "objectives.joint.net."))


def upgrade_state_dict(state: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Rename a format-1 pretraining state dict (``heads.*``, ``sync.*``, ``mae.*``, ``joint.*`` beside
    ``encoders.*``, under ``prefix``) to the plug-in layout (``objectives.<name>.*``); newer ones are returned
    unchanged."""
    if any(k.startswith(prefix + "objectives.") for k in state):
        return dict(state)
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        rest = k[len(prefix):] if k.startswith(prefix) else None
        for old, new in _V1_PREFIXES:
            if rest is not None and rest.startswith(old):
                k = prefix + new + rest[len(old):]
                break
        out[k] = v
    return out


__all__ = ["AVPretrainModel", "PretrainOutput", "packaged_options", "upgrade_state_dict"]
