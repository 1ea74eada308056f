"""Converters from the field's ViT weight layouts to avssl's ViTs (part of the weight I/O layer, beside
:mod:`avssl.weights`; nothing here imports the models, objectives, export or Lightning).

Formats (``pretrained_format``):

- ``"timm"``: a timm ``VisionTransformer`` state dict (supervised or MAE; ``.pth``/``.bin``/``.safetensors``), e.g.
  ViT-B/16 at 224 px. Into a video ViT the 2-D patch embedding is inflated to tubelets (``inflate="average"``: the
  kernel divided by the tubelet length in every frame; ``"center"``: the kernel in the middle frame, zeros
  elsewhere), the spatial position table is interpolated to the new grid and copied to every time slice. Into an
  audio ViT the RGB kernel is averaged to one channel and the table is interpolated to the frames x mels grid (image
  rows -> spectrogram frames, columns -> mels, as AudioMAE does).
- ``"audiomae"``: AudioMAE-layout timm ViT (one input channel, input ``[N, 1, frames, 128 mels]``, time-major grid
  with 128 / patch mel rows); its pretraining file (``{"model": ...}``) carries the MAE decoder, which is ignored.
- ``"hf_ast"``: a transformers ``ASTModel`` (or ``ASTForAudioClassification``) state dict: class and distillation
  tokens, overlapping patches over ``[N, 1, mels, frames]`` (freq-major: the kernel and table are transposed to
  avssl's frames x mels); the encoder needs ``class_token=True, dist_token=True, patch_stride=<AST stride>``.
- ``"hf_videomae"``: a transformers ``VideoMAEModel`` (or ``VideoMAEForVideoClassification`` /
  ``VideoMAEForPreTraining``) state dict: 3-D tubelets, no class token, q and v biases only, a fixed 1-D sinusoid
  position table (recomputed here for the encoder's grid), a final norm only without mean pooling.
- ``"cav_mae"``: a CAV-MAE checkpoint (DataParallel ``module.`` prefix): the modality's patch embedding, position
  table plus modality embedding, its 11 modality blocks and the shared block with that modality's norms (12 blocks),
  and the modality's final norm. The audio grid is freq-major (8 mel rows); the video branch is a per-frame image
  ViT, inflated like ``timm``.
- ``"auto"``: detected from the keys (avssl bundles and checkpoints go to :func:`avssl.weights.load_encoder_weights`).

Every source key is used, or reported with the reason it is not (classifier heads, MAE decoders, the other
modality); a source key the converter does not know is an error naming it. Encoder tensors the source lacks keep
their initialisation and are reported. The converted encoder needs learned position tables (``pos_embed="learned"``)
and, when the source has one, ``class_token=True``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avssl.weights import (
    ExportError,
    StateDictMismatchError,
    clean_state_dict,
    load_checkpoint,
    load_state_dict_strict,
    read_safetensors,
)

FOREIGN_FORMATS = ("timm", "audiomae", "hf_videomae", "hf_ast", "cav_mae")
FORMATS = ("auto", "avssl", *FOREIGN_FORMATS)
INFLATE_MODES = ("average", "center")
_BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")


@dataclass
class ConversionReport:
    """What a conversion used: ``loaded`` encoder keys, ``ignored`` source keys (key -> why), ``kept_init``
    encoder keys the source lacks (key -> why)."""

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)
    kept_init: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.source}: {self.format} weights, {len(self.loaded)} encoder tensors loaded"]
        reasons: dict[str, list[str]] = {}
        for k, why in self.ignored.items():
            reasons.setdefault(why, []).append(k)
        for why, keys in reasons.items():
            lines.append(f"  not used ({why}): {_preview(keys)}")
        for k, why in self.kept_init.items():
            lines.append(f"  kept at initialisation: {k} ({why})")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _preview(keys: list[str], limit: int = 6) -> str:
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


# --- reading ---------------------------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """A flat state dict from a ``.safetensors`` file or a ``torch.save`` file (``.pth``/``.bin``/``.pt``), unwrapped
    from ``{"model": ...}`` / ``{"state_dict": ...}`` / ``{"module": ...}`` and cleaned of ``module.`` prefixes."""
    p = Path(path)
    if p.suffix == ".safetensors":
        sd: Mapping[str, Any] = read_safetensors(p)
    else:
        sd = load_checkpoint(p)
        for wrapper in ("model", "state_dict", "module", "model_state"):
            inner = sd.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, Tensor) for v in inner.values()):
                sd = inner
                break
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if not tensors:
        raise ExportError(p, "no tensors found in the file")
    return clean_state_dict(tensors, source=p)


def detect_format(sd: Mapping[str, Tensor], source: str | os.PathLike[str] | None = None) -> str:
    """The layout of a state dict: one of :data:`FOREIGN_FORMATS`, or ``"avssl"``."""
    keys = set(sd)
    if "patch_embed_a.proj.weight" in keys or "patch_embed_v.proj.weight" in keys:
        return "cav_mae"
    if any(k.endswith("embeddings.distillation_token") for k in keys):
        return "hf_ast"
    if any(k.endswith("embeddings.patch_embeddings.projection.weight") for k in keys):
        w = next(v for k, v in sd.items() if k.endswith("embeddings.patch_embeddings.projection.weight"))
        return "hf_videomae" if w.ndim == 5 else "hf_ast"
    if "patch_embed.proj.weight" in keys:
        return "audiomae" if sd["patch_embed.proj.weight"].shape[1] == 1 else "timm"
    if "patch_embed.weight" in keys or any("encoders." in k or k.startswith("encoder.") for k in keys):
        return "avssl"
    raise ExportError(
        source,
        "cannot tell the layout of these weights (not timm, AudioMAE, transformers AST/VideoMAE, CAV-MAE or avssl); "
        f"first keys: {_preview(sorted(keys))}; pass pretrained_format=",
    )


# --- the canonical form every source is parsed into -------------------------------------------------------------


@dataclass
class _Canon:
    patch_w: Tensor  # [D, C, *kernel] in the source's axis order
    patch_b: Tensor | None
    pos: Tensor | None  # [N, D] over src_grid, or None (computed by the target, see pos_fn)
    src_grid: tuple[int, ...] | None
    axes: str  # "hw" image, "tf" time-major audio, "ft" freq-major audio, "thw" video
    prefix: list[Tensor]  # [1, 1, D] each: class, then distillation
    prefix_pos: Tensor | None  # [P, D]
    blocks: list[dict[str, Tensor]]  # our names: norm1.weight, attn.qkv.weight, ...
    norm: dict[str, Tensor] | None
    pos_fn: Callable[[tuple[int, ...], int], Tensor] | None = None
    notes: list[str] = field(default_factory=list)


class _Keys:
    """A source state dict whose keys are ticked off as they are used."""

    def __init__(self, sd: Mapping[str, Tensor], source: str):
        self.sd = dict(sd)
        self.used: set[str] = set()
        self.ignored: dict[str, str] = {}
        self.source = source

    def take(self, key: str) -> Tensor:
        if key not in self.sd:
            raise StateDictMismatchError(self.source, f"expected key {key!r} is missing")
        self.used.add(key)
        return self.sd[key]

    def get(self, key: str) -> Tensor | None:
        return self.take(key) if key in self.sd else None

    def ignore(self, pattern: str, why: str) -> None:
        rx = re.compile(pattern)
        for k in self.sd:
            if k not in self.used and k not in self.ignored and rx.match(k):
                self.ignored[k] = why

    def check_all_used(self, fmt: str) -> None:
        left = sorted(k for k in self.sd if k not in self.used and k not in self.ignored)
        if left:
            raise StateDictMismatchError(
                self.source, f"{len(left)} key(s) of the {fmt} weights are not understood: {_preview(left, 12)}"
            )


def _depth(sd: Mapping[str, Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in sd if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _timm_block(keys: _Keys, prefix: str, norms: tuple[str, str] = ("norm1", "norm2")) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for extra in ("ls1.gamma", "ls2.gamma", "attn.q_norm.weight", "attn.k_norm.weight", "norm.weight"):
        if prefix + extra in keys.sd:
            raise StateDictMismatchError(keys.source, f"{prefix}{extra}: layer scale / qk-norm blocks are not supported")
    src = {"norm1": norms[0], "norm2": norms[1]}
    for part in _BLOCK_PARTS:
        name = src.get(part, part)
        out[f"{part}.weight"] = keys.take(f"{prefix}{name}.weight")
        bias = keys.get(f"{prefix}{name}.bias")
        if bias is None and part == "attn.qkv":
            bias = torch.zeros(out[f"{part}.weight"].shape[0])
        if bias is None:
            raise StateDictMismatchError(keys.source, f"{prefix}{name}.bias is missing")
        out[f"{part}.bias"] = bias
    return out


def _hf_block(keys: _Keys, prefix: str, fmt: str) -> dict[str, Tensor]:
    """A transformers ViT-family layer (``layernorm_before``/``after``), in the v5 or the v4 key layout."""
    if prefix + "attention.q_proj.weight" in keys.sd:  # transformers 5 (AST)
        q, k, v, o = (f"{prefix}attention.{n}_proj" for n in "qkvo")
        fc1, fc2 = prefix + "mlp.fc1", prefix + "mlp.fc2"
    else:  # transformers 4 / hub checkpoints, and VideoMAE in 5
        q, k, v = (f"{prefix}attention.attention.{n}" for n in ("query", "key", "value"))
        o, fc1, fc2 = prefix + "attention.output.dense", prefix + "intermediate.dense", prefix + "output.dense"
    wq, wk, wv = keys.take(q + ".weight"), keys.take(k + ".weight"), keys.take(v + ".weight")

    def bias(name: str, alt: str) -> Tensor:
        b = keys.get(name + ".bias")
        if b is None:
            b = keys.get(prefix + "attention.attention." + alt)
        return b if b is not None else torch.zeros(wq.shape[0])

    qkv_b = torch.cat([bias(q, "q_bias"), bias(k, "k_bias"), bias(v, "v_bias")])
    out = {"attn.qkv.weight": torch.cat([wq, wk, wv]), "attn.qkv.bias": qkv_b}
    for ours, theirs in (("attn.proj", o), ("mlp.fc1", fc1), ("mlp.fc2", fc2),
                         ("norm1", prefix + "layernorm_before"), ("norm2", prefix + "layernorm_after")):
        out[f"{ours}.weight"] = keys.take(theirs + ".weight")
        out[f"{ours}.bias"] = keys.take(theirs + ".bias")
    return out


def _square(n: int, source: str) -> tuple[int, int]:
    s = math.isqrt(n)
    if s * s != n:
        raise StateDictMismatchError(source, f"position table of {n} patches is not a square image grid")
    return (s, s)


def _parse_timm(keys: _Keys, fmt: str, target: Any) -> _Canon:
    w = keys.take("patch_embed.proj.weight")
    b = keys.get("patch_embed.proj.bias")
    prefix = [t for t in (keys.get("cls_token"), keys.get("dist_token")) if t is not None]
    if "reg_token" in keys.sd:
        raise StateDictMismatchError(keys.source, "register tokens (reg_token) are not supported")
    pos = keys.take("pos_embed")[0]
    n, n_prefix = int(pos.shape[0]), len(prefix)
    mels = 128 // int(w.shape[-1])  # AudioMAE: 128 mel bins
    own = tuple(int(g) for g in getattr(target, "pos_grid", ()))[-2:]  # the encoder's (spatial) grid

    def grid_of(rows: int) -> tuple[int, ...] | None:
        if len(own) == 2 and math.prod(own) == rows:  # the same grid as the encoder's: no guessing
            return own
        if fmt == "audiomae":
            return (rows // mels, mels) if rows > 0 and rows % mels == 0 else None
        side = math.isqrt(max(rows, 0))
        return (side, side) if rows > 0 and side * side == rows else None

    # timm's pos_embed holds the prefix tokens' rows first, unless it was built with no_embed_class=True
    options = ([n - n_prefix] if n_prefix else []) + [n]
    found = next(((rows, g) for rows in options if (g := grid_of(rows)) is not None), None)
    if found is None:
        raise StateDictMismatchError(keys.source, f"position table of {n} rows fits no {fmt} patch grid")
    n_patch, grid = found
    axes = "tf" if fmt == "audiomae" else "hw"
    prefix_pos = pos[: n - n_patch] if n_patch < n else None
    depth = _depth(keys.sd, r"blocks\.(\d+)\.")
    blocks = [_timm_block(keys, f"blocks.{i}.") for i in range(depth)]
    norm = _final_norm(keys, "norm.")
    keys.ignore(r"fc_norm\.", "timm's fc_norm normalises the pooled vector, not the tokens")
    keys.ignore(r"head(_dist)?\.", "classifier head")
    keys.ignore(r"(decoder_|mask_token)", "MAE decoder")
    return _Canon(w, b, pos[n - n_patch :], grid, axes, prefix, prefix_pos, blocks, norm)


def _final_norm(keys: _Keys, prefix: str) -> dict[str, Tensor] | None:
    """The final LayerNorm's weight and bias under ``prefix`` (consumed), or None when the file has none."""
    if prefix + "weight" not in keys.sd:
        return None
    return {"weight": keys.take(prefix + "weight"), "bias": keys.take(prefix + "bias")}


def _strip_prefix(keys: _Keys, prefixes: tuple[str, ...]) -> _Keys:
    for p in prefixes:
        if any(k.startswith(p) for k in keys.sd):
            inner = {k[len(p) :]: v for k, v in keys.sd.items() if k.startswith(p)}
            rest = {k: v for k, v in keys.sd.items() if not k.startswith(p)}
            new = _Keys({**inner, **rest}, keys.source)
            return new
    return keys


def _parse_hf_ast(keys: _Keys, target: Any) -> _Canon:
    w = keys.take("embeddings.patch_embeddings.projection.weight")
    b = keys.get("embeddings.patch_embeddings.projection.bias")
    prefix = [keys.take("embeddings.cls_token"), keys.take("embeddings.distillation_token")]
    pos = keys.take("embeddings.position_embeddings")[0]
    n = pos.shape[0] - 2
    # the frequency rows: AST's standard 128 mels with the encoder's mel stride, else the encoder's own mel grid
    stride_m = int(getattr(target, "stride", (0, w.shape[-2]))[-1])
    candidates = [(128 - int(w.shape[-2])) // stride_m + 1]
    try:
        candidates.insert(0, int(target.token_grid()[-1]))
    except (AttributeError, ValueError, TypeError):
        pass
    f = next((c for c in candidates if c > 0 and n % c == 0), None)
    if f is None:
        raise StateDictMismatchError(keys.source, f"AST position table of {n} patches fits no mel grid {candidates}")
    root = "layers" if any(k.startswith("layers.") for k in keys.sd) else "encoder.layer"
    depth = _depth(keys.sd, re.escape(root) + r"\.(\d+)\.")
    blocks = [_hf_block(keys, f"{root}.{i}.", "hf_ast") for i in range(depth)]
    norm = {"weight": keys.take("layernorm.weight"), "bias": keys.take("layernorm.bias")}
    keys.ignore(r"classifier\.", "classifier head")
    return _Canon(w, b, pos[2:], (f, n // f), "ft", prefix, pos[:2], blocks, norm)


def videomae_sinusoid(length: int, dim: int) -> Tensor:
    """VideoMAE's fixed 1-D sinusoid table ``[length, dim]`` over the flattened token index (sin on even
    channels, cos on odd ones, wavelength 10000^(2*(j//2)/dim))."""
    pos = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    j = torch.arange(dim, dtype=torch.float64)
    angles = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.empty_like(angles)
    table[:, 0::2] = angles[:, 0::2].sin()
    table[:, 1::2] = angles[:, 1::2].cos()
    return table.float()


def _parse_hf_videomae(keys: _Keys) -> _Canon:
    w = keys.take("embeddings.patch_embeddings.projection.weight")
    b = keys.get("embeddings.patch_embeddings.projection.bias")
    depth = _depth(keys.sd, r"encoder\.layer\.(\d+)\.")
    blocks = [_hf_block(keys, f"encoder.layer.{i}.", "hf_videomae") for i in range(depth)]
    norm = _final_norm(keys, "layernorm.")
    keys.ignore(r"fc_norm\.", "VideoMAE's fc_norm normalises the mean-pooled vector, not the tokens")
    keys.ignore(r"classifier\.", "classifier head")
    keys.ignore(r"(decoder\.|encoder_to_decoder|mask_token|position_embeddings)", "MAE decoder")
    notes = ["position table: VideoMAE's fixed 1-D sinusoid, computed for the encoder's grid"]
    return _Canon(w, b, None, None, "thw", [], None, blocks, norm,
                  pos_fn=lambda grid, dim: videomae_sinusoid(math.prod(grid), dim), notes=notes)


def _parse_cav_mae(keys: _Keys, modality: str) -> _Canon:
    m = "a" if modality == "audio" else "v"
    other = "v" if m == "a" else "a"
    w = keys.take(f"patch_embed_{m}.proj.weight")
    b = keys.get(f"patch_embed_{m}.proj.bias")
    pos = keys.take(f"pos_embed_{m}")[0] + keys.take(f"modality_{m}")[0]
    n = pos.shape[0]
    grid: tuple[int, ...] = (8, n // 8) if m == "a" else _square(n, keys.source)
    depth = _depth(keys.sd, rf"blocks_{m}\.(\d+)\.")
    blocks = [_timm_block(keys, f"blocks_{m}.{i}.") for i in range(depth)]
    for i in range(_depth(keys.sd, r"blocks_u\.(\d+)\.")):
        blocks.append(_timm_block(keys, f"blocks_u.{i}.", norms=(f"norm1_{m}", f"norm2_{m}")))
    norm = {"weight": keys.take(f"norm_{m}.weight"), "bias": keys.take(f"norm_{m}.bias")}
    keys.ignore(rf"(patch_embed_{other}|pos_embed_{other}|modality_{other}|blocks_{other}\.|norm_{other}\.)",
                "the other modality")
    keys.ignore(r"blocks_u\.\d+\.norm[12](_" + other + r")?\.", "the shared block's norms of the other/joint stream")
    keys.ignore(r"norm\.", "the joint stream's final norm")
    keys.ignore(r"(decoder_|mask_token|pos_embed_[av]_decoder|decoder)", "MAE decoder")
    keys.ignore(r"(mlp_head|head|cls_token_|modality_.*decoder)", "classifier head / decoder parts")
    return _Canon(w, b, pos, grid, "ft" if m == "a" else "hw", [], None, blocks, norm)


# --- applying ---------------------------------------------------------------------------------------------------


def _to_ours(pos: Tensor, grid: tuple[int, ...], axes: str) -> tuple[Tensor, tuple[int, ...]]:
    """Reorder a table (and a kernel's spatial axes are handled by the caller) from freq-major to time-major."""
    if axes == "ft":
        d = pos.shape[-1]
        table = pos.reshape(grid[0], grid[1], d).transpose(0, 1).reshape(-1, d)
        return table, (grid[1], grid[0])
    return pos, grid


def _patch_weight(c: _Canon, target: Any, inflate: str, report: ConversionReport) -> Tensor:
    tw = target.patch_embed.weight
    w = c.patch_w
    if c.axes == "ft":
        w = w.transpose(-1, -2)
    if w.shape[0] != tw.shape[0]:
        raise StateDictMismatchError(report.source, f"width {w.shape[0]} in the source, {tw.shape[0]} in the encoder")
    if w.shape[1] != tw.shape[1]:
        if tw.shape[1] == 1:
            w = w.mean(dim=1, keepdim=True)
            report.notes.append(f"patch embedding: {c.patch_w.shape[1]} input channels averaged to 1")
        else:
            raise StateDictMismatchError(
                report.source, f"patch embedding has {w.shape[1]} input channels, the encoder {tw.shape[1]}"
            )
    if w.ndim == 4 and tw.ndim == 5:
        pt = tw.shape[2]
        if inflate == "average":
            w = w.unsqueeze(2).repeat(1, 1, pt, 1, 1) / pt
        else:
            z = torch.zeros(*w.shape[:2], pt, *w.shape[2:], dtype=w.dtype)
            z[:, :, pt // 2] = w
            w = z
        report.notes.append(f"patch embedding inflated to {pt} frames ({inflate})")
    if tuple(w.shape) != tuple(tw.shape):
        raise StateDictMismatchError(
            report.source, f"patch embedding of shape {tuple(w.shape)} does not fit the encoder's {tuple(tw.shape)}"
        )
    return w


def _position_table(c: _Canon, target: Any, report: ConversionReport) -> Tensor:
    grid = tuple(int(g) for g in target.pos_grid)
    dim = int(target.embed_dim)
    if c.pos_fn is not None:
        return c.pos_fn(grid, dim)
    assert c.pos is not None and c.src_grid is not None
    table, src = _to_ours(c.pos, c.src_grid, c.axes)
    if len(grid) == 3 and len(src) == 2:  # image -> video: spatial resize, copied to every time slice
        table = _resize(table, src, grid[1:])
        if tuple(src) != tuple(grid[1:]):
            report.notes.append(f"position table interpolated from {src} to {grid[1:]}")
        return table.unsqueeze(0).expand(grid[0], -1, -1).reshape(-1, dim)
    if tuple(src) != grid:
        report.notes.append(f"position table interpolated from {src} to {grid}")
    return _resize(table, src, grid)


def _resize(table: Tensor, src: tuple[int, ...], dst: tuple[int, ...]) -> Tensor:
    if tuple(src) == tuple(dst):
        return table
    d = table.shape[-1]
    x = table.reshape(1, *src, d).movedim(-1, 1).float()
    mode = "bicubic" if len(src) == 2 else "trilinear"
    x = F.interpolate(x, size=tuple(dst), mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(math.prod(dst), d).to(table.dtype)


def _apply(c: _Canon, target: Any, inflate: str, report: ConversionReport) -> dict[str, Tensor]:
    name = type(target).__name__
    if getattr(target, "pos_embed_kind", None) != "learned":
        raise StateDictMismatchError(
            report.source, f"{name} has fixed sin-cos positions; build it with pos_embed='learned' to take the "
            "source's position table",
        )
    depth = len(target.blocks)
    if len(c.blocks) != depth:
        raise StateDictMismatchError(report.source, f"{len(c.blocks)} blocks in the source, {depth} in the {name}")
    p_target = int(getattr(target, "num_prefix_tokens", 0))
    if len(c.prefix) > p_target:
        need = "class_token=True" + (", dist_token=True" if len(c.prefix) > 1 else "")
        raise StateDictMismatchError(
            report.source, f"the source has {len(c.prefix)} prefix token(s) (class/distillation); build the {name} "
            f"with {need}",
        )
    out: dict[str, Tensor] = {"patch_embed.weight": _patch_weight(c, target, inflate, report)}
    if c.patch_b is not None:
        out["patch_embed.bias"] = c.patch_b
    else:
        out["patch_embed.bias"] = torch.zeros(target.patch_embed.weight.shape[0])
    out["pos_embed"] = _position_table(c, target, report).unsqueeze(0)
    out["pos_embed_grid"] = torch.tensor(target.pos_grid, dtype=torch.long)
    names = ["cls_token", "dist_token"][:p_target]
    for i, key in enumerate(names):
        if i < len(c.prefix):
            out[key] = c.prefix[i].reshape(1, 1, -1)
        else:
            report.kept_init[key] = "the source has no such token"
    if p_target:
        if c.prefix_pos is not None and c.prefix_pos.shape[0] == p_target:
            out["prefix_pos_embed"] = c.prefix_pos.reshape(1, p_target, -1)
        elif c.prefix and c.prefix_pos is None:
            out["prefix_pos_embed"] = torch.zeros(1, p_target, out["pos_embed"].shape[-1])  # timm no_embed_class
        else:
            report.kept_init["prefix_pos_embed"] = "the source has no position for the prefix tokens"
    for i, blk in enumerate(c.blocks):
        out.update({f"blocks.{i}.{k}": v for k, v in blk.items()})
    if c.norm is not None:
        out["norm.weight"], out["norm.bias"] = c.norm["weight"], c.norm["bias"]
    else:
        report.kept_init["norm.weight / norm.bias"] = "the source has no final token norm (mean-pooling variant)"
    report.notes += c.notes
    return out


def convert_state_dict(
    sd: Mapping[str, Tensor],
    target: Any,
    fmt: str,
    *,
    inflate: str = "average",
    source: str = "<state dict>",
) -> tuple[dict[str, Tensor], ConversionReport]:
    """Convert a foreign state dict for ``target`` (an avssl ViT encoder): the full state dict to load (the
    encoder's own tensors where the source has none) and the report."""
    if fmt not in FOREIGN_FORMATS:
        raise ValueError(f"pretrained_format must be one of {FORMATS}, got {fmt!r}")
    if inflate not in INFLATE_MODES:
        raise ValueError(f"inflate must be one of {INFLATE_MODES}, got {inflate!r}")
    if not hasattr(target, "blocks") or not hasattr(target, "pos_grid"):
        raise StateDictMismatchError(source, f"{fmt} weights convert only into avssl ViT encoders, not {type(target).__name__}")
    if getattr(target, "stem", None) is not None:
        raise StateDictMismatchError(source, f"{fmt} weights have a linear patch embedding; this encoder has a "
                                     f"convolutional stem (stem_convs={target.stem_convs}): build it with stem_convs=0")
    modality = str(getattr(target, "modality", ""))
    keys = _Keys(sd, source)
    if fmt in ("timm", "audiomae"):
        canon = _parse_timm(keys, fmt, target)
    elif fmt == "hf_ast":
        keys = _strip_prefix(keys, ("audio_spectrogram_transformer.",))
        canon = _parse_hf_ast(keys, target)
    elif fmt == "hf_videomae":
        keys = _strip_prefix(keys, ("videomae.",))
        canon = _parse_hf_videomae(keys)
    else:
        canon = _parse_cav_mae(keys, modality)
    keys.check_all_used(fmt)
    report = ConversionReport(source=source, format=fmt, ignored=dict(keys.ignored))
    converted = _apply(canon, target, inflate, report)
    state = dict(target.state_dict())
    unknown = sorted(set(converted) - set(state))
    if unknown:
        raise StateDictMismatchError(source, f"converted keys the encoder lacks: {_preview(unknown)}")
    state.update(converted)
    report.loaded = sorted(converted)
    return state, report


def load_foreign_weights(
    encoder: nn.Module, path: str | os.PathLike[str], fmt: str = "auto", *, inflate: str = "average"
) -> ConversionReport | None:
    """Load a local file of any supported layout into ``encoder``; returns the conversion report (None for avssl's
    own bundles and checkpoints, loaded by :func:`avssl.weights.load_encoder_weights`). Never downloads."""
    from avssl.weights import load_encoder_weights

    if fmt not in FORMATS:
        raise ValueError(f"pretrained_format must be one of {FORMATS}, got {fmt!r}")
    p = Path(path)
    if fmt == "avssl" or (fmt == "auto" and p.is_dir()):
        load_encoder_weights(encoder, p)
        return None
    sd = read_state_dict(p)
    if fmt == "auto":
        fmt = detect_format(sd, p)
        if fmt == "avssl":
            load_encoder_weights(encoder, p)
            return None
    state, report = convert_state_dict(sd, encoder, fmt, inflate=inflate, source=os.fspath(p))
    load_state_dict_strict(encoder, state, source=p)
    return report


# --- the reverse: avssl ViT -> timm ------------------------------------------------------------------------------


def to_timm_state_dict(encoder: Any) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """An avssl ViT as a timm ``VisionTransformer`` state dict and the keyword arguments that build the matching
    timm model (``timm.models.vision_transformer.VisionTransformer(**kwargs)``; ``forward_features`` then gives
    :meth:`forward_tokens`' tokens). Possible for 2-D ViTs (audio; a video ViT only with one frame per tubelet and
    one time slice) with non-overlapping patches and at most a class token; otherwise an ``ExportError`` says why."""
    name = type(encoder).__name__
    if not hasattr(encoder, "blocks") or not hasattr(encoder, "pos_grid"):
        raise ExportError(None, f"only avssl ViT encoders have a timm layout, not {name}")
    if getattr(encoder, "stem", None) is not None:
        raise ExportError(None, f"{name} has a convolutional stem (stem_convs={encoder.stem_convs}): timm's "
                          "VisionTransformer embeds patches with one linear projection")
    patch = tuple(int(p) for p in encoder.patch)
    grid = tuple(int(g) for g in encoder.pos_grid)
    w = encoder.patch_embed.weight.detach()
    if len(patch) == 3:
        if patch[0] != 1 or grid[0] != 1:
            raise ExportError(
                None, f"{name} has {patch[0]}-frame tubelets over {grid[0]} time slice(s): timm has no video ViT "
                "(only a one-frame encoder maps to timm's 2-D patch embedding); export the audio encoder",
            )
        w, patch, grid = w[:, :, 0], patch[1:], grid[1:]
    if tuple(int(s) for s in encoder.stride[-2:]) != patch:
        raise ExportError(None, f"{name} has overlapping patches (stride {encoder.stride}): timm's are not")
    n_prefix = int(getattr(encoder, "num_prefix_tokens", 0))
    if n_prefix > 1:
        raise ExportError(None, f"{name} has a distillation token: timm's VisionTransformer has none")
    blocks = encoder.blocks
    dim = int(encoder.embed_dim)
    with torch.no_grad():
        pos = encoder.position_table(tuple(encoder.pos_grid)).detach().reshape(1, -1, dim)
    sd: dict[str, Tensor] = {"patch_embed.proj.weight": w.clone(), "patch_embed.proj.bias": encoder.patch_embed.bias.detach().clone()}
    if n_prefix:
        sd["cls_token"] = encoder.cls_token.detach().clone()
        pos = torch.cat([encoder.prefix_pos_embed.detach(), pos], dim=1)
    sd["pos_embed"] = pos.clone()
    own = encoder.state_dict()
    for i in range(len(blocks)):
        for part in _BLOCK_PARTS:
            for kind in ("weight", "bias"):
                sd[f"blocks.{i}.{part}.{kind}"] = own[f"blocks.{i}.{part}.{kind}"].clone()
    sd["norm.weight"], sd["norm.bias"] = own["norm.weight"].clone(), own["norm.bias"].clone()
    first = blocks[0]
    kwargs: dict[str, Any] = {
        "img_size": [g * p for g, p in zip(grid, patch)],
        "patch_size": list(patch),
        "in_chans": int(w.shape[1]),
        "embed_dim": dim,
        "depth": len(blocks),
        "num_heads": int(first.attn.num_heads),
        "mlp_ratio": first.mlp.fc1.out_features / dim,
        "qkv_bias": True,
        "class_token": bool(n_prefix),
        "global_pool": "token" if n_prefix else "avg",
        "fc_norm": False,
        "num_classes": 0,
    }
    return sd, kwargs


__all__ = [
    "to_timm_state_dict",
    "FORMATS", "FOREIGN_FORMATS", "INFLATE_MODES", "ConversionReport", "read_state_dict", "detect_format",
    "convert_state_dict", "load_foreign_weights", "videomae_sinusoid",
]
