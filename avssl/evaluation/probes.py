"""Frozen-feature probes on labelled clips: a linear classifier (multinomial logistic regression) and kNN."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(features: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    if features.ndim != 2:
        raise ValueError(f"{what} features must be [N, D], got {tuple(features.shape)}")
    if labels.ndim != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(
            f"{what} labels must be [N] matching {features.shape[0]} features, got {tuple(labels.shape)}"
        )
    if features.shape[0] == 0:
        raise ValueError(f"no {what} examples")
    if bool((labels < 0).any()):
        raise ValueError(f"{what} labels must be non-negative class indices (unlabelled clips have -1)")


def knn_classify(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    *,
    k: int = 5,
    num_classes: int | None = None,
) -> torch.Tensor:
    """Predict labels of ``test_x`` by majority vote of the ``k`` most cosine-similar training examples.

    Ties between classes go to the class whose voters are more similar in total.
    """
    _check(train_x, train_y, "training")
    k = min(k, train_x.shape[0])
    n_cls = int(num_classes if num_classes is not None else int(train_y.max()) + 1)
    sim = F.normalize(test_x.double(), dim=-1) @ F.normalize(train_x.double(), dim=-1).T
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(test_x.shape[0], n_cls, dtype=torch.float64)
    votes.scatter_add_(1, train_y[top_idx], torch.ones_like(top_sim))
    weight = torch.zeros_like(votes).scatter_add_(1, train_y[top_idx], top_sim)
    # votes dominate; summed similarity (|.| <= k) only breaks ties
    return (votes * (2 * k + 1) + weight).argmax(dim=1)


def fit_linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    *,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> tuple[torch.nn.Linear, torch.Tensor, torch.Tensor]:
    """Fit an L2-regularised multinomial logistic regression on standardised features with L-BFGS.

    Returns ``(linear, mean, std)``: predict with ``linear((x - mean) / std).argmax(-1)``.
    """
    _check(train_x, train_y, "training")
    n_cls = int(num_classes if num_classes is not None else int(train_y.max()) + 1)
    x = train_x.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    linear = torch.nn.Linear(x.shape[1], n_cls).double()
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(linear(x), train_y) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return linear, mean, std


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    *,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> torch.Tensor:
    """Train a linear probe on ``(train_x, train_y)`` and return predicted labels for ``test_x``."""
    linear, mean, std = fit_linear_probe(
        train_x, train_y, num_classes=num_classes, weight_decay=weight_decay, max_iter=max_iter
    )
    with torch.no_grad():
        return linear((test_x.double() - mean) / std).argmax(dim=1)


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of equal entries."""
    if pred.shape != target.shape or pred.numel() == 0:
        raise ValueError(f"cannot compare predictions {tuple(pred.shape)} with targets {tuple(target.shape)}")
    return float((pred == target).double().mean())


def evaluate_probes(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    k: int = 5,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> dict[str, float | int]:
    """Linear-probe and kNN accuracy on a train/test split, with the majority-class baseline."""
    _check(test_x, test_y, "test")
    n_cls = int(max(int(train_y.max()), int(test_y.max())) + 1)
    lin = linear_probe(
        train_x, train_y, test_x, num_classes=n_cls, weight_decay=weight_decay, max_iter=max_iter
    )
    knn = knn_classify(train_x, train_y, test_x, k=k, num_classes=n_cls)
    majority = torch.bincount(train_y, minlength=n_cls).argmax()
    return {
        "linear_acc": accuracy(lin, test_y),
        f"knn{k}_acc": accuracy(knn, test_y),
        "majority_acc": accuracy(torch.full_like(test_y, int(majority)), test_y),
        "num_train": int(train_x.shape[0]),
        "num_test": int(test_x.shape[0]),
        "num_classes": n_cls,
    }


__all__ = ["knn_classify", "fit_linear_probe", "linear_probe", "accuracy", "evaluate_probes"]
