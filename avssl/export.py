"""Encoder bundles: export trained encoders and load them back as plain ``nn.Module``s, without Lightning.

A bundle is a folder with one sub-folder per modality::

    DIR/video/model.safetensors   weights: encoder.*, head.* (projection into the shared space), joint.* if any
    DIR/video/config.json         format_version, modality, how to rebuild the module, preprocessing, provenance
    DIR/audio/...

``load_encoder(path, modality)`` accepts a bundle folder (or one modality's sub-folder) and a Lightning
checkpoint (``.ckpt``) alike. Loading is defensive: checkpoints are read with ``weights_only=True``, wrapper
prefixes are stripped exactly (whole dotted components), and any missing, unexpected or mis-shaped tensor is an
error naming it. Nothing here imports Lightning.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avssl.data.preprocess import Preprocessor, resample  # noqa: F401  (the one cutter; export.Preprocessor kept)
from avssl.models.base import Encoder
from avssl.models.heads import ProjectionHead
from avssl.objectives.joint import JointLayer
from avssl.weights import (  # the weight I/O layer (re-exported here: avssl.export.ExportError, ...)
    CONFIG_FILE,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    BundleVersionError,
    ExportError,
    MissingFileError,
    StateDictMismatchError,
    bundle_dir,
    clean_key,
    clean_state_dict,
    load_checkpoint,
    load_encoder_weights,
    load_state_dict_strict,
    model_prefix,
    read_bundle_config,
    read_safetensors,
    select_prefix,
)

MODALITIES = ("video", "audio")
# constructor keywords that name a file to read (``create_encoder(..., pretrained=PATH)``): a bundle never stores
# them (its weights are its model.safetensors) and checkpoints are rebuilt without them (their state_dict holds the
# trained weights); they are kept only as provenance
WEIGHT_PATH_KWARGS = frozenset(
    {"pretrained", "pretrained_path", "pretrained_weights", "weights_path", "checkpoint_path"}
)


# --- the reusable module ----------------------------------------------------------------------------------------


class PretrainedEncoder(nn.Module):
    """One modality's pretrained encoder with its path into the shared embedding space. Plain ``nn.Module``.

    - ``preprocess(...)``: raw media -> model input (video: uint8 frames ``[T, H, W, 3]`` with ``fps=`` or
      ``times=``; audio: waveform with ``sample_rate=``), cut into ``N`` consecutive segments;
    - ``forward_features(x, mask=None)``: tokens ``[N, L, D]`` (after the joint layer for joint models);
    - ``forward(x)``: L2-normalised embedding ``[N, E]`` in the space shared with the other modality.

    ``embedding`` is ``"head"`` (pooled encoder tokens -> projection head, the synchrony objective's space),
    ``"joint"`` (tokens -> shared joint layer -> mean, CAV-MAE's contrastive space) or ``"encoder"`` (the
    encoder's own pooled features, for objectives that align no shared space, such as ``avc``).
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        head: ProjectionHead | None = None,
        joint: JointLayer | None = None,
        embedding: str = "head",
        preprocessing: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        if embedding not in ("head", "joint", "encoder"):
            raise ValueError(f"embedding must be 'head', 'joint' or 'encoder', got {embedding!r}")
        if embedding == "head" and head is None:
            raise ValueError("embedding='head' needs a projection head")
        if embedding == "joint" and joint is None:
            raise ValueError("embedding='joint' needs the joint layer")
        self.modality: str = encoder.modality
        self.encoder: Encoder = encoder
        self.head: ProjectionHead | None = head
        self.joint: JointLayer | None = joint
        self.embedding = embedding
        self.preprocessing = dict(preprocessing or {})
        self.config: dict[str, Any] = dict(config or {})
        self.provenance: dict[str, Any] = {}  # filled by the loaders (see ``provenance()``)
        self._pre = Preprocessor(self.preprocessing) if self.preprocessing else None

    @property
    def preprocessor(self) -> Preprocessor:
        """The preprocessing settings as a :class:`Preprocessor` (segment length, fps, sample rate, ...)."""
        if self._pre is None:
            raise RuntimeError("this encoder carries no preprocessing settings")
        return self._pre

    @property
    def num_features(self) -> int:
        """Width of the tokens of :meth:`forward_features`."""
        return int(self.joint.dim) if self.joint is not None and self.embedding == "joint" else int(
            self.encoder.num_features)

    @property
    def embed_dim(self) -> int:
        """Width of the embedding returned by :meth:`forward`."""
        return int(self.head.out_dim) if self.head is not None and self.embedding == "head" else self.num_features

    def preprocess(
        self,
        data: Tensor,
        *,
        fps: float | None = None,
        times: Tensor | None = None,
        sample_rate: int | None = None,
        start: float | None = None,
        num_segments: int | None = None,
        valid: Tensor | None = None,
        audio_start: float = 0.0,
    ) -> Tensor:
        """Raw media -> model input ``[N, ...]`` with the training cut (``avssl.data.preprocess``, eval mode).

        Video: uint8 frames ``[T, H, W, 3]`` with ``fps=`` or ``times=``; audio: a float waveform ``[S]`` or
        ``[C, S]`` with its ``sample_rate=`` (sample 0 at ``audio_start`` seconds, optional validity mask
        ``valid``). Both take the first segment's ``start`` and ``num_segments``; segment ``k`` starts at
        ``start + k * (segment_duration + segment_gap)``.
        """
        if self._pre is None:
            raise RuntimeError("this encoder carries no preprocessing settings")
        if self.modality == "video":
            if sample_rate is not None or valid is not None:
                raise TypeError("video preprocess takes fps= or times=, not sample_rate= or valid=")
            return self._pre.video(data, fps=fps, times=times, start=start, num_segments=num_segments)
        if sample_rate is None:
            raise TypeError("audio preprocess needs the waveform's sample_rate=")
        if fps is not None or times is not None:
            raise TypeError("audio preprocess takes sample_rate=, not fps= or times=")
        return self._pre.audio(data, sample_rate, start=start, num_segments=num_segments, valid=valid,
                               audio_start=audio_start)

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        tokens = self.encoder.forward_features(x, mask=mask)
        if self.embedding == "joint" and self.joint is not None:
            tokens = self.joint({self.modality: tokens})[self.modality]
        return tokens

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding == "joint":
            pooled = self.forward_features(x).mean(dim=1)
        elif self.embedding == "encoder" or self.head is None:
            pooled = self.encoder(x)
        else:
            pooled = self.head(self.encoder(x))
        return torch.nn.functional.normalize(pooled, dim=-1)


# --- building from a pretraining model --------------------------------------------------------------------------


def _head_config(head: ProjectionHead) -> dict[str, Any]:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    hidden = linears[0].out_features if len(linears) > 1 else None
    return {
        "in_dim": int(head.in_dim),
        "out_dim": int(head.out_dim),
        "hidden_dim": hidden,
        "num_layers": int(head.num_layers),
        "norm": str(getattr(head, "norm", "none")),
    }


def _joint_config(layer: JointLayer, modality: str, encoder: Encoder) -> dict[str, Any]:
    return {
        "in_dims": {modality: int(encoder.num_features)},
        "dim": int(layer.dim),
        "depth": int(layer.depth),
        "num_heads": int(layer.num_heads),
        "mlp_ratio": float(layer.mlp_ratio),
    }


def _embedding_parts(model: Any) -> dict[str, Any]:
    """The modules of the model's embedding space: ``{"head": ModuleDict}`` (projection heads) or
    ``{"joint": JointLayer}``, from the first active objective that has one; ``{}`` when none does."""
    find = getattr(model, "embedding_objective", None)
    obj = find() if find is not None else None
    return {} if obj is None else dict(obj.embedding_modules())


def module_config(model: Any, modality: str) -> dict[str, Any]:
    """What rebuilds one modality's :class:`PretrainedEncoder` from an ``AVPretrainModel``: encoder name and
    kwargs, projection head or joint layer, and which defines the embedding (``"encoder"``: the encoder's pooled
    features, for objectives that align no space, such as ``avc``)."""
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    encoder = model.encoders[modality]
    cfg: dict[str, Any] = {"encoder": encoder.get_config(), "head": None, "joint": None}
    parts = _embedding_parts(model)
    if "head" in parts:
        cfg["head"] = _head_config(parts["head"][modality])
    elif "joint" in parts:
        cfg["joint"] = _joint_config(parts["joint"], modality, encoder)
    cfg["embedding"] = "head" if cfg["head"] is not None else "joint" if cfg["joint"] is not None else "encoder"
    return cfg


def _module_state(model: Any, modality: str, cfg: Mapping[str, Any]) -> dict[str, Tensor]:
    sd = {f"encoder.{k}": v for k, v in model.encoders[modality].state_dict().items()}
    parts = _embedding_parts(model)
    if cfg["head"] is not None:
        sd.update({f"head.{k}": v for k, v in parts["head"][modality].state_dict().items()})
    if cfg["joint"] is not None:
        other = [m for m in MODALITIES if m != modality]
        for k, v in parts["joint"].state_dict().items():
            if any(k.startswith((f"proj.{o}.", f"modality_embed.{o}")) for o in other):
                continue
            sd[f"joint.{k}"] = v
    return sd


def weight_paths(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The file-naming keywords (:data:`WEIGHT_PATH_KWARGS`) in a module config's encoder, head and joint kwargs,
    as ``{"encoder.kwargs.pretrained": value, ...}``."""
    found: dict[str, Any] = {}
    for part in ("encoder", "head", "joint"):
        sub = cfg.get(part)
        if not isinstance(sub, Mapping):
            continue
        for where, kw in ((f"{part}.kwargs", sub.get("kwargs")), (part, sub)):
            if isinstance(kw, Mapping):
                found.update({f"{where}.{k}": kw[k] for k in sorted(kw) if k in WEIGHT_PATH_KWARGS})
    return found


def _refuse_weight_paths(cfg: Mapping[str, Any], source: str | os.PathLike[str] | None) -> None:
    paths = weight_paths(cfg)
    if paths:
        named = ", ".join(f"{k.rsplit('.', 1)[1]!r} (model.{k} = {v!r})" for k, v in paths.items())
        raise ExportError(
            source,
            f"the model config names a file to read: {named}; refused, nothing was opened: a bundle's weights "
            f"come only from its {WEIGHTS_FILE} (remove the key)",
        )


def build_module(cfg: Mapping[str, Any], preprocessing: Mapping[str, Any] | None = None) -> PretrainedEncoder:
    """An untrained :class:`PretrainedEncoder` from a module config (see :func:`module_config`).

    A config naming a file to read (``pretrained=`` or another of :data:`WEIGHT_PATH_KWARGS`) is refused: the
    module's weights come from the bundle or checkpoint it is loaded from, never from a path written in a config.
    """
    from avssl.models import ProjectionHead, create_encoder

    _refuse_weight_paths(cfg, None)
    enc_cfg = cfg["encoder"]
    encoder = create_encoder(enc_cfg["name"], **dict(enc_cfg.get("kwargs") or {}))
    head = ProjectionHead(**cfg["head"]) if cfg.get("head") else None
    joint = None
    if cfg.get("joint"):
        from avssl.objectives.joint import JointLayer

        j = dict(cfg["joint"])
        joint = JointLayer(j.pop("in_dims"), j.pop("dim"), **j)
    return PretrainedEncoder(
        encoder,
        head=head,
        joint=joint,
        embedding=cfg.get("embedding", "head"),
        preprocessing=preprocessing,
        config=cfg,
    )


def extract_module(
    model: nn.Module, modality: str, preprocessing: Mapping[str, Any] | None = None
) -> PretrainedEncoder:
    """A standalone copy of one modality's path of a trained ``AVPretrainModel`` (weights copied, checked)."""
    cfg = module_config(model, modality)
    module = build_module(cfg, preprocessing)
    load_state_dict_strict(module, _module_state(model, modality, cfg), source=f"<{modality} of the model>")
    return module.eval()


# --- Lightning checkpoints (read without Lightning) -------------------------------------------------------------


def pretrained_from(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The weight files a training run initialised its encoders from (``model.<modality>.kwargs.pretrained``),
    as ``{modality: path}``: provenance only, never opened when exporting or loading."""
    model = hparams.get("model") if isinstance(hparams.get("model"), Mapping) else {}
    out: dict[str, Any] = {}
    for m in MODALITIES:
        sub = (model or {}).get(m) or {}
        kwargs = sub.get("kwargs") or {}
        if isinstance(kwargs, Mapping):
            named = {k: kwargs[k] for k in sorted(kwargs) if k in WEIGHT_PATH_KWARGS}
            if isinstance(sub, Mapping) and sub.get("pretrained") is not None:
                named = {"pretrained": sub["pretrained"], **named}
            if named:
                out[m] = named["pretrained"] if list(named) == ["pretrained"] else named
    return out


def _model_config_without_weight_paths(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    cfg = dict(model_cfg)
    for m in MODALITIES:
        sub = cfg.get(m)
        if isinstance(sub, Mapping) and isinstance(sub.get("kwargs"), Mapping):
            kwargs = {k: v for k, v in sub["kwargs"].items() if k not in WEIGHT_PATH_KWARGS}
            cfg[m] = {**sub, "kwargs": kwargs}
        if isinstance(cfg.get(m), Mapping) and cfg[m].get("pretrained") is not None:  # model.<m>.pretrained
            cfg[m] = {k: v for k, v in cfg[m].items() if k not in ("pretrained", "pretrained_format")}
    return cfg


def build_pretrain_model(hparams: Mapping[str, Any]) -> nn.Module:
    """Rebuild the (untrained) ``AVPretrainModel`` described by a checkpoint's hyperparameters, without Lightning,
    with the same builder training uses (``avssl.objectives.build``).

    Encoder keywords naming weight files (``pretrained=``, see :data:`WEIGHT_PATH_KWARGS`) are left out: they
    initialised training, and the checkpoint's own weights replace whatever they would load, so a checkpoint is
    rebuilt without opening (or needing) those files. :func:`pretrained_from` reports them.
    """
    from avssl.objectives.build import build_pretrain_model as build

    return build(
        _model_config_without_weight_paths(dict(hparams.get("model") or {})),
        dict(hparams.get("objective") or {}),
        dict(hparams.get("preprocessing") or {}),
        gather_distributed=False,
    )


def preprocessing_from_hparams(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing settings a checkpoint carries (``hparams["preprocessing"]``), as plain values."""
    pre = hparams.get("preprocessing")
    if not isinstance(pre, Mapping):
        raise ValueError("the checkpoint's hyperparameters have no 'preprocessing' section")
    return json.loads(json.dumps(dict(pre)))


def load_pretrain_checkpoint(
    path: str | os.PathLike[str],
) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """Read a Lightning checkpoint without Lightning: ``(AVPretrainModel in eval mode, hparams, checkpoint meta)``.

    All weights must match the rebuilt model exactly (wrapper prefixes stripped first).
    """
    ckpt = load_checkpoint(path)
    hparams = ckpt.get("hyper_parameters")
    state = ckpt.get("state_dict")
    if not isinstance(hparams, Mapping) or not isinstance(state, Mapping):
        raise ExportError(
            path, "not an avssl Lightning checkpoint (needs 'hyper_parameters' and 'state_dict')"
        )
    state = clean_state_dict(state, source=path)
    prefix = model_prefix(state, path)
    try:
        model = build_pretrain_model(hparams)
    except (TypeError, ValueError, KeyError) as e:
        raise ExportError(path, f"cannot rebuild the model from the checkpoint's hyperparameters: {e}") from e
    from avssl.objectives.pretrain import upgrade_state_dict

    own = select_prefix(state, prefix) if prefix else dict(state)
    load_state_dict_strict(model, upgrade_state_dict(own), source=path)  # format-1 layouts renamed first
    meta: dict[str, Any] = {k: ckpt[k] for k in ("global_step", "epoch") if k in ckpt}
    return model.eval(), dict(hparams), meta


# --- bundles ----------------------------------------------------------------------------------------------------


def provenance(
    hparams: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Where a bundle came from: training config, data, step, and software versions (avssl, torch, PyAV, FFmpeg)."""
    import av

    import avssl

    try:
        ffmpeg = {k: ".".join(map(str, v)) for k, v in av.library_versions.items()}
    except Exception:  # noqa: BLE001 - informative only
        ffmpeg = {}
    hp = json.loads(json.dumps(dict(hparams or {}), default=str))
    data, data_source = hp.get("data"), "hparams" if hp.get("data") is not None else None
    if data is None and checkpoint is not None:
        # avssl-train writes its resolved config next to the checkpoints folder: <run>/config.json
        run_cfg = Path(checkpoint).absolute().parent.parent / "config.json"
        try:
            data = json.loads(run_cfg.read_text()).get("data")
            data_source = str(run_cfg)
        except (OSError, ValueError, AttributeError):
            data = None
    return {
        "checkpoint": None if checkpoint is None else os.path.abspath(checkpoint),
        "global_step": (meta or {}).get("global_step"),
        "epoch": (meta or {}).get("epoch"),
        "training_config": {k: v for k, v in hp.items() if k != "preprocessing"},
        # encoder initialisation of the run (model.<modality>.kwargs.pretrained): a record, never opened
        "pretrained": pretrained_from(hp),
        "data": data,
        "data_config_from": data_source,
        "versions": {
            "avssl": avssl.__version__,
            "trained_with_avssl": hp.get("avssl_version"),
            "torch": torch.__version__,
            "pyav": av.__version__,
            "ffmpeg": ffmpeg,
            "python": platform.python_version(),
        },
    }


BUNDLE_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE})


def _listing(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_bundle_target(out_dir: str | os.PathLike[str]) -> str:
    """Whether a bundle may be written at ``out_dir``: ``"absent"``, ``"empty"`` (an empty folder) or
    ``"bundle"`` (an avssl bundle folder, to be replaced). Anything else is refused with an :class:`ExportError`
    naming it and what it holds: a file, a symbolic link, or a folder holding anything but a bundle's
    ``config.json`` and ``model.safetensors``. Nothing is changed."""
    out_dir = Path(out_dir)
    advice = "choose another --out, or move it away"
    if out_dir.is_symlink():
        raise ExportError(out_dir, f"is a symbolic link; a bundle is written as a new folder, never through a link "
                                   f"({advice})")
    if not out_dir.exists():
        return "absent"
    if not out_dir.is_dir():
        raise ExportError(out_dir, f"exists and is not a folder; refusing to replace it ({advice})")
    try:
        entries = sorted(os.scandir(out_dir), key=lambda e: e.name)
    except OSError as e:
        raise ExportError(out_dir, f"cannot list the folder: {e.strerror or e}") from e
    if not entries:
        return "empty"
    foreign = [e.name + ("/" if e.is_dir() else "") for e in entries
               if e.name not in BUNDLE_FILES or not e.is_file(follow_symlinks=False)]
    refuse = (
        f"is not empty and not an avssl bundle folder; refusing to replace it (an avssl bundle holds only "
        f"{CONFIG_FILE} and {WEIGHTS_FILE}; this folder holds "
    )
    if foreign:
        raise ExportError(out_dir, refuse + f"{_listing(foreign)}) ({advice})")
    names = [e.name for e in entries]
    if CONFIG_FILE not in names:
        raise ExportError(out_dir, refuse + f"{_listing(names)} without {CONFIG_FILE}) ({advice})")
    try:
        with open(out_dir / CONFIG_FILE) as f:
            cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(out_dir, f"is not an avssl bundle folder ({CONFIG_FILE} cannot be read as JSON: {e}); "
                                   f"refusing to replace it ({advice})") from e
    if not (isinstance(cfg, dict) and isinstance(cfg.get("format_version"), int)
            and cfg.get("modality") in MODALITIES and isinstance(cfg.get("model"), dict)):
        raise ExportError(out_dir, f"is not an avssl bundle folder (its {CONFIG_FILE} is not a bundle config: no "
                                   f"format_version, modality and model); refusing to replace it ({advice})")
    return "bundle"


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_bundle(
    module: PretrainedEncoder,
    out_dir: str | os.PathLike[str],
    *,
    provenance_info: Mapping[str, Any] | None = None,
) -> Path:
    """Write one modality's bundle (``model.safetensors`` + ``config.json``) atomically as the folder ``out_dir``.

    The files are written into a temporary folder beside ``out_dir`` and renamed into place. ``out_dir`` may be
    absent, an empty folder, or an avssl bundle (replaced: renamed aside, then its two files removed once the new
    bundle is in place). Anything else is refused before anything is written (see :func:`check_bundle_target`).
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    check_bundle_target(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(out_dir.parent, f"cannot create the output folder: {e.strerror or e}") from e
    config = {
        "format_version": FORMAT_VERSION,
        "modality": module.modality,
        "model": module.config,
        "preprocessing": module.preprocessing,
        "provenance": dict(provenance_info or {}),
    }
    _refuse_weight_paths(module.config, None)  # a bundle never names a file for its loader to open
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    old: Path | None = None
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(
            state,
            str(tmp / WEIGHTS_FILE),
            metadata={"format": "pt", "avssl_format_version": str(FORMAT_VERSION)},
        )
        with open(tmp / CONFIG_FILE, "w") as f:
            json.dump(config, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        _fsync(tmp / WEIGHTS_FILE)
        target = check_bundle_target(out_dir)  # again: it may have changed while the weights were written
        if target == "empty":
            os.rmdir(out_dir)  # fails (and nothing is lost) if a file appeared meanwhile
        elif target == "bundle":
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.rename(out_dir, old / out_dir.name)
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if old is not None:
                os.rename(old / out_dir.name, out_dir)  # put the previous bundle back
                _remove_own(old, [])
                old = None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # the temporary folder is ours alone
    if old is not None:
        _remove_own(old, [out_dir.name])
    return out_dir


def _remove_own(old: Path, bundles: list[str]) -> None:
    """Delete the previous bundle renamed into ``old``: exactly its files (checked to be a bundle's), then the
    empty folders; anything else found there is left in place with a warning."""
    import warnings

    try:
        for name in bundles:
            for f in BUNDLE_FILES:
                (old / name / f).unlink(missing_ok=True)
            (old / name).rmdir()
        old.rmdir()
    except OSError as e:
        warnings.warn(f"{old}: could not remove the replaced bundle completely ({e}); it is left there",
                      stacklevel=3)


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    modalities: tuple[str, ...] = MODALITIES,
) -> dict[str, Path]:
    """Export a Lightning checkpoint as encoder bundles ``out_dir/<modality>/``; returns the folders written.

    Each bundle is written atomically (see :func:`write_bundle`); every target is checked before anything is
    written, so a refused folder (not empty and not an avssl bundle) leaves ``out_dir`` as it was.
    """
    for m in modalities:
        check_bundle_target(Path(out_dir) / m)
    model, hparams, meta = load_pretrain_checkpoint(checkpoint)
    pre = preprocessing_from_hparams(hparams)
    info = provenance(hparams, meta, checkpoint)
    out = {}
    for m in modalities:
        out[m] = write_bundle(extract_module(model, m, pre), Path(out_dir) / m, provenance_info=info)
    return out


def load_bundle(path: str | os.PathLike[str], modality: str | None = None) -> PretrainedEncoder:
    """Load a bundle folder (or the ``<modality>/`` folder inside an export) as a :class:`PretrainedEncoder`."""
    bdir = bundle_dir(Path(path), modality)
    cfg = read_bundle_config(bdir)
    if modality is not None and cfg["modality"] != modality:
        raise ExportError(bdir, f"this bundle holds the {cfg['modality']} encoder, not {modality}")
    if not isinstance(cfg["model"], Mapping):
        raise ExportError(bdir / CONFIG_FILE, "bundle config's 'model' must be a JSON object")
    _refuse_weight_paths(cfg["model"], bdir / CONFIG_FILE)
    try:
        module = build_module(cfg["model"], cfg["preprocessing"])
    except (TypeError, ValueError, KeyError) as e:
        raise ExportError(
            bdir / CONFIG_FILE, f"cannot rebuild the encoder from the bundle config: {e}"
        ) from e
    load_state_dict_strict(module, read_safetensors(bdir / WEIGHTS_FILE), source=bdir / WEIGHTS_FILE)
    module.provenance = dict(cfg.get("provenance") or {})
    return module.eval()


def load_encoder(path: str | os.PathLike[str], modality: str) -> PretrainedEncoder:
    """Load one modality's pretrained encoder from an export bundle or a Lightning checkpoint (no Lightning).

    Returns a :class:`PretrainedEncoder` in eval mode with ``preprocess``, ``forward`` (L2-normalised embedding in
    the shared space) and ``forward_features`` (tokens).
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    p = Path(path)
    if p.is_dir():
        return load_bundle(p, modality)
    if not p.exists():
        raise MissingFileError(p, "no such bundle folder or checkpoint file")
    model, hparams, meta = load_pretrain_checkpoint(p)
    module = extract_module(model, modality, preprocessing_from_hparams(hparams))
    module.provenance = provenance(hparams, meta, p)
    return module


# --- timm layout (avssl-export --format timm) --------------------------------------------------------------------

TIMM_WEIGHTS_FILE = "timm_model.safetensors"
TIMM_CONFIG_FILE = "timm_config.json"


def export_timm(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    modalities: tuple[str, ...] = ("audio",),
) -> dict[str, Path]:
    """Write each modality's encoder (from a bundle export or a Lightning checkpoint) as a timm ``VisionTransformer``
    state dict, ``out_dir/<modality>/timm_model.safetensors``, with ``timm_config.json`` holding the timm keyword
    arguments (:func:`avssl.convert.to_timm_state_dict`). Encoders timm cannot represent are refused before
    anything is written."""
    from safetensors.torch import save_file

    from avssl.convert import to_timm_state_dict

    converted = {}
    for m in modalities:
        encoder = load_encoder(source, m).encoder
        try:
            converted[m] = to_timm_state_dict(encoder)
        except ExportError as e:
            raise ExportError(source, f"{m} encoder: {e.problem}") from e
    out: dict[str, Path] = {}
    for m, (sd, kwargs) in converted.items():
        target = Path(out_dir) / m
        target.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(target / TIMM_WEIGHTS_FILE))
        with open(target / TIMM_CONFIG_FILE, "w") as f:
            json.dump({"architecture": "timm.models.vision_transformer.VisionTransformer", "kwargs": kwargs}, f, indent=2)
        out[m] = target
    return out


__all__ = [
    "export_timm",
    "FORMAT_VERSION",
    "ExportError",
    "BundleVersionError",
    "StateDictMismatchError",
    "PretrainedEncoder",
    "Preprocessor",
    "load_checkpoint",
    "read_safetensors",
    "clean_key",
    "clean_state_dict",
    "select_prefix",
    "load_state_dict_strict",
    "module_config",
    "build_module",
    "extract_module",
    "build_pretrain_model",
    "load_pretrain_checkpoint",
    "preprocessing_from_hparams",
    "provenance",
    "write_bundle",
    "check_bundle_target",
    "MissingFileError",
    "WEIGHT_PATH_KWARGS",
    "weight_paths",
    "pretrained_from",
    "export_checkpoint",
    "read_bundle_config",
    "load_bundle",
    "load_encoder",
    "load_encoder_weights",
]
