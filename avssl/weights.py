"""Weight I/O, the lowest layer under ``avssl.models``: safe checkpoint and safetensors reading, wrapper-prefix
cleaning, strict loading, and loading an encoder's weights from a file (``create_encoder(name, pretrained=...)``).

Checkpoints are read with ``weights_only=True`` (pickled code never runs); prefixes are stripped as whole dotted
components (``backbone.conv1.weight`` stays itself); a missing, unexpected or mis-shaped tensor is an error naming
it. Nothing here imports the models, the objectives or Lightning.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FORMAT_VERSION = 1  # of export bundles (avssl.export); read_bundle_config refuses newer ones
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# whole leading components added by wrappers: DistributedDataParallel / DataParallel
_LEADING_WRAPPERS = ("module",)
# components inserted anywhere by torch.compile (OptimizedModule)
_INNER_WRAPPERS = ("_orig_mod",)


# --- errors ----------------------------------------------------------------------------------------------------


class ExportError(Exception):
    """A bundle or checkpoint cannot be written or loaded. ``path`` names the file concerned."""

    def __init__(self, path: str | os.PathLike[str] | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes (DataLoader workers, spawn)
        return (type(self), (self.path, self.problem))


class BundleVersionError(ExportError):
    """The bundle was written by a newer avssl (its ``format_version`` is not understood)."""


class StateDictMismatchError(ExportError):
    """Weights do not fit the module: missing or unexpected keys, or a tensor of the wrong shape."""


class MissingFileError(ExportError, FileNotFoundError):
    """A file that should be read is not there (``path`` names it). Also a ``FileNotFoundError``."""


# --- reading weights safely -------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``torch.save`` file with ``weights_only=True`` (never runs pickled code) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "no such checkpoint file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(
            path,
            "refused to load: the checkpoint holds objects other than tensors and plain containers "
            f"(weights_only=True; pickled code is never run). Detail: {first}",
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise ExportError(path, f"not a readable PyTorch checkpoint (corrupt or truncated?): {e}") from e
    if not isinstance(obj, dict):
        raise ExportError(path, f"expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a safetensors file onto the CPU with a clear error for corrupt or truncated files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(path, "weights file is missing")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ExportError(path, f"corrupt or truncated safetensors file: {e}") from e


def clean_key(key: str) -> str:
    """Remove wrapper components from one parameter name, exactly: leading ``module.`` (DDP) and any
    ``_orig_mod.`` (torch.compile). ``backbone.conv1.weight`` is left alone (no character stripping)."""
    parts = key.split(".")
    while len(parts) > 1 and parts[0] in _LEADING_WRAPPERS:
        parts = parts[1:]
    parts = [p for p in parts if p not in _INNER_WRAPPERS] or parts
    return ".".join(parts)


def clean_state_dict(
    state_dict: Mapping[str, Tensor], *, source: str | os.PathLike[str] | None = None
) -> dict[str, Tensor]:
    """Apply :func:`clean_key` to every key; two keys collapsing onto one name is an error."""
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new = clean_key(key)
        if new in out:
            raise StateDictMismatchError(source, f"keys collide after removing wrapper prefixes: {new!r}")
        out[new] = value
    return out


def select_prefix(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries whose key starts with ``prefix`` (a whole dotted path ending in '.'), with it removed."""
    if prefix and not prefix.endswith("."):
        prefix += "."
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _preview(keys: list[str], limit: int = 20) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, Tensor], *, source: str | os.PathLike[str] | None = None
) -> None:
    """Load ``state_dict`` into ``module`` requiring exactly its keys.

    Missing or unexpected keys raise :class:`StateDictMismatchError` listing them; a tensor whose shape cannot be
    loaded names the tensor and both shapes. Modules may adapt shapes in their own load hooks (e.g. positional
    embeddings interpolated to a new grid); only shapes still wrong after that are errors.
    """
    expected = set(module.state_dict().keys())
    given = set(state_dict.keys())
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_preview(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
        raise StateDictMismatchError(
            source, f"weights do not match {type(module).__name__}; " + "; ".join(parts)
        )
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        detail = "; ".join(lines) if lines else str(e)
        raise StateDictMismatchError(
            source, f"tensor shape mismatch in {type(module).__name__}: {detail}"
        ) from e


def model_prefix(state_dict: Mapping[str, Tensor], source: str | os.PathLike[str]) -> str:
    """The dotted path of the ``AVPretrainModel`` inside a checkpoint's state dict (e.g. ``"model."``)."""
    prefixes = {k[: k.index("encoders.video.")] for k in state_dict if "encoders.video." in k}
    prefixes = {p for p in prefixes if p == "" or p.endswith(".")}
    if len(prefixes) != 1:
        raise ExportError(
            source,
            "cannot find the encoders in the checkpoint's state_dict "
            f"(expected keys like 'model.encoders.video.*'; prefixes found: {sorted(prefixes)})",
        )
    return prefixes.pop()


def bundle_dir(path: Path, modality: str | None) -> Path:
    if (path / CONFIG_FILE).is_file():
        return path
    if modality is not None and (path / modality / CONFIG_FILE).is_file():
        return path / modality
    found = sorted(p.parent.name for p in path.glob(f"*/{CONFIG_FILE}"))
    hint = f" (it holds bundles for {found}; pass one as modality)" if found else ""
    raise ExportError(
        path,
        f"no encoder bundle here: expected {CONFIG_FILE} in this folder or in a '<modality>/' "
        f"sub-folder{hint}",
    )


def read_bundle_config(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse and validate a bundle's ``config.json`` (refusing newer format versions)."""
    path = Path(bundle) / CONFIG_FILE
    try:
        with open(path) as f:
            cfg = json.load(f)
    except FileNotFoundError as e:
        raise MissingFileError(path, "bundle config is missing") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ExportError(path, f"bundle config is not valid JSON (corrupt or truncated?): {e}") from e
    if not isinstance(cfg, dict):
        raise ExportError(path, "bundle config must be a JSON object")
    version = cfg.get("format_version")
    if not isinstance(version, int):
        raise ExportError(path, f"bundle config has no integer format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise BundleVersionError(
            path,
            f"bundle format_version {version} is newer than this avssl understands "
            f"(up to {FORMAT_VERSION}); upgrade avssl to load it",
        )
    for key in ("modality", "model", "preprocessing"):
        if key not in cfg:
            raise ExportError(path, f"bundle config lacks {key!r}")
    return cfg


def load_encoder_weights(encoder: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load pretrained weights into a bare encoder (``create_encoder(name, pretrained=path)``).

    ``path``: a bundle folder (of the encoder's modality, or an export holding it), a ``.safetensors`` file of an
    encoder or a bundle, or a Lightning checkpoint. Only the encoder's own tensors are taken; they must match it.
    """
    modality = getattr(encoder, "modality", None)
    p = Path(path)
    if p.is_dir():
        bdir = bundle_dir(p, modality)
        cfg = read_bundle_config(bdir)
        if modality is not None and cfg["modality"] != modality:
            raise ExportError(
                bdir, f"this bundle holds a {cfg['modality']} encoder; the encoder is {modality}"
            )
        state = select_prefix(read_safetensors(bdir / WEIGHTS_FILE), "encoder.")
        source: Path = bdir / WEIGHTS_FILE
    elif p.suffix == ".safetensors":
        state = clean_state_dict(read_safetensors(p), source=p)
        if any(k.startswith("encoder.") for k in state):
            state = select_prefix(state, "encoder.")
        source = p
    else:
        ckpt = load_checkpoint(p)
        sd = ckpt.get("state_dict", ckpt)
        if not isinstance(sd, Mapping):
            raise ExportError(p, "checkpoint has no state_dict")
        sd = clean_state_dict(sd, source=p)
        if any("encoders." in k for k in sd):
            if modality is None:
                raise ExportError(
                    p, "the encoder has no modality: cannot pick it from a two-encoder checkpoint"
                )
            state = select_prefix(sd, model_prefix(sd, p) + f"encoders.{modality}.")
        else:
            state = dict(sd)
        source = p
    if not state:
        raise StateDictMismatchError(source, f"no {modality or ''} encoder weights found")
    load_state_dict_strict(encoder, state, source=source)
    return encoder


__all__ = [
    "FORMAT_VERSION", "WEIGHTS_FILE", "CONFIG_FILE", "ExportError", "BundleVersionError", "StateDictMismatchError",
    "MissingFileError", "load_checkpoint", "read_safetensors", "clean_key", "clean_state_dict", "select_prefix",
    "load_state_dict_strict", "model_prefix", "bundle_dir", "read_bundle_config", "load_encoder_weights",
]
