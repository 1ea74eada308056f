"""A fixed picture correction applied when frames are read (the manifest's optional ``orient`` column).

``avssl-prep`` normally bakes rotation and flips into the normalised media. With ``normalise.enabled=false`` the
manifest points at the untouched source files, and the configured correction (SAYCam: 180 degrees) travels in the
``orient`` column instead; every reader of manifest rows (datasets, shard writer, evaluation) applies it on top of
the stream's own display rotation.

Text form: ``""`` (nothing), ``"180"``, ``"90+hflip"``, ``"0+vflip"``, ... The rotation is counter-clockwise in
degrees and is applied first, then the horizontal flip, then the vertical flip, the same order as
``avssl.data_tools.normalise``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ORIENT_COLUMN", "Orientation", "parse_orient", "row_orient"]

ORIENT_COLUMN = "orient"  # manifest metadata column


@dataclass(frozen=True)
class Orientation:
    rotate: int = 0  # counter-clockwise degrees: 0, 90, 180 or 270
    hflip: bool = False
    vflip: bool = False

    def __post_init__(self) -> None:
        if self.rotate not in (0, 90, 180, 270):
            raise ValueError(f"orient: rotation must be 0, 90, 180 or 270 degrees, got {self.rotate}")

    @property
    def identity(self) -> bool:
        return self.rotate == 0 and not self.hflip and not self.vflip

    @property
    def swaps_axes(self) -> bool:
        """True when the picture's width and height trade places (90 or 270 degrees)."""
        return self.rotate in (90, 270)

    def __str__(self) -> str:
        if self.identity:
            return ""
        return "+".join([str(self.rotate)] + (["hflip"] if self.hflip else []) + (["vflip"] if self.vflip else []))

    def apply(self, frames: torch.Tensor) -> torch.Tensor:
        """Correct frames laid out ``[..., H, W, C]`` (uint8 or float); returns a contiguous tensor."""
        if self.identity:
            return frames
        h, w = frames.dim() - 3, frames.dim() - 2
        x = torch.rot90(frames, k=self.rotate // 90, dims=(h, w)) if self.rotate else frames
        if self.hflip:
            x = torch.flip(x, dims=(w,))
        if self.vflip:
            x = torch.flip(x, dims=(h,))
        return x.contiguous()


def parse_orient(value: str | int | Orientation | None) -> Orientation:
    """``"180"``, ``"90+hflip"``, ``180``, ``None``/``""`` (identity) or an :class:`Orientation`."""
    if isinstance(value, Orientation):
        return value
    if value is None:
        return Orientation()
    if isinstance(value, int) and not isinstance(value, bool):
        return Orientation(int(value) % 360)
    text = str(value).strip().lower()
    if text in ("", "none", "0"):
        return Orientation()
    rotate, hflip, vflip = 0, False, False
    for i, part in enumerate(p.strip() for p in text.split("+")):
        if part == "hflip":
            hflip = True
        elif part == "vflip":
            vflip = True
        elif i == 0:
            try:
                rotate = int(part) % 360
            except ValueError:
                raise ValueError(f"orient {value!r}: expected e.g. '180' or '90+hflip'") from None
        else:
            raise ValueError(f"orient {value!r}: unknown part {part!r} (expected hflip or vflip)")
    return Orientation(rotate, hflip, vflip)


def row_orient(row: object) -> Orientation:
    """The correction of a manifest row (its ``orient`` column; identity when absent)."""
    meta = getattr(row, "meta", None) or {}
    try:
        return parse_orient(meta.get(ORIENT_COLUMN))
    except ValueError as e:
        raise ValueError(f"{getattr(row, 'path', '?')}: {e}") from None
