"""Projection heads into the shared audio-visual space (no normalisation inside; callers normalise)."""

from __future__ import annotations

from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Linear (``num_layers=1``) or MLP (Linear-GELU-...-Linear) map ``[..., in_dim] -> [..., out_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None, num_layers: int = 1) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1:
            raise ValueError(f"in_dim and out_dim must be positive, got {in_dim}, {out_dim}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        hidden = in_dim if hidden_dim is None else int(hidden_dim)
        if hidden < 1:
            raise ValueError(f"hidden_dim must be positive, got {hidden_dim}")
        self.in_dim, self.out_dim, self.num_layers = in_dim, out_dim, num_layers
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"ProjectionHead expects [..., {self.in_dim}], got shape {tuple(x.shape)}")
        return self.net(x)


__all__ = ["ProjectionHead"]
