"""The encoder interface every avssl encoder implements (see docs/models.md)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

MODALITIES = ("video", "audio")


class Encoder(nn.Module):
    """Base class of all encoders: one segment per row in, tokens or a pooled embedding out.

    Attributes:
        modality: "video" (input ``[N, C, T, H, W]``) or "audio" (input ``[N, 1, F, M]``).
        num_features: width D of the tokens and of the pooled embedding.
        input_shape: the per-row input shape given at construction, ``(C, T, H, W)`` or ``(1, F, M)``.
        encoder_name / encoder_kwargs: set by :func:`avssl.models.create_encoder` so that the encoder can be rebuilt.
    """

    modality: str
    num_features: int
    input_shape: tuple[int, ...]
    encoder_name: str | None = None
    encoder_kwargs: dict[str, Any]

    def __init__(self) -> None:
        super().__init__()
        self.encoder_kwargs = {}

    # --- grid -----------------------------------------------------------------------------------------
    def token_grid(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Token grid for a per-row input shape (default: the construction shape)."""
        raise NotImplementedError

    def patch_shape(self, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
        """Input cells per token, so that ``grid * patch`` equals the input size after cropping remainders."""
        raise NotImplementedError

    def num_tokens(self, input_shape: tuple[int, ...] | None = None) -> int:
        """Number of tokens L for a per-row input shape."""
        return math.prod(self.token_grid(input_shape))

    # --- forward --------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Tokens ``[N, L_vis, D]`` in grid order; ``mask`` (bool ``[N, L]``, True = hidden) drops tokens."""
        raise NotImplementedError

    def pool(self, tokens: Tensor) -> Tensor:
        """Pooled embedding ``[N, D]`` from final tokens ``[N, L, D]`` (their mean)."""
        return tokens.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Pooled embedding ``[N, D]``."""
        return self.pool(self.forward_features(x))

    # --- helpers --------------------------------------------------------------------------------------
    def _shape_of(self, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
        shape = self.input_shape if input_shape is None else tuple(int(s) for s in input_shape)
        expected = 4 if self.modality == "video" else 3
        if len(shape) != expected:
            layout = "(C, T, H, W)" if self.modality == "video" else "(1, F, M)"
            raise ValueError(f"{type(self).__name__}: input shape must be {layout} per row, got {shape}")
        return shape

    def check_input(self, x: Tensor) -> None:
        """Raise a clear ValueError when ``x`` is not a batch of this encoder's inputs."""
        layout = "[N, C, T, H, W]" if self.modality == "video" else "[N, 1, F, M]"
        ndim = 5 if self.modality == "video" else 4
        if x.ndim != ndim:
            raise ValueError(
                f"{type(self).__name__} ({self.modality}) expects {layout}, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.input_shape[0]:
            raise ValueError(
                f"{type(self).__name__} ({self.modality}) expects {self.input_shape[0]} input channel(s) in "
                f"{layout}, got shape {tuple(x.shape)}"
            )
        if not torch.is_floating_point(x):
            raise ValueError(f"{type(self).__name__} expects a floating-point input, got {x.dtype}")

    def get_config(self) -> dict[str, Any]:
        """``{"name": ..., "kwargs": ...}``: what :func:`avssl.models.create_encoder` needs to rebuild this encoder."""
        if self.encoder_name is None:
            raise ValueError(
                f"{type(self).__name__} was not built with create_encoder(); its config is unknown"
            )
        return {"name": self.encoder_name, "kwargs": dict(self.encoder_kwargs)}

    def extra_repr(self) -> str:
        return f"modality={self.modality!r}, num_features={self.num_features}, input_shape={self.input_shape}"


def select_visible(tokens: Tensor, mask: Tensor) -> Tensor:
    """Keep the visible tokens (``mask`` False) of ``[N, L, D]``, in grid order -> ``[N, L_vis, D]``."""
    n, _, d = tokens.shape
    return tokens[~mask].reshape(n, -1, d)


__all__ = ["Encoder", "MODALITIES", "select_visible"]
