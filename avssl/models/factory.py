"""The encoder factory (timm's ``_factory.py``): ``create_encoder(name, pretrained=...)`` builds a registered
encoder and loads its weights through the weight I/O layer (:mod:`avssl.weights`), which sits below the models."""

from __future__ import annotations

import os
from typing import Any

from avssl.models.base import Encoder
from avssl.models.registry import _entry
from avssl.weights import MissingFileError, load_encoder_weights


def create_encoder(name: str, pretrained: str | os.PathLike[str] | None = None, **kwargs: Any) -> Encoder:
    """Build a registered encoder by name; ``pretrained`` loads weights via ``avssl.export.load_encoder_weights``."""
    entry = _entry(name)
    encoder = entry.builder(**kwargs)
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"builder of encoder {name!r} returned {type(encoder).__name__}, not an avssl Encoder"
        )
    if encoder.modality != entry.modality:
        raise TypeError(
            f"encoder {name!r} is registered as {entry.modality} but built a {encoder.modality} encoder"
        )
    encoder.encoder_name = name
    if not encoder.encoder_kwargs:
        encoder.encoder_kwargs = dict(kwargs)
    if pretrained is not None:
        _load_pretrained(encoder, name, os.fspath(pretrained))
    return encoder


def _load_pretrained(encoder: Encoder, name: str, path: str) -> None:
    if not os.path.exists(path):  # an ExportError naming the file, and a FileNotFoundError
        raise MissingFileError(path, f"pretrained weights for encoder {name!r} not found (no such file or folder)")
    load_encoder_weights(encoder, path)



__all__ = ["create_encoder"]
