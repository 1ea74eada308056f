"""Token-grid helpers shared by encoders, decoders and objectives.

Conventions: an input is ``[N, C, *dims]`` (video ``dims = (T, H, W)``, audio ``dims = (F, M)``); a token covers
``patch_shape`` input cells and tokens are ordered row-major over the token grid. A per-token vector lists its
cells in row-major order with the channel last (``(p0, p1, ..., C)``, as in MAE/VideoMAE).
Masks are bool ``[N, L]`` with True = hidden.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _as_tuple(value: int | Sequence[int], n: int, what: str) -> tuple[int, ...]:
    """Broadcast an int to an n-tuple, or check a sequence has n positive ints."""
    out = (int(value),) * n if isinstance(value, int) else tuple(int(v) for v in value)
    if len(out) != n or any(v <= 0 for v in out):
        raise ValueError(f"{what} must be a positive int or {n} positive ints, got {value!r}")
    return out


def grid_size(dims: Sequence[int], patch_shape: Sequence[int]) -> tuple[int, ...]:
    """Token grid for input ``dims`` cut into ``patch_shape`` cells (any remainder is cropped)."""
    if len(dims) != len(patch_shape):
        raise ValueError(f"input dims {tuple(dims)} and patch shape {tuple(patch_shape)} differ in length")
    grid = tuple(int(d) // int(p) for d, p in zip(dims, patch_shape))
    if any(g == 0 for g in grid):
        raise ValueError(f"input dims {tuple(dims)} are smaller than one patch {tuple(patch_shape)}")
    return grid


def patchify(x: Tensor, patch_shape: Sequence[int]) -> Tensor:
    """``[N, C, *dims]`` -> ``[N, L, prod(patch_shape) * C]``, tokens in grid order; remainders are cropped."""
    n_sp = x.ndim - 2
    patch = _as_tuple(patch_shape, n_sp, "patch_shape") if n_sp >= 1 else ()
    if n_sp < 1:
        raise ValueError(f"patchify expects [N, C, *dims], got shape {tuple(x.shape)}")
    grid = grid_size(x.shape[2:], patch)
    n, c = x.shape[:2]
    x = x[(slice(None), slice(None)) + tuple(slice(0, g * p) for g, p in zip(grid, patch))]
    # [N, C, g0, p0, g1, p1, ...]
    shape: list[int] = [n, c]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = x.reshape(shape)
    grid_axes = [2 + 2 * i for i in range(n_sp)]
    patch_axes = [3 + 2 * i for i in range(n_sp)]
    x = x.permute(0, *grid_axes, *patch_axes, 1)
    return x.reshape(n, math.prod(grid), math.prod(patch) * c)


def unpatchify(tokens: Tensor, patch_shape: Sequence[int], grid: Sequence[int], channels: int) -> Tensor:
    """Inverse of :func:`patchify`: ``[N, L, prod(patch) * C]`` -> ``[N, C, *(grid * patch)]``."""
    patch = tuple(int(p) for p in patch_shape)
    grid = tuple(int(g) for g in grid)
    if len(patch) != len(grid):
        raise ValueError(f"patch shape {patch} and grid {grid} differ in length")
    n, length, dim = tokens.shape
    if length != math.prod(grid) or dim != math.prod(patch) * channels:
        raise ValueError(
            f"tokens of shape {tuple(tokens.shape)} do not match grid {grid}, patch {patch}, {channels} channels"
        )
    n_sp = len(grid)
    x = tokens.reshape(n, *grid, *patch, channels)
    # -> [N, C, g0, p0, g1, p1, ...]
    order = [0, 1 + 2 * n_sp]
    for i in range(n_sp):
        order += [1 + i, 1 + n_sp + i]
    x = x.permute(order)
    return x.reshape(n, channels, *(g * p for g, p in zip(grid, patch)))


def random_mask(
    n: int,
    length: int,
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Unstructured mask: bool ``[n, length]`` hiding exactly ``round(ratio * length)`` tokens per row."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    num_hidden = int(round(ratio * length))
    num_hidden = min(num_hidden, length - 1)  # always keep at least one visible token
    noise = torch.rand(n, length, generator=generator, device=generator.device if generator else device)
    ranks = noise.argsort(dim=1).argsort(dim=1)
    mask = ranks < num_hidden
    return mask.to(device) if device is not None else mask


def tube_mask(
    n: int,
    grid: Sequence[int],
    ratio: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """VideoMAE tube mask over a ``(T', H', W')`` grid: one spatial mask repeated for every temporal slice.

    Returns bool ``[n, T' * H' * W']`` in grid order, hiding ``round(ratio * H' * W')`` cells per slice.
    """
    if len(grid) < 2:
        raise ValueError(f"tube_mask needs a grid (T', ...spatial), got {tuple(grid)}")
    t, spatial = int(grid[0]), math.prod(int(g) for g in grid[1:])
    per_slice = random_mask(n, spatial, ratio, generator=generator, device=device)
    return per_slice.unsqueeze(1).expand(n, t, spatial).reshape(n, t * spatial)


def check_mask(mask: Tensor, n: int, length: int) -> int:
    """Validate a token mask (bool [n, length], same hidden count per row); return that count."""
    if mask.dtype != torch.bool or tuple(mask.shape) != (n, length):
        raise ValueError(
            f"mask must be bool [{n}, {length}] (True = hidden), got {mask.dtype} {tuple(mask.shape)}"
        )
    counts = mask.sum(dim=1)
    if n and bool((counts != counts[0]).any()):
        raise ValueError(
            f"every row of the mask must hide the same number of tokens, got counts {counts.tolist()}"
        )
    hidden = int(counts[0]) if n else 0
    if hidden >= length:
        raise ValueError(f"mask hides all {length} tokens; at least one must stay visible")
    return hidden


def visible_indices(mask: Tensor) -> Tensor:
    """Indices ``[N, L_vis]`` of the visible tokens of a mask, in grid order."""
    check_mask(mask, mask.shape[0], mask.shape[1])
    return (~mask).nonzero()[:, 1].reshape(mask.shape[0], -1)


def hidden_indices(mask: Tensor) -> Tensor:
    """Indices ``[N, L_hid]`` of the hidden tokens of a mask, in grid order."""
    check_mask(mask, mask.shape[0], mask.shape[1])
    return mask.nonzero()[:, 1].reshape(mask.shape[0], -1)


def mask_to_cells(
    mask: Tensor, grid: Sequence[int], patch_shape: Sequence[int], dims: Sequence[int]
) -> Tensor:
    """Expand a token mask ``[N, L]`` to input cells: bool ``[N, *dims]`` (cropped remainder stays visible)."""
    grid = tuple(int(g) for g in grid)
    patch = tuple(int(p) for p in patch_shape)
    n = mask.shape[0]
    cells = mask.reshape(n, *grid)
    for axis, p in enumerate(patch):
        cells = cells.repeat_interleave(p, dim=axis + 1)
    pad: list[int] = []
    for d, g, p in reversed(list(zip(dims, grid, patch))):
        pad += [0, int(d) - g * p]
    if any(pad):
        cells = F.pad(cells, pad, value=False)
    return cells


def sincos_pos_embed(grid: Sequence[int], dim: int) -> Tensor:
    """Fixed separable sin-cos position table ``[prod(grid), dim]`` (float32), rows in grid order.

    Each grid axis gets an equal, even share of the channels (sin half, cos half); leftover channels are zero.
    """
    grid = tuple(int(g) for g in grid)
    per_axis = 2 * (dim // (2 * len(grid)))
    if per_axis == 0:
        raise ValueError(f"embedding dim {dim} is too small for a {len(grid)}-D sin-cos table")
    half = per_axis // 2
    omega = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) / half))
    coords = torch.meshgrid(*(torch.arange(g, dtype=torch.float64) for g in grid), indexing="ij")
    parts = []
    for c in coords:
        angles = c.reshape(-1, 1) * omega.reshape(1, -1)
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    if table.shape[1] < dim:
        table = F.pad(table, (0, dim - table.shape[1]))
    return table.float()


def interpolate_pos_embed(pos: Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> Tensor:
    """Resize a position table ``[..., prod(src_grid), D]`` to ``dst_grid`` (bicubic in 2-D, trilinear in 3-D)."""
    src = tuple(int(g) for g in src_grid)
    dst = tuple(int(g) for g in dst_grid)
    if src == dst:
        return pos
    if len(src) != len(dst) or pos.shape[-2] != math.prod(src):
        raise ValueError(
            f"cannot resize a position table of shape {tuple(pos.shape)} from grid {src} to {dst}"
        )
    lead = pos.shape[:-2]
    d = pos.shape[-1]
    x = pos.reshape(-1, *src, d).movedim(-1, 1).float()
    mode = {1: "linear", 2: "bicubic", 3: "trilinear"}.get(len(src))
    if mode is None:
        raise ValueError(f"position tables over {len(src)}-D grids are not supported")
    x = F.interpolate(x, size=dst, mode=mode, align_corners=False)
    return x.movedim(1, -1).reshape(*lead, math.prod(dst), d).to(pos.dtype)


__all__ = [
    "grid_size",
    "patchify",
    "unpatchify",
    "random_mask",
    "tube_mask",
    "check_mask",
    "visible_indices",
    "hidden_indices",
    "mask_to_cells",
    "sincos_pos_embed",
    "interpolate_pos_embed",
]
