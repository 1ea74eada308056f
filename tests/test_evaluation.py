"""Evaluation metrics and probes on hand-built embeddings with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from avssl.evaluation.metrics import (
    cross_modal_retrieval,
    match_ranks,
    offset_classification,
    offset_grid,
    recall_at_k,
    roc_auc,
)
from avssl.evaluation.probes import evaluate_probes, knn_classify, linear_probe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_offset_grid_default_is_synchformer_21_classes() -> None:
    grid = offset_grid()
    assert len(grid) == 21
    assert grid[0] == -2.0 and grid[10] == 0.0 and grid[-1] == 2.0
    assert grid[1] == pytest.approx(-1.8)
    with pytest.raises(ValueError, match="whole number"):
        offset_grid(-1.0, 1.0, 0.3)


def test_match_ranks_and_recall_known_answers() -> None:
    # row 0: correct item best (rank 0); row 1: one item above (rank 1); row 2: two above (rank 2)
    sim = torch.tensor([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.7, 0.6, 0.3]])
    assert match_ranks(sim).tolist() == [0, 1, 2]
    r = recall_at_k(sim, ks=(1, 2, 3))
    assert r == {"R@1": pytest.approx(1 / 3), "R@2": pytest.approx(2 / 3), "R@3": pytest.approx(1.0)}


def test_ties_count_against_the_query() -> None:
    sim = torch.tensor([[0.5, 0.5], [0.0, 1.0]])
    assert match_ranks(sim).tolist() == [1, 0]


def test_cross_modal_retrieval_permuted_pairs() -> None:
    # video i is identical to audio perm[i]; so a2v R@1 is the share of fixed points of the permutation
    torch.manual_seed(0)
    n, d = 12, 64
    audio = torch.randn(n, d)
    perm = torch.arange(n)
    perm[[0, 1, 2]] = torch.tensor([1, 2, 0])  # 3 of 12 items mismatched
    video = audio[perm].clone()
    out = cross_modal_retrieval(audio, video, ks=(1, 5, 10))
    assert out["num_items"] == n
    assert out["a2v_R@1"] == pytest.approx(9 / 12)
    assert out["v2a_R@1"] == pytest.approx(9 / 12)
    assert out["a2v_R@10"] >= out["a2v_R@5"] >= out["a2v_R@1"]
    perfect = cross_modal_retrieval(audio, audio.clone() * 3.0)  # scale does not matter (cosine)
    assert perfect["a2v_R@1"] == 1.0 and perfect["v2a_R@1"] == 1.0 and perfect["a2v_median_rank"] == 1.0


def test_retrieval_is_asymmetric_when_it_should_be() -> None:
    # audio 0 and 1 both point at video 0: a2v gets item 0 right; v2a: video 0's best audio is tied (0 and 1)
    audio = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    video = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = cross_modal_retrieval(audio, video, ks=(1,))
    assert out["a2v_R@1"] == pytest.approx(0.5)  # audio 1 -> video 0 (wrong)
    assert out["v2a_R@1"] == pytest.approx(
        0.0
    )  # video 0: tie counts against; video 1: both audio score 0 -> tie


def test_roc_auc_known_values() -> None:
    assert roc_auc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1])) == 1.0
    assert roc_auc(torch.tensor([0.9, 0.8, 0.2, 0.1]), torch.tensor([0, 0, 1, 1])) == 0.0
    # positives {0.4, 0.8}, negatives {0.2, 0.6}: pairs won = (0.4>0.2) + (0.8>0.2) + (0.8>0.6) = 3 of 4
    assert roc_auc(torch.tensor([0.4, 0.8, 0.2, 0.6]), torch.tensor([1, 1, 0, 0])) == pytest.approx(0.75)
    # all tied -> 0.5
    assert roc_auc(torch.ones(6), torch.tensor([1, 0, 1, 0, 0, 0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positives and negatives"):
        roc_auc(torch.ones(3), torch.ones(3))


def test_offset_classification_known_answers() -> None:
    offsets = offset_grid()  # 21 offsets, index 10 is 0 s
    k = len(offsets)
    sim = torch.zeros(4, k)
    sim[0, 10] = 1.0  # peak at 0 s: correct
    sim[1, 11] = 1.0  # peak at +0.2 s: within one step
    sim[2, 0] = 1.0  # peak at -2 s: wrong
    sim[3, 9] = 1.0  # peak at -0.2 s: within one step
    sim[3, 10] = 0.5
    out = offset_classification(sim, offsets)
    assert out["acc"] == pytest.approx(0.25)
    assert out["acc_within_1"] == pytest.approx(0.75)
    assert out["mean_abs_error_s"] == pytest.approx((0 + 0.2 + 2.0 + 0.2) / 4)
    assert out["chance_acc"] == pytest.approx(1 / 21)
    # AUC: positives are column 10: values 1, 0, 0, 0.5; negatives: 80 values, 3 of them 1.0 and the rest 0
    pos = torch.tensor([1.0, 0.0, 0.0, 0.5])
    wins = 0.0
    neg = torch.cat([sim[:, :10].flatten(), sim[:, 11:].flatten()])
    for p in pos:
        wins += float((p > neg).sum()) + 0.5 * float((p == neg).sum())
    assert out["auc_sync"] == pytest.approx(wins / (4 * 80))


def test_offset_classification_with_true_offsets() -> None:
    offsets = offset_grid(-1.0, 1.0, 0.5)  # [-1, -0.5, 0, 0.5, 1]
    sim = torch.tensor([[0, 0, 0, 1.0, 0], [1.0, 0, 0, 0, 0]])
    out = offset_classification(sim, offsets, true_offsets=[0.5, -0.5])
    assert out["acc"] == pytest.approx(0.5) and out["acc_within_1"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="on the offset grid"):
        offset_classification(sim, offsets, true_offsets=[0.3, 0.0])


def _clusters(
    n_per: int, centers: torch.Tensor, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c, center in enumerate(centers):
        xs.append(center + noise * torch.randn(n_per, centers.shape[1], generator=g))
        ys.append(torch.full((n_per,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def test_probes_on_separable_and_random_data() -> None:
    centers = torch.eye(4, 16) * 5.0
    tx, ty = _clusters(20, centers, 0.5, seed=0)
    ex, ey = _clusters(10, centers, 0.5, seed=1)
    out = evaluate_probes(tx, ty, ex, ey, k=5)
    assert out["linear_acc"] == 1.0 and out["knn5_acc"] == 1.0
    assert out["majority_acc"] == pytest.approx(0.25)
    assert (out["num_train"], out["num_test"], out["num_classes"]) == (80, 40, 4)
    # labels unrelated to the features: no better than chance by a wide margin
    g = torch.Generator().manual_seed(3)
    rx, ry = torch.randn(200, 16, generator=g), torch.randint(0, 4, (200,), generator=g)
    qx, qy = torch.randn(400, 16, generator=g), torch.randint(0, 4, (400,), generator=g)
    rand = evaluate_probes(rx, ry, qx, qy, k=5)
    assert rand["linear_acc"] < 0.4 and rand["knn5_acc"] < 0.4


def test_knn_vote_and_linear_probe_needs_a_linear_boundary() -> None:
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 0.8]])
    train_y = torch.tensor([0, 0, 1, 1, 1])
    pred = knn_classify(train_x, train_y, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), k=3)
    assert pred.tolist() == [0, 1]
    # XOR is not linearly separable: a linear probe cannot exceed 3/4 on its four corners
    x = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]).repeat(5, 1)
    y = torch.tensor([0, 0, 1, 1]).repeat(5)
    acc = float((linear_probe(x, y, x) == y).double().mean())
    assert acc <= 0.75 + 1e-9
    assert not math.isnan(acc)


def test_probe_input_errors() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        knn_classify(torch.randn(3, 2), torch.tensor([0, -1, 1]), torch.randn(1, 2))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        linear_probe(torch.randn(3), torch.tensor([0, 1, 1]), torch.randn(1, 2))
