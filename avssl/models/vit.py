"""Vision Transformers over space-time tubelets (video, VideoMAE-style) and log-mel patches (audio, AST/AudioMAE-style).

Hidden tokens are dropped before the blocks (MAE-style). Position embeddings are fixed separable sin-cos
(``pos_embed="sincos"``, default, recomputed for any grid) or learned (``"learned"``, initialised with sin-cos and
interpolated when an input or a loaded state dict has another grid).

Prefix tokens (``class_token=True``, and for AST a distillation token, ``dist_token=True``) are off by default; when on
they go first in the sequence (``forward_tokens``), ahead of the grid tokens in time-major grid order, and
``forward_features`` still returns the grid tokens only (the encoder interface). With joint space-time attention a
static clip repeats each spatial key T' times; ``prefix_attn_bias=True`` adds log T' to the prefix keys' attention
logits so that an image model inflated to video computes exactly the image model's function on a static clip.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import StochasticDepth

from avssl.models.base import Encoder, select_visible
from avssl.models.patching import (
    _as_tuple,
    check_mask,
    grid_size,
    interpolate_pos_embed,
    mask_to_cells,
    sincos_pos_embed,
)
from avssl.models.registry import build_encoder, register_encoder

POS_EMBED_KINDS = ("sincos", "learned")


class Attention(nn.Module):
    """Multi-head self-attention through ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        """``attn_bias``: optional additive logit bias per key, broadcastable to ``[N, heads, L, L]``."""
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_bias is None:
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        else:
            out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_bias.to(qkv.dtype))
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with stochastic depth (reusable by decoders and joint layers)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = StochasticDepth(drop_path, mode="row") if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, attn_bias: Tensor | None = None) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_bias))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def init_transformer_weights(module: nn.Module) -> None:
    """MAE-style init: truncated-normal linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def conv_stem(
    modality: str, in_chans: int, embed_dim: int, patch: tuple[int, ...], stride: tuple[int, ...], num_convs: int
) -> tuple[nn.Sequential | None, int, tuple[int, ...]]:
    """``num_convs`` 3x3 convolutions (BatchNorm, ReLU), each halving the spatial axes (and an audio patch's time
    axis) while the patch has a factor 2 left there; widths double up to ``embed_dim``. Video convolutions are
    3x3x3 with stride 1 in time (the tubelet stays with the projection). Returns the stem (None for
    ``num_convs=0``), the projection's input channels and the part of the patch left to the projection."""
    if num_convs < 0:
        raise ValueError(f"stem_convs must be >= 0, got {num_convs}")
    if num_convs == 0:
        return None, in_chans, patch
    if tuple(stride) != tuple(patch):
        raise ValueError(f"stem_convs needs non-overlapping patches, got patch {patch} with stride {stride}")
    left = list(patch)
    first = 1 if modality == "video" else 0  # video: the time axis is never strided in the stem
    mods: list[nn.Module] = []
    chans = in_chans
    widths = [max(8, embed_dim // 2 ** (num_convs - 1 - i)) for i in range(num_convs)]
    for width in widths:
        steps = [1] * first + [2 if (a >= first and left[a] % 2 == 0) else 1 for a in range(first, len(left))]
        if all(s == 1 for s in steps):
            raise ValueError(f"stem_convs={num_convs} is more stride-2 steps than patch {patch} allows")
        if len(patch) == 3:
            mods.append(nn.Conv3d(chans, width, 3, stride=tuple(steps), padding=1, bias=False))  # type: ignore[arg-type]
            mods.append(nn.BatchNorm3d(width))
        else:
            mods.append(nn.Conv2d(chans, width, 3, stride=tuple(steps), padding=1, bias=False))  # type: ignore[arg-type]
            mods.append(nn.BatchNorm2d(width))
        mods.append(nn.ReLU(inplace=True))
        left = [p // s for p, s in zip(left, steps)]
        chans = width
    return nn.Sequential(*mods), chans, tuple(left)


class ViTEncoder(Encoder):
    """Shared ViT trunk: patch embedding (conv with kernel = stride = patch), positions, blocks, final norm."""

    def __init__(
        self,
        *,
        modality: str,
        input_shape: tuple[int, ...],
        patch: tuple[int, ...],
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        drop_path: float,
        pos_embed: str,
        stride: tuple[int, ...] | None = None,
        class_token: bool = False,
        dist_token: bool = False,
        prefix_attn_bias: bool = True,
        stem_convs: int = 0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if dist_token and not class_token:
            raise ValueError("dist_token=True needs class_token=True (the class token comes first)")
        if pos_embed not in POS_EMBED_KINDS:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_KINDS}, got {pos_embed!r}")
        if depth < 1 or embed_dim < 1:
            raise ValueError(
                f"depth and embed_dim must be positive, got depth={depth}, embed_dim={embed_dim}"
            )
        if not 0.0 <= drop_path < 1.0:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.modality = modality
        self.input_shape = input_shape
        self.num_features = self.embed_dim = embed_dim
        self.patch = patch
        self.stride = tuple(patch) if stride is None else tuple(stride)
        if len(self.stride) != len(patch) or any(s < 1 for s in self.stride):
            raise ValueError(f"patch stride {self.stride} does not fit patch {patch}")
        self.pos_embed_kind = pos_embed
        self.num_prefix_tokens = int(class_token) + int(dist_token)
        self.prefix_attn_bias = bool(prefix_attn_bias)
        in_chans = input_shape[0]
        self.stem_convs = int(stem_convs)
        # stem_convs > 0: an early-convolution stem (Xiao et al. 2021) does the first stride-2 steps of the patch
        # embedding with 3x3 convolutions, BatchNorm and ReLU; the patch projection then covers what is left of
        # the patch, so the token grid (and every MAE target) is the one of the plain patch embedding
        self.stem, proj_in, proj_patch = conv_stem(modality, in_chans, embed_dim, patch, self.stride, self.stem_convs)
        conv: Any = nn.Conv3d if len(patch) == 3 else nn.Conv2d
        self.patch_embed: nn.Conv2d | nn.Conv3d = conv(
            proj_in, embed_dim, kernel_size=proj_patch, stride=self.stride if self.stem is None else proj_patch
        )
        grid = self.token_grid(input_shape)
        self.pos_grid = grid
        table = sincos_pos_embed(grid, embed_dim).unsqueeze(0)
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(table)
            # the grid travels with learned tables so that loading into another grid can resize them
            self.register_buffer("pos_embed_grid", torch.tensor(grid, dtype=torch.long))
        else:
            self.register_buffer("pos_embed", table, persistent=False)
        if class_token:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if dist_token:
            self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        if self.num_prefix_tokens:
            # positions of the prefix tokens (timm keeps them as the first rows of its pos_embed)
            self.prefix_pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens, embed_dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.ModuleList(TransformerBlock(embed_dim, num_heads, mlp_ratio, r) for r in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(init_transformer_weights)
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if self.patch_embed.bias is not None:
            nn.init.zeros_(self.patch_embed.bias)
        for m in self.stem.modules() if self.stem is not None else ():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.zero_init_residual = bool(zero_init_residual)
        if self.zero_init_residual:  # every block starts as the identity (the residual branches' outputs are 0)
            for block in self.blocks:
                assert isinstance(block, TransformerBlock)
                nn.init.zeros_(block.attn.proj.weight)
                nn.init.zeros_(block.mlp.fc2.weight)
        if class_token:
            nn.init.normal_(self.cls_token, std=0.02)
        if dist_token:
            nn.init.normal_(self.dist_token, std=0.02)

    # --- grid -----------------------------------------------------------------------------------------
    def token_grid(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        dims = self._shape_of(input_shape)[1:]
        stride = getattr(self, "stride", self.patch)
        if tuple(stride) == tuple(self.patch):
            return grid_size(dims, self.patch)
        grid = tuple((int(d) - p) // s + 1 for d, p, s in zip(dims, self.patch, stride))
        if any(int(d) < p for d, p in zip(dims, self.patch)):
            raise ValueError(f"input dims {tuple(dims)} are smaller than one patch {self.patch}")
        return grid

    def patch_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        self.token_grid(input_shape)  # validates the shape
        if tuple(self.stride) != tuple(self.patch):
            raise ValueError(
                f"{type(self).__name__} has overlapping patches (patch {self.patch}, stride {self.stride}): "
                "tokens do not tile the input, so there are no per-token reconstruction targets"
            )
        return self.patch

    # --- positions ------------------------------------------------------------------------------------
    def position_table(self, grid: tuple[int, ...]) -> Tensor:
        """Position embedding ``[1, prod(grid), D]`` for a token grid (interpolated or recomputed if needed)."""
        if grid == self.pos_grid:
            return self.pos_embed
        if self.pos_embed_kind == "sincos":
            return sincos_pos_embed(grid, self.embed_dim).unsqueeze(0).to(self.pos_embed)
        return interpolate_pos_embed(self.pos_embed, self.pos_grid, grid)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        key = prefix + "pos_embed"
        grid_key = prefix + "pos_embed_grid"
        if self.pos_embed_kind == "learned" and key in state_dict:
            src = state_dict[key]
            src_grid = tuple(int(g) for g in state_dict[grid_key]) if grid_key in state_dict else None
            if src_grid is None:
                src_grid = self._guess_grid(int(src.shape[-2]))
            if src.shape[-1] != self.embed_dim:
                error_msgs.append(
                    f"{key}: width {src.shape[-1]} in the checkpoint, {self.embed_dim} in the model"
                )
            elif src_grid is None:
                error_msgs.append(
                    f"{key}: cannot resize {src.shape[-2]} positions to grid {self.pos_grid} (no pos_embed_grid entry)"
                )
            elif src_grid != self.pos_grid:
                state_dict[key] = interpolate_pos_embed(src, src_grid, self.pos_grid)
            state_dict[grid_key] = torch.tensor(self.pos_grid, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _guess_grid(self, length: int) -> tuple[int, ...] | None:
        """Source grid of a table without a recorded grid: ours with another length along the first (time) axis."""
        rest = self.num_tokens() // self.pos_grid[0]
        if length % rest:
            return None
        return (length // rest, *self.pos_grid[1:])

    # --- forward --------------------------------------------------------------------------------------
    def embed(self, x: Tensor) -> Tensor:
        """Patch tokens plus positions ``[N, L, D]`` in grid order (remainders cropped)."""
        tokens = self._patch_tokens(x)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        return tokens + self.position_table(grid)

    def _patch_tokens(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """The patch embedding ``[N, D, *grid]`` (through the convolutional stem when there is one). The stem's
        3x3 convolutions reach across patch borders, so with a ``mask`` the hidden cells are zeroed first
        (SimMIM-style, as the CNN encoders do): what lies under a hidden token cannot reach a visible one."""
        self.check_input(x)
        if self.stem is None:
            return self.patch_embed(x)
        grid = self.token_grid(tuple(x.shape[1:]))
        x = x[(slice(None), slice(None), *(slice(0, g * p) for g, p in zip(grid, self.patch)))]  # whole patches
        if mask is not None:
            check_mask(mask, x.shape[0], math.prod(grid))
            cells = mask_to_cells(mask.to(x.device), grid, self.patch, tuple(x.shape[2:])).unsqueeze(1)
            x = x.masked_fill(cells, 0.0)
        return self.patch_embed(self.stem(x))

    def prefix_bias(self, grid: tuple[int, ...], length: int) -> Tensor | None:
        """Additive key bias ``[1, 1, 1, length]``: log T' on the prefix tokens of a video grid with T' > 1 time
        slices (``prefix_attn_bias``), so that a static clip attends as the image model did; else None."""
        if not (self.num_prefix_tokens and self.prefix_attn_bias and self.modality == "video" and grid[0] > 1):
            return None
        bias = torch.zeros(length, device=self.norm.weight.device)
        bias[: self.num_prefix_tokens] = math.log(grid[0])
        return bias.view(1, 1, 1, length)

    def forward_tokens(self, x: Tensor, mask: Tensor | None = None, *, norm: bool = True) -> Tensor:
        """All tokens ``[N, P + L_vis, D]``: the P prefix tokens (class, then distillation) first, then the visible
        grid tokens in grid order (time-major for video); ``norm=False`` skips the final LayerNorm."""
        tokens = self._patch_tokens(x, mask)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2) + self.position_table(grid)
        if mask is not None:
            check_mask(mask, tokens.shape[0], tokens.shape[1])
            tokens = select_visible(tokens, mask.to(tokens.device))
        if self.num_prefix_tokens:
            parts: list[Tensor] = [self.cls_token]
            if self.num_prefix_tokens > 1:
                parts.append(self.dist_token)
            prefix = (torch.cat(parts, dim=1) + self.prefix_pos_embed).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
        bias = self.prefix_bias(grid, tokens.shape[1])
        for block in self.blocks:
            tokens = block(tokens) if bias is None else block(tokens, bias)
        return self.norm(tokens) if norm else tokens

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        tokens = self.forward_tokens(x, mask)
        return tokens[:, self.num_prefix_tokens :] if self.num_prefix_tokens else tokens


class VideoViT(ViTEncoder):
    """Video ViT over ``tubelet x patch x patch`` space-time cubes; input ``[N, C, T, H, W]``.

    ``class_token=True`` adds a class token (first in :meth:`forward_tokens`); ``prefix_attn_bias`` (default on,
    effective only with a class token) adds log T' to its attention logit (see the module docstring)."""

    def __init__(
        self,
        num_frames: int = 16,
        img_size: int | Sequence[int] = 224,
        tubelet: int = 2,
        patch_size: int | Sequence[int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        pos_embed: str = "sincos",
        class_token: bool = False,
        prefix_attn_bias: bool = True,
        stem_convs: int = 0,
        zero_init_residual: bool = False,
    ) -> None:
        h, w = _as_tuple(img_size, 2, "img_size")
        ph, pw = _as_tuple(patch_size, 2, "patch_size")
        (pt,) = _as_tuple(tubelet, 1, "tubelet")
        super().__init__(
            modality="video",
            input_shape=(int(in_chans), int(num_frames), h, w),
            patch=(pt, ph, pw),
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path=drop_path,
            pos_embed=pos_embed,
            class_token=class_token,
            prefix_attn_bias=prefix_attn_bias,
            stem_convs=stem_convs,
            zero_init_residual=zero_init_residual,
        )


class AudioViT(ViTEncoder):
    """Audio ViT over log-mel patches (frames x mels); input ``[N, 1, F, M]``.

    ``patch_stride`` (default: the patch size) below the patch size gives overlapping patches (AST: 16 with stride
    10); ``class_token``/``dist_token`` add the prefix tokens of timm/AudioMAE (class) and AST (class, distillation).
    """

    def __init__(
        self,
        num_frames: int = 1024,
        num_mels: int = 128,
        patch_size: int | Sequence[int] = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        pos_embed: str = "sincos",
        class_token: bool = False,
        dist_token: bool = False,
        patch_stride: int | Sequence[int] | None = None,
        stem_convs: int = 0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__(
            modality="audio",
            input_shape=(1, int(num_frames), int(num_mels)),
            patch=_as_tuple(patch_size, 2, "patch_size"),
            stride=None if patch_stride is None else _as_tuple(patch_stride, 2, "patch_stride"),
            class_token=class_token,
            dist_token=dist_token,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            drop_path=drop_path,
            pos_embed=pos_embed,
            stem_convs=stem_convs,
            zero_init_residual=zero_init_residual,
        )


_SIZES = {
    "nano": dict(embed_dim=128, depth=4, num_heads=4),
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=768, depth=12, num_heads=12),
}
# nano is a CPU demo model: its default input is the demo segment (4 frames of 64 px; 48 frames x 128 mels)
_NANO_VIDEO = dict(num_frames=4, img_size=64)
_NANO_AUDIO = dict(num_frames=48, num_mels=128)


@register_encoder(modality="video")
def vit_video_nano(**kwargs: Any) -> VideoViT:
    """Video ViT, 128 wide, 4 blocks; default input 3x4x64x64 (2x16x16 tubelets)."""
    return build_encoder("vit_video_nano", VideoViT, {**_SIZES["nano"], **_NANO_VIDEO}, kwargs)


@register_encoder(modality="video")
def vit_video_tiny(**kwargs: Any) -> VideoViT:
    """Video ViT-Ti (192 wide, 12 blocks, 3 heads); default input 3x16x224x224."""
    return build_encoder("vit_video_tiny", VideoViT, _SIZES["tiny"], kwargs)


@register_encoder(modality="video")
def vit_video_small(**kwargs: Any) -> VideoViT:
    """Video ViT-S (384 wide, 12 blocks, 6 heads); default input 3x16x224x224."""
    return build_encoder("vit_video_small", VideoViT, _SIZES["small"], kwargs)


@register_encoder(modality="video")
def vit_video_base(**kwargs: Any) -> VideoViT:
    """Video ViT-B (768 wide, 12 blocks, 12 heads); default input 3x16x224x224."""
    return build_encoder("vit_video_base", VideoViT, _SIZES["base"], kwargs)


@register_encoder(modality="audio")
def vit_audio_nano(**kwargs: Any) -> AudioViT:
    """Audio ViT, 128 wide, 4 blocks; default input 1x48x128 (16x16 patches)."""
    return build_encoder("vit_audio_nano", AudioViT, {**_SIZES["nano"], **_NANO_AUDIO}, kwargs)


@register_encoder(modality="audio")
def vit_audio_tiny(**kwargs: Any) -> AudioViT:
    """Audio ViT-Ti; default input 1x1024x128."""
    return build_encoder("vit_audio_tiny", AudioViT, _SIZES["tiny"], kwargs)


@register_encoder(modality="audio")
def vit_audio_small(**kwargs: Any) -> AudioViT:
    """Audio ViT-S; default input 1x1024x128."""
    return build_encoder("vit_audio_small", AudioViT, _SIZES["small"], kwargs)


@register_encoder(modality="audio")
def vit_audio_base(**kwargs: Any) -> AudioViT:
    """Audio ViT-B; default input 1x1024x128."""
    return build_encoder("vit_audio_base", AudioViT, _SIZES["base"], kwargs)


__all__ = [
    "Attention",
    "Mlp",
    "TransformerBlock",
    "init_transformer_weights",
    "ViTEncoder",
    "VideoViT",
    "AudioViT",
]
