"""Convolutional encoders: video ResNets from torchvision's building blocks (random init) and a small audio CNN.

Tokens are the final feature map flattened in grid order, followed by a LayerNorm. Masking is SimMIM-like: hidden
input cells are set to zero and the tokens of the visible cells come back (nothing is dropped before the trunk, so
masking saves no compute, and convolutions let visible tokens see a little of the zeroed neighbourhood).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, Conv3DNoTemporal, Conv3DSimple

from avssl.models.base import Encoder, select_visible
from avssl.models.patching import _as_tuple, check_mask, mask_to_cells
from avssl.models.registry import build_encoder, register_encoder

VIDEO_CONV_KINDS = ("3d", "2plus1d", "mc3")


class CNNEncoder(Encoder):
    """Shared logic: ``self.trunk`` maps ``[N, C, *dims]`` to a feature map ``[N, D, *grid]``."""

    trunk: nn.Module

    def _finish(self, num_features: int) -> None:
        self.num_features = num_features
        self.norm = nn.LayerNorm(num_features, eps=1e-6)
        self._grid_cache: dict[tuple[int, ...], tuple[int, ...]] = {}
        self.token_grid(self.input_shape)  # fail at construction if the default input is too small

    def token_grid(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        shape = self._shape_of(input_shape)
        if shape not in self._grid_cache:
            # shape inference on the meta device: no compute, no change to the real parameters or BN statistics
            meta = {
                k: torch.empty_like(v, device="meta")
                for k, v in list(self.trunk.named_parameters()) + list(self.trunk.named_buffers())
            }
            x = torch.empty((1, *shape), device="meta")
            was_training = self.trunk.training
            self.trunk.eval()  # the grid must not depend on the mode (BN refuses 1x1 maps in training)
            try:
                with torch.no_grad():
                    out = torch.func.functional_call(self.trunk, meta, (x,))
            except RuntimeError as err:
                raise ValueError(
                    f"{type(self).__name__}: input shape {shape} is too small for this CNN: {err}"
                ) from err
            finally:
                self.trunk.train(was_training)
            grid = tuple(int(g) for g in out.shape[2:])
            if any(g == 0 for g in grid) or any(g > d for g, d in zip(grid, shape[1:])):
                raise ValueError(
                    f"{type(self).__name__}: input shape {shape} gives an unusable feature map {grid}"
                )
            self._grid_cache[shape] = grid
        return self._grid_cache[shape]

    def patch_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        shape = self._shape_of(input_shape)
        return tuple(d // g for d, g in zip(shape[1:], self.token_grid(shape)))

    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        self.check_input(x)
        if mask is not None:
            shape = tuple(x.shape[1:])
            grid = self.token_grid(shape)
            n = x.shape[0]
            check_mask(mask, n, math.prod(grid))
            cells = mask_to_cells(mask.to(x.device), grid, self.patch_shape(shape), shape[1:])
            x = x.masked_fill(cells.unsqueeze(1), 0.0)
        fmap = self.trunk(x)
        tokens = self.norm(fmap.flatten(2).transpose(1, 2))
        if mask is not None:
            tokens = select_visible(tokens, mask.to(tokens.device))
        return tokens


def _video_stem(kind: str, in_chans: int, width: int) -> nn.Sequential:
    """torchvision's BasicStem (3d, mc3) or R2Plus1dStem (2plus1d), with a configurable width."""
    if kind == "2plus1d":
        mid = max(1, width * 45 // 64)
        return nn.Sequential(
            nn.Conv3d(in_chans, mid, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            nn.Conv3d(mid, width, (3, 1, 1), stride=(1, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
    return nn.Sequential(
        nn.Conv3d(in_chans, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
        nn.BatchNorm3d(width),
        nn.ReLU(inplace=True),
    )


def _video_layer(conv: Any, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or inplanes != planes:
        downsample = nn.Sequential(
            nn.Conv3d(inplanes, planes, 1, stride=conv.get_downsample_stride(stride), bias=False),
            nn.BatchNorm3d(planes),
        )
    layers = [BasicBlock(inplanes, planes, conv, stride, downsample)]
    layers += [BasicBlock(planes, planes, conv) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class VideoCNN(CNNEncoder):
    """Video ResNet (R3D / R(2+1)D / MC3 from torchvision's blocks, random init); input ``[N, C, T, H, W]``.

    Stage names and layouts follow torchvision's ``VideoResNet`` (``trunk.stem``, ``trunk.layer1``..``layer4``), so
    torchvision weights load after adding the ``trunk.`` prefix and dropping ``fc``.
    """

    def __init__(
        self,
        conv: str = "3d",
        num_frames: int = 16,
        img_size: int | Sequence[int] = 112,
        in_chans: int = 3,
        widths: Sequence[int] = (64, 128, 256, 512),
        layers: Sequence[int] = (2, 2, 2, 2),
        stage_strides: Sequence[int] = (1, 2, 2, 2),
        stem_pool: bool = False,
    ) -> None:
        super().__init__()
        if conv not in VIDEO_CONV_KINDS:
            raise ValueError(f"conv must be one of {VIDEO_CONV_KINDS}, got {conv!r}")
        widths = _as_tuple(widths, 4, "widths")
        layers = _as_tuple(layers, 4, "layers")
        strides = _as_tuple(stage_strides, 4, "stage_strides")
        h, w = _as_tuple(img_size, 2, "img_size")
        self.modality = "video"
        self.input_shape = (int(in_chans), int(num_frames), h, w)
        if conv == "3d":
            makers: list[Any] = [Conv3DSimple] * 4
        elif conv == "2plus1d":
            makers = [Conv2Plus1D] * 4
        else:
            makers = [Conv3DSimple] + [Conv3DNoTemporal] * 3
        stem = _video_stem(conv, int(in_chans), widths[0])
        if stem_pool:  # parameter-free, so state-dict keys are unchanged
            stem.append(nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        stages: OrderedDict[str, nn.Module] = OrderedDict(stem=stem)
        inplanes = widths[0]
        for i, (maker, planes, blocks, stride) in enumerate(zip(makers, widths, layers, strides)):
            stages[f"layer{i + 1}"] = _video_layer(maker, inplanes, planes, blocks, stride)
            inplanes = planes
        self.trunk = nn.Sequential(stages)
        for m in self.trunk.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self._finish(widths[-1])


class AudioCNN(CNNEncoder):
    """Small 2-D CNN over log-mel ``[N, 1, F, M]``: 4 stages of (stride-2 conv, BN, ReLU) x ``convs_per_stage``."""

    def __init__(
        self,
        num_frames: int = 48,
        num_mels: int = 128,
        widths: Sequence[int] = (32, 64, 128, 256),
        convs_per_stage: int = 2,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or any(w <= 0 for w in widths) or convs_per_stage < 1:
            raise ValueError(
                f"widths must be positive ints and convs_per_stage >= 1, got {widths}, {convs_per_stage}"
            )
        self.modality = "audio"
        self.input_shape = (1, int(num_frames), int(num_mels))
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        inplanes = 1
        for i, planes in enumerate(widths):
            mods: list[nn.Module] = []
            for j in range(convs_per_stage):
                mods += [
                    nn.Conv2d(inplanes, planes, 3, stride=2 if j == 0 else 1, padding=1, bias=False),
                    nn.BatchNorm2d(planes),
                    nn.ReLU(inplace=True),
                ]
                inplanes = planes
            stages[f"stage{i + 1}"] = nn.Sequential(*mods)
        self.trunk = nn.Sequential(stages)
        for m in self.trunk.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._finish(widths[-1])


@register_encoder(modality="video")
def r3d_18(**kwargs: Any) -> VideoCNN:
    """R3D-18 (torchvision layout, random init); default input 3x16x112x112, 512-d tokens."""
    return build_encoder("r3d_18", VideoCNN, dict(conv="3d"), kwargs)


@register_encoder(modality="video")
def r2plus1d_18(**kwargs: Any) -> VideoCNN:
    """R(2+1)D-18 (torchvision layout, random init); default input 3x16x112x112, 512-d tokens."""
    return build_encoder("r2plus1d_18", VideoCNN, dict(conv="2plus1d"), kwargs)


@register_encoder(modality="video")
def mc3_18(**kwargs: Any) -> VideoCNN:
    """MC3-18 (torchvision layout, random init; no temporal striding after layer1); 512-d tokens."""
    return build_encoder("mc3_18", VideoCNN, dict(conv="mc3"), kwargs)


@register_encoder(modality="video")
def r3d_tiny(**kwargs: Any) -> VideoCNN:
    """CPU demo R3D: one block per stage, widths 16-128, max-pooled stem, stride 1 in layer4 (maps /16 like
    the others, cheaper); default input 3x4x64x64, 128-d tokens."""
    defaults = dict(
        conv="3d",
        widths=(16, 32, 64, 128),
        layers=(1, 1, 1, 1),
        stage_strides=(1, 2, 2, 1),
        stem_pool=True,
        num_frames=4,
        img_size=64,
    )
    return build_encoder("r3d_tiny", VideoCNN, defaults, kwargs)


@register_encoder(modality="audio")
def cnn_audio_tiny(**kwargs: Any) -> AudioCNN:
    """CPU demo audio CNN: 4 stages of one conv, widths 16-128; default input 1x48x128, 128-d tokens."""
    return build_encoder(
        "cnn_audio_tiny", AudioCNN, dict(widths=(16, 32, 64, 128), convs_per_stage=1), kwargs
    )


@register_encoder(modality="audio")
def cnn_audio_small(**kwargs: Any) -> AudioCNN:
    """Audio CNN: 4 stages of two convs, widths 32-256; default input 1x48x128, 256-d tokens."""
    return build_encoder(
        "cnn_audio_small", AudioCNN, dict(widths=(32, 64, 128, 256), convs_per_stage=2), kwargs
    )


__all__ = ["CNNEncoder", "VideoCNN", "AudioCNN"]
