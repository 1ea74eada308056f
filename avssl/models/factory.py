"""The encoder factory (timm's ``_factory.py``): ``create_encoder(name, pretrained=...)`` builds a registered
encoder and loads its weights through the weight I/O layer (:mod:`avssl.weights`, :mod:`avssl.convert`), which
sits below the models: avssl bundles and checkpoints, and local files of timm, AudioMAE, transformers AST/VideoMAE
and CAV-MAE ViTs (``pretrained_format``). Nothing is downloaded."""

from __future__ import annotations

import logging
import os
from typing import Any

from avssl.convert import FORMATS, INFLATE_MODES, load_foreign_weights
from avssl.models.base import Encoder
from avssl.models.registry import _entry
from avssl.weights import MissingFileError, load_encoder_weights

log = logging.getLogger(__name__)


def create_encoder(
    name: str,
    pretrained: str | os.PathLike[str] | None = None,
    pretrained_format: str = "auto",
    inflate: str = "average",
    **kwargs: Any,
) -> Encoder:
    """Build a registered encoder by name (``kwargs`` are the encoder's own, e.g. ``num_frames``, ``img_size``).

    ``pretrained``: a local file or bundle folder to load; ``pretrained_format``: ``"auto"`` (detected from the
    keys), ``"avssl"``, ``"timm"``, ``"audiomae"``, ``"hf_videomae"``, ``"hf_ast"`` or ``"cav_mae"``
    (:mod:`avssl.convert`); ``inflate``: ``"average"`` or ``"center"`` for image kernels loaded into a video ViT.
    What a conversion used and left out is in ``encoder.pretrained_report`` (and logged; None for avssl files)."""
    if pretrained_format not in FORMATS:
        raise ValueError(f"pretrained_format must be one of {FORMATS}, got {pretrained_format!r}")
    if inflate not in INFLATE_MODES:
        raise ValueError(f"inflate must be one of {INFLATE_MODES}, got {inflate!r}")
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
        _load_pretrained(encoder, name, os.fspath(pretrained), pretrained_format, inflate)
    return encoder


def _load_pretrained(encoder: Encoder, name: str, path: str, fmt: str, inflate: str) -> None:
    if not os.path.exists(path):  # an ExportError naming the file, and a FileNotFoundError
        raise MissingFileError(path, f"pretrained weights for encoder {name!r} not found (no such file or folder)")
    convertible = hasattr(encoder, "blocks") and hasattr(encoder, "pos_grid")  # the converters target ViTs
    report = None
    if fmt == "avssl" or (fmt == "auto" and (os.path.isdir(path) or not convertible)):
        load_encoder_weights(encoder, path)  # avssl bundles and checkpoints
    else:
        report = load_foreign_weights(encoder, path, fmt, inflate=inflate)
    setattr(encoder, "pretrained_report", report)  # noqa: B010 (not a declared Encoder attribute)
    if report is not None:
        log.info("%s", report.summary())


__all__ = ["create_encoder"]
