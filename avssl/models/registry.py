"""The encoder registry: a plain name -> builder table (timm's ``_registry.py``). ``register_encoder`` adds to it,
``list_encoders`` reads it; :mod:`avssl.models.factory` builds from it (``create_encoder``)."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from avssl.models.base import MODALITIES, Encoder

E = TypeVar("E", bound=Encoder)
Builder = Callable[..., Encoder]


@dataclass(frozen=True)
class EncoderEntry:
    """One registered encoder: its builder function and modality."""

    name: str
    modality: str
    builder: Builder


_REGISTRY: dict[str, EncoderEntry] = {}


def _infer_modality(name: str) -> str:
    found = [m for m in MODALITIES if m in name]
    if len(found) != 1:
        raise ValueError(
            f"cannot infer the modality of encoder {name!r} from its name; use @register_encoder(modality=...)"
        )
    return found[0]


def register_encoder(fn: Builder | None = None, *, modality: str | None = None) -> Any:
    """Register a builder function under its ``__name__``; use bare or as ``@register_encoder(modality="video")``.

    Without ``modality`` it is inferred from the name ("video" or "audio" in it).
    """

    def deco(f: Builder) -> Builder:
        name = f.__name__
        mod = modality if modality is not None else _infer_modality(name)
        if mod not in MODALITIES:
            raise ValueError(f"encoder {name!r}: modality must be one of {MODALITIES}, got {mod!r}")
        if name in _REGISTRY and _REGISTRY[name].builder is not f:
            raise ValueError(f"an encoder named {name!r} is already registered")
        _REGISTRY[name] = EncoderEntry(name=name, modality=mod, builder=f)
        return f

    return deco(fn) if fn is not None else deco


def list_encoders(modality: str | None = None, pattern: str | None = None) -> list[str]:
    """Sorted names of registered encoders, optionally of one modality and/or matching a glob ``pattern``."""
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    names = [e.name for e in _REGISTRY.values() if modality is None or e.modality == modality]
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return sorted(names)


def encoder_modality(name: str) -> str:
    """Modality of a registered encoder."""
    return _entry(name).modality


def _entry(name: str) -> EncoderEntry:
    if name not in _REGISTRY:
        known = ", ".join(list_encoders()) or "(none)"
        raise ValueError(f"unknown encoder {name!r}; known encoders: {known}")
    return _REGISTRY[name]


def build_encoder(name: str, cls: type[E], defaults: dict[str, Any], kwargs: dict[str, Any]) -> E:
    """Instantiate ``cls`` with ``defaults`` overridden by ``kwargs``; unknown kwargs raise a clear TypeError.

    Registered builder functions call this so that every encoder records its resolved constructor kwargs.
    """
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self" and params[p].kind is not inspect.Parameter.VAR_KEYWORD]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"encoder {name!r} got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted)}"
        )
    merged = {**defaults, **kwargs}
    encoder = cls(**merged)
    encoder.encoder_kwargs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in merged.items()}
    return encoder


__all__ = [
    "EncoderEntry",
    "register_encoder",
    "list_encoders",
    "encoder_modality",
    "build_encoder",
]


def __getattr__(name: str) -> Any:  # compatible alias: create_encoder moved to avssl.models.factory
    if name == "create_encoder":
        from avssl.models.factory import create_encoder

        return create_encoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
