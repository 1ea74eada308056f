"""Per-modality transforms: video frames -> normalised clips (torchvision.transforms.v2), SpecAugment on log-mels.

Randomness comes only from an explicit ``torch.Generator`` (never the global RNG), so a sample is reproducible in
any worker. Crop/flip parameters are drawn once and applied to every frame of a segment; to give all S segments
of a clip the same view, draw them once with :meth:`VideoTransform.sample_params` and pass ``params=`` for each
segment, or call the transform on a whole clip ``[S, T, H, W, 3]`` with ``share_params=True`` (the default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

__all__ = ["CropParams", "SpecAugment", "VideoTransform", "denormalize_video"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CropParams:
    """A crop box ``[top, top + height) x [left, left + width)`` in input pixels, and whether to flip it."""

    top: int
    left: int
    height: int
    width: int
    flip: bool = False


def _rand(generator: torch.Generator | None) -> float:
    return float(torch.rand((), generator=generator, dtype=torch.float64))


def _randint(low: int, high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in ``[low, high]`` (inclusive)."""
    return int(torch.randint(low, high + 1, (), generator=generator))


class VideoTransform:
    """uint8 frames ``[T, H, W, 3]`` -> float32 ``[3, T, h, w]`` normalised (also ``[S, T, H, W, 3]`` ->
    ``[S, 3, T, h, w]``).

    ``output="uint8"`` stops before the normalisation: cropped, resized and flipped uint8 frames in the input's
    channels-last layout (``[T, h, w, 3]`` / ``[S, T, h, w, 3]``), a quarter of the bytes; :meth:`normalize`
    finishes them later, anywhere (the datamodule does it on the training device, ``data.normalise_video``), with
    the same result as ``output="float"``.

    - eval (``train=False``): resize (aspect kept) until ``size`` just fits, centre crop ``size`` (a square
      ``size`` means: short side to ``size``);
    - train: random resized crop (area fraction ``scale``, aspect ``ratio``, as torchvision's RandomResizedCrop)
      then horizontal flip with probability ``hflip_p``.
    """

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        train: bool = False,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip_p: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        share_params: bool = True,
        output: str = "float",
    ):
        if output not in ("float", "uint8"):
            raise ValueError(f"VideoTransform: output must be 'float' or 'uint8', got {output!r}")
        self.output = output
        self.size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if min(self.size) < 1:
            raise ValueError(f"VideoTransform: size must be positive, got {size}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"VideoTransform: bad scale={tuple(scale)} or ratio={tuple(ratio)}")
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"VideoTransform: hflip_p must lie in [0, 1], got {hflip_p}")
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"VideoTransform: mean/std need 3 values (std > 0), got {mean}, {std}")
        self.train = train
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip_p = float(hflip_p)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.share_params = share_params
        self._affines: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getstate__(self) -> dict[str, object]:  # the cached constants (maybe on a GPU) stay in this process
        return {**self.__dict__, "_affines": {}}

    def __repr__(self) -> str:
        return (
            f"VideoTransform(size={self.size}, train={self.train}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip_p={self.hflip_p}, share_params={self.share_params}, output={self.output!r})"
        )

    def sample_params(self, height: int, width: int, generator: torch.Generator | None = None) -> CropParams:
        """Crop box and flip for an ``height x width`` input (deterministic given ``generator``)."""
        if not self.train:
            return self._center_params(height, width)
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        flip = False
        # fixed area and aspect (the default [1, 1] / [1, 1]): every attempt draws the same box, so one that does
        # not fit means none will (a non-square input), and the 9 further attempts' 18 draws are skipped
        fixed = self.scale[0] == self.scale[1] and self.ratio[0] == self.ratio[1]
        for _ in range(1 if fixed else 10):
            target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * _rand(generator))
            aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * _rand(generator))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top, left = _randint(0, height - h, generator), _randint(0, width - w, generator)
                break
        else:  # fall back to a centre crop clamped to the aspect range (as torchvision does)
            in_ratio = width / height
            if in_ratio < self.ratio[0]:
                w, h = width, int(round(width / self.ratio[0]))
            elif in_ratio > self.ratio[1]:
                h, w = height, int(round(height * self.ratio[1]))
            else:
                w, h = width, height
            top, left = (height - h) // 2, (width - w) // 2
        if self.hflip_p > 0:
            flip = _rand(generator) < self.hflip_p
        return CropParams(top, left, h, w, flip)

    def _center_params(self, height: int, width: int) -> CropParams:
        """Eval view: the largest centred box with the output's aspect (resize so the output just fits, then
        centre crop; for a square output: short side to ``size``), in input pixels."""
        out_h, out_w = self.size
        s = max(out_h / height, out_w / width)
        h = min(height, int(round(out_h / s)))
        w = min(width, int(round(out_w / s)))
        return CropParams((height - h) // 2, (width - w) // 2, h, w, False)

    def _apply(self, frames: torch.Tensor, p: CropParams) -> torch.Tensor:
        """uint8 ``[S, T, H, W, 3]`` -> float32 ``[S, 3, T, h, w]`` with one box for every frame: the crop is a view;
        a box of another size than the output is resized once for all S x T frames (channels-last, torchvision's
        native uint8 kernel), none at all when it already has the output size; the flip is on uint8; then one pass
        to float with the normalisation folded into a scale and a shift (:meth:`normalize`), or, with
        ``output="uint8"``, one contiguous uint8 copy ``[S, T, h, w, 3]``."""
        return self._finish_crop(frames[:, :, p.top : p.top + p.height, p.left : p.left + p.width], p)

    def _finish_crop(self, x: torch.Tensor, p: CropParams, out: torch.Tensor | None = None) -> torch.Tensor:
        """Cropped uint8 ``[S, T, h', w', 3]`` (a view or a copy) -> the output (see :meth:`_apply`), written into
        ``out`` when given."""
        s, t = int(x.shape[0]), int(x.shape[1])
        if (p.height, p.width) != self.size:
            y = x.reshape(s * t, p.height, p.width, 3).permute(0, 3, 1, 2)  # [N, 3, h, w], channels-last
            y = TF.resize(y, list(self.size), interpolation=InterpolationMode.BILINEAR, antialias=True)
            x = y.permute(0, 2, 3, 1).reshape(s, t, *self.size, 3)
        if p.flip:
            x = x.flip(-2)
        if self.output == "uint8":
            return x.contiguous() if out is None else out.copy_(x)
        return self.normalize(x, out=out)

    def output_shape(self, num_segments: int, num_frames: int) -> tuple[int, ...]:
        """The shape of one clip's output: ``[S, 3, T, h, w]`` (float) or ``[S, T, h, w, 3]`` (``output="uint8"``)."""
        h, w = self.size
        if self.output == "uint8":
            return (num_segments, num_frames, h, w, 3)
        return (num_segments, 3, num_frames, h, w)

    @property
    def output_dtype(self) -> torch.dtype:
        return torch.uint8 if self.output == "uint8" else torch.float32

    def apply_images(self, images: Sequence[torch.Tensor], pos: torch.Tensor, params: CropParams,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """The clip ``self(frames, params=params)`` gives for ``frames[s, t] = images[pos[s, t]]`` (decoded uint8
        ``[H, W, 3]`` images, all one size; ``pos`` ``[S, T]``), without stacking the whole frames first: only
        each image's crop is copied, and with ``out`` (e.g. a clip's slot of a batch tensor, shaped
        :meth:`output_shape`) the result is written there, so an uncropped, unflipped clip costs one copy. The
        values are identical to the transform's."""
        s, t = (int(n) for n in pos.shape)
        if not images:
            raise ValueError("VideoTransform.apply_images: no images")
        height, width = int(images[0].shape[0]), int(images[0].shape[1])
        for im in images:
            if im.dtype != torch.uint8 or im.dim() != 3 or tuple(im.shape) != (height, width, 3):
                raise ValueError(f"VideoTransform.apply_images expects uint8 [H, W, 3] images of one size, got "
                                 f"{im.dtype} {tuple(im.shape)} beside {(height, width, 3)}")
        p = params
        if p.top + p.height > height or p.left + p.width > width:
            raise ValueError(f"VideoTransform: crop {p} does not fit frames of {height}x{width}")
        if out is not None and (tuple(out.shape) != self.output_shape(s, t) or out.dtype != self.output_dtype):
            raise ValueError(f"VideoTransform.apply_images: out is {out.dtype} {tuple(out.shape)}, the clip is "
                             f"{self.output_dtype} {self.output_shape(s, t)}")
        crops = [images[i][p.top : p.top + p.height, p.left : p.left + p.width] for i in pos.reshape(-1).tolist()]
        if (p.height, p.width) != self.size:  # resized: the flip comes after the resize (:meth:`_finish_crop`)
            return self._finish_crop(torch.stack(crops).view(s, t, p.height, p.width, 3), p, out)
        direct = out is not None and out.is_contiguous() and self.output == "uint8"
        dst = out.view(s * t, p.height, p.width, 3) if direct else torch.empty(  # type: ignore[union-attr]
            (s * t, p.height, p.width, 3), dtype=torch.uint8)
        if p.flip:  # one frame at a time, so each flipped frame is copied while it is still in the cache
            for j, crop in enumerate(crops):
                dst[j].copy_(crop.flip(1))
        else:
            torch.stack(crops, out=dst)
        if direct:
            return out  # type: ignore[return-value]
        x = dst.view(s, t, p.height, p.width, 3)
        if self.output == "uint8":
            return x if out is None else out.copy_(x)
        return self.normalize(x, out=out)

    def normalize(self, frames: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 ``[..., T, h, w, 3]`` (what ``output="uint8"`` gives, batched or not) -> float32
        ``[..., 3, T, h, w]``: ``(x / 255 - mean) / std`` in one pass, on the frames' device (into ``out``, a
        float32 tensor of that shape, when given)."""
        if frames.dtype != torch.uint8 or frames.dim() < 4 or frames.shape[-1] != 3:
            raise ValueError(f"VideoTransform.normalize expects uint8 [..., T, h, w, 3], got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        lead = frames.shape[:-4]
        x = frames.reshape(-1, *frames.shape[-4:])  # [N, T, h, w, 3]
        scale, shift = self._affine(x.device)
        xv = x.permute(0, 4, 1, 2, 3)  # [N, 3, T, h, w], a view
        if out is None:
            dst = torch.empty(xv.shape, dtype=torch.float32, device=x.device)
        else:
            want = (*lead, *xv.shape[1:])
            if tuple(out.shape) != tuple(want) or out.dtype != torch.float32 or not out.is_contiguous():
                raise ValueError(f"VideoTransform.normalize: out must be contiguous float32 {tuple(want)}, got "
                                 f"{out.dtype} {tuple(out.shape)}")
            dst = out.view(xv.shape)
        # the strided uint8 -> float copy first, then the affine in place on contiguous floats: the same values as
        # one mixed-dtype mul from the strided view, for less CPU (benchmarks/ab_normalize.py, docs/benchmarks.md)
        dst.copy_(xv)
        dst.mul_(scale).add_(shift)
        return dst.reshape(*lead, *dst.shape[1:]) if out is None else out

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x / 255 - mean) / std`` as ``x * scale + shift``, per channel, shaped ``[1, 3, 1, 1, 1]``."""
        key = str(device)
        if key not in self._affines:
            scale = [1.0 / (255.0 * sd) for sd in self.std]
            shift = [-m / sd for m, sd in zip(self.mean, self.std)]
            self._affines[key] = (torch.tensor(scale, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1),
                                  torch.tensor(shift, dtype=torch.float32, device=device).view(1, 3, 1, 1, 1))
        return self._affines[key]

    def __call__(
        self,
        frames: torch.Tensor,
        params: CropParams | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
            raise TypeError(
                f"VideoTransform expects uint8 frames [T, H, W, 3], got {getattr(frames, 'dtype', frames)}"
            )
        if frames.dim() not in (4, 5) or frames.shape[-1] != 3:
            raise ValueError(
                f"VideoTransform expects frames [T, H, W, 3] or [S, T, H, W, 3], got {tuple(frames.shape)}"
            )
        height, width = int(frames.shape[-3]), int(frames.shape[-2])
        if params is not None and (params.top + params.height > height or params.left + params.width > width):
            raise ValueError(f"VideoTransform: crop {params} does not fit frames of {height}x{width}")
        if frames.dim() == 4:
            return self._apply(frames[None], params or self.sample_params(height, width, generator))[0]
        if params is None and self.share_params:
            params = self.sample_params(height, width, generator)
        if params is not None:
            return self._apply(frames, params)
        return torch.cat([self._apply(frames[i : i + 1], self.sample_params(height, width, generator))
                          for i in range(frames.shape[0])])


def denormalize_video(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """Undo the normalisation of ``[..., 3, T, H, W]`` video: values back in [0, 1] (not clamped)."""
    if x.dim() < 4 or x.shape[-4] != 3:
        raise ValueError(f"denormalize_video expects [..., 3, T, H, W], got {tuple(x.shape)}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1, 1)
    return x * s + m


class SpecAugment:
    """Frequency and time masking on log-mels ``[..., F, M]`` (F frames, M mel bins).

    Each of the leading items gets ``num_masks`` time masks of width ``U{0..time_mask}`` frames and ``num_masks``
    frequency masks of width ``U{0..freq_mask}`` bins, placed uniformly; masked cells are set to ``fill`` (0 is the
    mean of normalised features). Identity when ``num_masks == 0`` or both widths are 0. Returns a new tensor.
    """

    def __init__(self, freq_mask: int = 0, time_mask: int = 0, num_masks: int = 1, fill: float = 0.0):
        if freq_mask < 0 or time_mask < 0 or num_masks < 0:
            raise ValueError(
                f"SpecAugment: freq_mask, time_mask, num_masks must be >= 0, got {freq_mask}, {time_mask}, {num_masks}"
            )
        self.freq_mask, self.time_mask, self.num_masks, self.fill = freq_mask, time_mask, num_masks, fill

    @property
    def enabled(self) -> bool:
        return self.num_masks > 0 and (self.freq_mask > 0 or self.time_mask > 0)

    def __repr__(self) -> str:
        return (
            f"SpecAugment(freq_mask={self.freq_mask}, time_mask={self.time_mask}, num_masks={self.num_masks})"
        )

    def _masks(self, n: int, size: int, max_width: int, generator: torch.Generator | None) -> torch.Tensor:
        """bool [n, size]: union of ``num_masks`` random bands per row."""
        mask = torch.zeros(n, size, dtype=torch.bool)
        if max_width == 0 or size == 0:
            return mask
        max_width = min(max_width, size)
        pos = torch.arange(size)
        for _ in range(self.num_masks):
            width = torch.randint(0, max_width + 1, (n, 1), generator=generator)
            start = (torch.rand((n, 1), generator=generator, dtype=torch.float64) * (size - width + 1)).long()
            mask |= (pos >= start) & (pos < start + width)
        return mask

    def __call__(self, spec: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if spec.dim() < 2:
            raise ValueError(f"SpecAugment expects [..., frames, mels], got {tuple(spec.shape)}")
        if not self.enabled:
            return spec
        frames, mels = spec.shape[-2], spec.shape[-1]
        flat = spec.reshape(-1, frames, mels)
        n = flat.shape[0]
        t_mask = self._masks(n, frames, self.time_mask, generator).to(spec.device)
        f_mask = self._masks(n, mels, self.freq_mask, generator).to(spec.device)
        full = t_mask[:, :, None] | f_mask[:, None, :]
        return flat.masked_fill(full, self.fill).reshape(spec.shape)
