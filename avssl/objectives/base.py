"""Objectives as plug-ins: the base class, the registry and what a training step hands to each objective.

An objective is one module (a subclass of :class:`Objective`, registered with :func:`register_objective`), one
options dataclass (its ``Options``, registered in Hydra's ConfigStore under ``objective.<name>`` by
``avssl.config``) and one YAML (``conf/objective/<config>.yaml``, picked with ``objective=<config>``). It declares:

- ``terms``: the loss terms it computes, each weighted by ``objective.weights.<term>`` (active when > 0);
- ``modalities``: the inputs it needs (the DataModule decodes only what the active objectives need);
- ``embedding``: the space its segment embeddings live in (``"head"``: projection heads, ``"joint"``: a joint
  layer, ``None``: it aligns no embeddings), which export and the validation metrics use;
- ``order``: where it draws from the step's random generator (masks), so a seeded step is reproducible.

``AVPretrainModel`` (``avssl.objectives.pretrain``) builds the active ones from the config and sums their terms;
it never branches on objective names. Options have no defaults in Python: the YAML is the one source.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from avssl.models.base import Encoder

MODALITIES = ("video", "audio")


@dataclass
class StepInputs:
    """One batch as objectives see it: ``batch`` holds ``video`` [B, S, C, T, H, W] and/or ``audio``
    [B, S, 1, F, M] (the modalities the active objectives need) and ids, paths, masks; plus the step's
    generator."""

    batch: Mapping[str, Any]
    b: int
    s: int
    generator: torch.Generator | None = None
    gather_distributed: bool = True  # gather embeddings across ranks for contrastive terms (off in DDP validation)

    def flat(self, modality: str) -> Tensor:
        """That modality's segments as one batch of independent rows: [B * S, ...]."""
        return self.batch[modality].flatten(0, 1)


@dataclass
class ObjectiveOutput:
    """Unweighted loss ``terms`` (scalars, one per active term), detached ``logs``, and the L2-normalised segment
    embeddings ``(audio, video)`` [B, S, D] in the objective's space (None if it has none)."""

    terms: dict[str, Tensor]
    logs: dict[str, Tensor] = field(default_factory=dict)
    embeddings: tuple[Tensor, Tensor] | None = None
    unmasked: bool = False  # the embeddings are of the unmasked inputs (validation metrics can reuse them)


@dataclass(frozen=True)
class BuildContext:
    """What an objective may read while building its heads and decoders: the encoders, the active term weights
    and the model config (e.g. ``embed_dim`` for projection heads)."""

    encoders: Mapping[str, Encoder]
    weights: Mapping[str, float]
    model: Mapping[str, Any]

    def active(self, term: str) -> bool:
        return float(self.weights.get(term, 0.0)) > 0


class Objective(nn.Module):
    """Base class of the objective plug-ins (solo-learn's thin methods over a shared base)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    config: ClassVar[str]  # its YAML in conf/objective/
    terms: ClassVar[tuple[str, ...]]
    modalities: ClassVar[tuple[str, ...]] = MODALITIES
    embedding: ClassVar[str | None] = None
    order: ClassVar[int] = 100

    def __init__(self, options: Any, ctx: BuildContext):
        super().__init__()
        self.options = options
        self.active_terms = tuple(t for t in self.terms if ctx.active(t))

    def forward(self, encoders: Mapping[str, Encoder], step: StepInputs) -> ObjectiveOutput:  # pragma: no cover
        raise NotImplementedError

    @property
    def needs(self) -> tuple[str, ...]:
        """The modalities this instance reads (its active terms may need fewer than ``modalities``)."""
        return self.modalities

    @property
    def monitor(self) -> tuple[str, str]:
        """The validation metric that says this objective is learning, and its mode (``callbacks.checkpoint.
        monitor: auto`` picks the first active objective's): ``val/sync_acc`` where it aligns the modalities."""
        return ("val/sync_acc", "max") if self.embedding_modules() else ("val/loss", "min")

    def set_epoch(self, epoch: int) -> None:
        """Advance epoch-dependent schedules (curricula); nothing by default."""

    @torch.no_grad()
    def embed(self, encoders: Mapping[str, Encoder], video: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised segment embeddings ``(a, v)`` [B, S, D] of unmasked inputs in this objective's space."""
        raise NotImplementedError(f"objective {self.name!r} has no embedding space")

    def embedding_modules(self) -> dict[str, nn.Module]:
        """The modules export needs to reproduce :meth:`embed` (``{"head": ModuleDict}`` or ``{"joint": ...}``)."""
        return {}


OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: add an objective plug-in to the registry (its name, terms and options must be new)."""
    if not dataclasses.is_dataclass(getattr(cls, "Options", None)):
        raise TypeError(f"objective {cls.__name__}: Options must be a dataclass")
    if cls.name in OBJECTIVES and OBJECTIVES[cls.name] is not cls:
        raise ValueError(f"an objective named {cls.name!r} is already registered")
    taken = {t: o.name for o in OBJECTIVES.values() if o is not cls for t in o.terms}
    clash = sorted(t for t in cls.terms if t in taken)
    if clash:
        raise ValueError(f"objective {cls.name!r}: terms {clash} belong to {[taken[t] for t in clash]}")
    OBJECTIVES[cls.name] = cls
    return cls


def all_terms() -> dict[str, str]:
    """Every registered loss term -> the objective computing it."""
    return {t: o.name for o in OBJECTIVES.values() for t in o.terms}


def options_from(cls: type[Objective], given: Mapping[str, Any] | None) -> Any:
    """``cls.Options`` from a config block; a missing or unknown key is an error naming the objective."""
    names = [f.name for f in dataclasses.fields(cls.Options)]
    given = dict(given or {})
    unknown = sorted(set(given) - set(names))
    missing = sorted(set(names) - set(given))
    if unknown or missing:
        raise ValueError(f"objective.{cls.name}: unknown option(s) {unknown}, missing option(s) {missing} "
                         f"(every option comes from conf/objective/{cls.config}.yaml)")
    return cls.Options(**given)


Gather = Callable[[Tensor], Tensor]

__all__ = [
    "MODALITIES", "BuildContext", "Objective", "ObjectiveOutput", "OBJECTIVES", "StepInputs", "all_terms",
    "options_from", "register_objective",
]
