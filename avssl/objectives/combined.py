"""Weighted sum of named loss terms, each logged under a fixed name (``loss_<name>``, total under ``loss``)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def weighted_sum(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> tuple[Tensor, dict[str, Tensor]]:
    """``loss = sum_k weights[k] * terms[k]``; e.g. CAV-MAE: ``{"joint_mae": 1.0, "joint_contrastive": 0.01}``.

    Every term needs a weight and every weight a term (a mismatch is a configuration error, raised). Logs the
    unweighted term values (detached) as ``loss_<name>`` and the total as ``loss``.
    """
    missing = sorted(set(terms) - set(weights))
    unused = sorted(set(weights) - set(terms))
    if missing or unused:
        raise KeyError(f"loss terms and weights do not match: terms without weight {missing}, "
                       f"weights without term {unused}")
    if not terms:
        raise ValueError("weighted_sum needs at least one loss term")
    total: Tensor | None = None
    logs: dict[str, Tensor] = {}
    for name, value in terms.items():
        if value.dim() != 0:
            raise ValueError(f"loss term {name!r} must be a scalar, got shape {tuple(value.shape)}")
        contribution = float(weights[name]) * value
        total = contribution if total is None else total + contribution
        logs[f"loss_{name}"] = value.detach()
    assert total is not None
    logs["loss"] = total.detach()
    return total, logs


class CombinedLoss:
    """Holds the weights of a weighted sum; zero weights are dropped (those terms need not be computed)."""

    def __init__(self, weights: Mapping[str, float]):
        bad = {k: w for k, w in weights.items() if not float(w) >= 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0, got {bad}")
        self.weights = {k: float(w) for k, w in weights.items() if float(w) > 0}
        if not self.weights:
            raise ValueError(f"at least one loss weight must be positive, got {dict(weights)}")

    def active(self, name: str) -> bool:
        return name in self.weights

    def __call__(self, terms: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return weighted_sum(terms, self.weights)

    def __repr__(self) -> str:
        return f"CombinedLoss({self.weights})"


__all__ = ["weighted_sum", "CombinedLoss"]
