"""MAE decoder and the per-modality masked-autoencoding branch.

The encoder sees only visible tokens (``forward_features(x, mask)``); ``MAEDecoder`` embeds them to the decoder
width, puts a learned mask token at every hidden position, adds a fixed sin-cos position embedding of the full token
grid (so any grid size works without interpolation), runs a few transformer blocks and predicts every token's patch.
The loss (``avssl.objectives.masked.masked_mse``) only counts hidden tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from avssl.models.base import Encoder
from avssl.models.patching import patchify, random_mask, sincos_pos_embed, tube_mask
from avssl.models.vit import TransformerBlock, init_transformer_weights
from avssl.objectives.base import (
    MODALITIES,
    BuildContext,
    Objective,
    ObjectiveOutput,
    StepInputs,
    register_objective,
)
from avssl.objectives.masked import masked_mse, normalize_patches, recon_baseline

MASK_KINDS = ("random", "tube")


def check_mask_config(kind: str, ratio: float) -> None:
    """Raise ValueError for an unknown mask kind or a ratio outside (0, 1)."""
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must lie in (0, 1), got {ratio}")


def make_mask(
    kind: str,
    n: int,
    grid: tuple[int, ...],
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Token mask bool [n, prod(grid)] (True = hidden): ``"random"`` (unstructured; AudioMAE, CAV-MAE) or
    ``"tube"`` (one spatial mask repeated over the first grid axis, time; VideoMAE). ``ratio`` in (0, 1)."""
    check_mask_config(kind, ratio)
    length = math.prod(grid) if kind == "random" else math.prod(grid[1:])
    if round(ratio * length) < 1:
        raise ValueError(f"mask ratio {ratio} hides no token of grid {grid} ({kind} masking)")
    if kind == "random":
        return random_mask(n, length, ratio, generator=generator, device=device)
    return tube_mask(n, grid, ratio, generator=generator, device=device)


@functools.lru_cache(maxsize=32)
def _pos_table(grid: tuple[int, ...], dim: int) -> Tensor:
    return sincos_pos_embed(grid, dim)


def pos_embed(grid: tuple[int, ...], dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Fixed sin-cos position table [prod(grid), dim] for the full token grid (cached per grid)."""
    return _pos_table(tuple(grid), dim).to(device=device, dtype=dtype)


def scatter_visible(visible: Tensor, mask: Tensor, fill: Tensor) -> Tensor:
    """Full token sequence [N, L, d]: ``visible`` [N, L_vis, d] (grid order) at positions where ``mask`` is
    False, ``fill`` [d] (the mask token) where it is True."""
    n, length = mask.shape
    if visible.shape[0] != n or visible.shape[1] * n != int((~mask).sum()):
        raise ValueError(f"{tuple(visible.shape[:2])} visible tokens do not match the mask {tuple(mask.shape)} "
                         f"hiding {int(mask.sum())} tokens (every row must hide the same number)")
    full = fill.to(visible.dtype).expand(n, length, visible.shape[-1]).clone()
    full[~mask] = visible.reshape(-1, visible.shape[-1])
    return full


class MAEDecoder(nn.Module):
    """Light MAE decoder: visible tokens [N, L_vis, in_dim] + mask [N, L] + grid -> predictions [N, L, patch_dim]."""

    def __init__(self, in_dim: int, patch_dim: int, *, dim: int = 256, depth: int = 2, num_heads: int = 8,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_dim = patch_dim
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, patch_dim)
        self.apply(init_transformer_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, visible: Tensor, mask: Tensor, grid: tuple[int, ...]) -> Tensor:
        if mask.shape[1] != math.prod(grid):
            raise ValueError(f"mask covers {mask.shape[1]} tokens but the grid {grid} has {math.prod(grid)}")
        x = scatter_visible(self.embed(visible), mask, self.mask_token)
        x = x + pos_embed(grid, x.shape[-1], x.device, x.dtype)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x))


@dataclass
class MaskedInput:
    """Mask and reconstruction targets of one modality's segments."""

    grid: tuple[int, ...]
    mask: Tensor  # bool [N, L], True = hidden
    target: Tensor  # [N, L, patch_dim]


def masked_input(encoder: Encoder, x: Tensor, *, mask_kind: str, mask_ratio: float, norm_pix: bool = True,
                 generator: torch.Generator | None = None) -> MaskedInput:
    """Draw a mask over ``encoder``'s token grid for ``x`` [N, ...] and cut per-token patch targets."""
    shape = tuple(int(s) for s in x.shape[1:])
    grid = tuple(int(g) for g in encoder.token_grid(shape))
    patch = tuple(int(p) for p in encoder.patch_shape(shape))
    mask = make_mask(mask_kind, x.shape[0], grid, mask_ratio, generator=generator, device=x.device)
    with torch.no_grad():
        target = patchify(x, patch).float()
        if target.shape[1] != mask.shape[1]:
            raise ValueError(f"{type(encoder).__name__}: patchify gave {target.shape[1]} patches for input {shape} "
                             f"but its token grid {grid} has {mask.shape[1]} tokens")
        if norm_pix:
            target = normalize_patches(target)
    return MaskedInput(grid, mask, target)


def patch_dim_for(encoder: Encoder, input_shape: tuple[int, ...]) -> int:
    """Length of one token's reconstruction target: prod(patch_shape) * channels."""
    return math.prod(encoder.patch_shape(tuple(input_shape))) * int(input_shape[0])


class MAEBranch(nn.Module):
    """Masked autoencoding of one modality: mask, encode visible tokens, decode, masked MSE vs baseline."""

    def __init__(self, in_dim: int, patch_dim: int, *, mask_kind: str = "random", mask_ratio: float = 0.75,
                 norm_pix: bool = True, decoder: dict[str, Any] | None = None):
        super().__init__()
        check_mask_config(mask_kind, mask_ratio)
        self.mask_kind = mask_kind
        self.mask_ratio = float(mask_ratio)
        self.norm_pix = norm_pix
        self.decoder = MAEDecoder(in_dim, patch_dim, **(decoder or {}))

    def forward(self, encoder: Encoder, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, dict[str, Tensor]]:
        """Return ``(loss, {"recon": loss, "recon_baseline": baseline})`` for segments ``x`` [N, ...]."""
        m = masked_input(encoder, x, mask_kind=self.mask_kind, mask_ratio=self.mask_ratio, norm_pix=self.norm_pix,
                         generator=generator)
        visible = encoder.forward_features(x, mask=m.mask)
        pred = self.decoder(visible, m.mask, m.grid)
        if pred.shape[-1] != m.target.shape[-1]:
            raise ValueError(f"decoder predicts {pred.shape[-1]} values per token, the target has "
                             f"{m.target.shape[-1]}: the input shape differs from the one the model was built for")
        loss = masked_mse(pred, m.target, m.mask)
        return loss, {"recon": loss.detach(), "recon_baseline": recon_baseline(m.target, m.mask)}

    def extra_repr(self) -> str:
        return f"mask_kind={self.mask_kind!r}, mask_ratio={self.mask_ratio}, norm_pix={self.norm_pix}"


# --- the ``mae`` objective ----------------------------------------------------------------------------------


@dataclass
class MaskingOptions:
    """Masks, targets and decoder of a masked-prediction objective (``mae`` and ``joint`` share them)."""

    video_mask_kind: str  # tube | random
    video_mask_ratio: float
    audio_mask_kind: str
    audio_mask_ratio: float
    norm_pix: bool
    decoder_dim: int
    decoder_depth: int
    decoder_heads: int
    decoder_mlp_ratio: float

    def mask_kind(self, modality: str) -> str:
        return str(getattr(self, f"{modality}_mask_kind"))

    def mask_ratio(self, modality: str) -> float:
        return float(getattr(self, f"{modality}_mask_ratio"))

    def decoder(self) -> dict[str, Any]:
        """Keyword arguments of the decoder (``MAEDecoder`` / ``JointMAEDecoder``)."""
        return {"dim": self.decoder_dim, "depth": self.decoder_depth, "num_heads": self.decoder_heads,
                "mlp_ratio": self.decoder_mlp_ratio}


@dataclass
class MaeOptions(MaskingOptions):
    """``objective.mae``: only the shared masking options."""


@register_objective
class MaskedObjective(Objective):
    """``mae``: per-modality masked autoencoding (VideoMAE / AudioMAE style), terms ``mae_video`` and
    ``mae_audio``; each modality's branch exists only when its weight is positive, and only that modality is
    decoded. Config: ``objective.mae`` (conf/objective/masked.yaml)."""

    name = "mae"
    Options = MaeOptions
    config = "masked"
    terms = ("mae_video", "mae_audio")
    order = 20

    def __init__(self, options: MaeOptions, ctx: BuildContext):
        super().__init__(options, ctx)
        o = options
        self.branches = nn.ModuleDict({
            m: MAEBranch(
                ctx.encoders[m].num_features, encoder_patch_dim(ctx.encoders[m], m),
                mask_kind=o.mask_kind(m), mask_ratio=o.mask_ratio(m), norm_pix=o.norm_pix, decoder=o.decoder())
            for m in MODALITIES if ctx.active(f"mae_{m}")
        })

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(m for m in MODALITIES if m in self.branches)

    def forward(self, encoders: Mapping[str, Encoder], step: StepInputs) -> ObjectiveOutput:
        out = ObjectiveOutput({})
        for m in MODALITIES:  # fixed order: masks draw from the step's generator reproducibly
            if m in self.branches:
                out.terms[f"mae_{m}"], logs = self.branches[m](encoders[m], step.flat(m), step.generator)
                out.logs[f"recon_{m}"] = logs["recon"]
                out.logs[f"recon_baseline_{m}"] = logs["recon_baseline"]
        return out


def encoder_patch_dim(encoder: Encoder, modality: str) -> int:
    """Reconstruction target width of one token of ``encoder`` (its ``input_shape`` sizes the decoder)."""
    shape = getattr(encoder, "input_shape", None)
    if shape is None:
        raise ValueError(f"masked objectives need the {modality} encoder's `input_shape` to size the decoder; "
                         f"{type(encoder).__name__} has none")
    return patch_dim_for(encoder, tuple(shape))


__all__ = [
    "MASK_KINDS",
    "check_mask_config",
    "make_mask",
    "pos_embed",
    "scatter_visible",
    "MAEDecoder",
    "MaskedInput",
    "masked_input",
    "patch_dim_for",
    "MAEBranch",
    "MaeOptions",
    "MaskingOptions",
    "MaskedObjective",
    "encoder_patch_dim",
]
