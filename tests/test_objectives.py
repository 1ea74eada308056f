"""Losses and metrics on hand-built tensors with hand-computed answers."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avssl.objectives import (
    CombinedLoss,
    LearnableTemperature,
    SyncContrastive,
    gather_with_grad,
    masked_mse,
    negatives_mask,
    normalize_patches,
    recon_baseline,
    retrieval_top1,
    sync_acc,
    sync_infonce,
    weighted_sum,
)

# Two clips x two segments, D=2 (rows in flattened order: clip0/seg0, clip0/seg1, clip1/seg0, clip1/seg1).
A = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, -0.6]]).reshape(2, 2, 2)
V = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [1.0, 0.0]]).reshape(2, 2, 2)
# a.v / 0.5, worked out by hand:
LOGITS = [[2.0, 1.2, 0.0, 2.0], [0.0, 1.6, 2.0, 0.0], [1.2, 2.0, 1.6, 1.2], [1.6, 0.0, -1.2, 1.6]]


def _ce(row: list[float], target: int, keep: list[int]) -> float:
    return -row[target] + math.log(sum(math.exp(row[j]) for j in keep))


def _by_hand(keep) -> float:
    cols = [[LOGITS[i][j] for i in range(4)] for j in range(4)]
    a2v = sum(_ce(LOGITS[i], i, keep(i)) for i in range(4)) / 4
    v2a = sum(_ce(cols[j], j, keep(j)) for j in range(4)) / 4
    return (a2v + v2a) / 2


def test_infonce_all_matches_hand_computation():
    loss, logs = sync_infonce(A, V, 0.5, "all")
    # row 0: -2 + log(e^2 + e^1.2 + e^0 + e^2) etc.; the mean of both directions is 1.0531925...
    assert loss.item() == pytest.approx(1.053192530, abs=1e-6)
    assert loss.item() == pytest.approx(_by_hand(lambda i: [0, 1, 2, 3]), abs=1e-6)
    assert logs["loss_a2v"].item() == pytest.approx(1.043215981, abs=1e-6)
    assert logs["loss_v2a"].item() == pytest.approx(1.063169079, abs=1e-6)
    assert logs["num_negatives"].item() == 3


def test_infonce_cross_and_within_video_match_hand_computation():
    cross, logs = sync_infonce(A, V, 0.5, "cross_video")
    assert cross.item() == pytest.approx(0.926767263, abs=1e-6)
    assert cross.item() == pytest.approx(_by_hand(lambda i: [j for j in range(4) if j == i or j // 2 != i // 2]))
    assert logs["num_negatives"].item() == 2
    within, logs = sync_infonce(A, V, 0.5, "within_video")
    assert within.item() == pytest.approx(0.292380103, abs=1e-6)
    assert within.item() == pytest.approx(_by_hand(lambda i: [j for j in range(4) if j // 2 == i // 2]))
    assert logs["num_negatives"].item() == 1


def test_negatives_masks_are_exact():
    t, f = True, False
    assert negatives_mask(2, 2, "all").all()
    assert negatives_mask(2, 2, "cross_video").tolist() == [
        [t, f, t, t], [f, t, t, t], [t, t, t, f], [t, t, f, t]]
    assert negatives_mask(2, 2, "within_video").tolist() == [
        [t, t, f, f], [t, t, f, f], [f, f, t, t], [f, f, t, t]]
    with pytest.raises(ValueError, match="unknown negatives"):
        negatives_mask(2, 2, "nope")


def test_cross_video_excludes_other_clips_of_the_same_video():
    t, f = True, False
    ids = torch.tensor([7, 7, 3])  # clips 0 and 1 are two clips of one video
    keep = negatives_mask(3, 2, "cross_video", video_ids=ids)
    assert keep.tolist() == [
        [t, f, f, f, t, t], [f, t, f, f, t, t], [f, f, t, f, t, t], [f, f, f, t, t, t],
        [t, t, t, t, t, f], [t, t, t, t, f, t]]
    assert torch.equal(negatives_mask(3, 2, "cross_video"), negatives_mask(3, 2, "cross_video",
                                                                            video_ids=torch.arange(3)))
    assert torch.equal(negatives_mask(3, 2, "within_video", video_ids=ids), negatives_mask(3, 2, "within_video"))
    gen = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(3, 2, 4, generator=gen), dim=-1)
    v = F.normalize(torch.randn(3, 2, 4, generator=gen), dim=-1)
    loss, logs = sync_infonce(a, v, 0.2, "cross_video", video_ids=ids)
    z = (a.reshape(6, 4) @ v.reshape(6, 4).t() / 0.2).masked_fill(~keep, float("-inf"))
    target = torch.arange(6)
    want = 0.5 * (F.cross_entropy(z, target) + F.cross_entropy(z.t(), target))
    assert loss.item() == pytest.approx(want.item(), abs=1e-6)
    assert loss.item() != pytest.approx(sync_infonce(a, v, 0.2, "cross_video")[0].item(), abs=1e-3)
    assert logs["num_negatives"].item() == pytest.approx((2 + 2 + 2 + 2 + 4 + 4) / 6)  # per positive, averaged
    with pytest.raises(ValueError, match="video_ids"):
        sync_infonce(a, v, 0.2, "cross_video", video_ids=torch.tensor([0, 1]))


@pytest.mark.parametrize("negatives", ["all", "cross_video", "within_video"])
def test_local_loss_gradients_equal_full_loss(negatives: str):
    """open_clip's local loss, two ranks simulated in one process: rank r computes only the rows of its clips
    against the gathered columns. all_gather's backward sums every rank's gradient into the owner of each
    embedding and DDP averages over ranks, so training follows (1/W) sum_r grad L_r: exactly the full loss's
    gradient (and the mean of the ranks' losses is the full loss)."""
    world, per = 2, 3
    gen = torch.Generator().manual_seed(4)
    a = F.normalize(torch.randn(world * per, 2, 8, generator=gen), dim=-1)
    v = F.normalize(torch.randn(world * per, 2, 8, generator=gen), dim=-1)
    ids = torch.tensor([0, 0, 1, 2, 2, 3])  # a video split over both ranks' batches
    af, vf = a.clone().requires_grad_(True), v.clone().requires_grad_(True)
    full, _ = sync_infonce(af, vf, 0.1, negatives, video_ids=ids)
    full.backward()
    al, vl = a.clone().requires_grad_(True), v.clone().requires_grad_(True)
    local = [sync_infonce(al, vl, 0.1, negatives, video_ids=ids, local_clips=slice(r * per, (r + 1) * per))[0]
             for r in range(world)]
    assert local[0].item() != pytest.approx(local[1].item(), abs=1e-4)  # each rank's own rows
    (sum(local) / world).backward()
    assert (sum(local) / world).item() == pytest.approx(full.item(), abs=1e-6)
    torch.testing.assert_close(al.grad, af.grad)
    torch.testing.assert_close(vl.grad, vf.grad)
    with pytest.raises(ValueError, match="local_clips"):
        sync_infonce(a, v, 0.1, negatives, local_clips=slice(4, 8))


def test_masked_out_pairs_do_not_enter_the_loss():
    gen = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(3, 4, 8, generator=gen), dim=-1)
    v = F.normalize(torch.randn(3, 4, 8, generator=gen), dim=-1)
    # within_video = the mean of each clip's own "all" loss: other clips never enter
    within = sync_infonce(a, v, 0.1, "within_video")[0]
    per_clip = torch.stack([sync_infonce(a[i:i + 1], v[i:i + 1], 0.1, "all")[0] for i in range(3)]).mean()
    assert within.item() == pytest.approx(per_clip.item(), abs=1e-5)
    # cross_video: the logits of same-clip pairs (other than the positive) get exactly zero gradient
    logits = (a.reshape(12, 8) @ v.reshape(12, 8).t()).requires_grad_(True)
    keep = negatives_mask(3, 4, "cross_video")
    z = logits.masked_fill(~keep, float("-inf")) / 0.1
    F.cross_entropy(z, torch.arange(12)).backward()
    assert torch.all(logits.grad[~keep] == 0) and torch.all(logits.grad[keep] != 0)


def test_no_negatives_raise_clear_errors():
    one_clip = A[:1]
    with pytest.raises(ValueError, match="no negatives"):
        sync_infonce(one_clip, V[:1], 0.07, "cross_video")
    with pytest.raises(ValueError, match="no negatives"):
        sync_infonce(A[:, :1], V[:, :1], 0.07, "within_video")
    with pytest.raises(ValueError, match="differ in shape"):
        sync_infonce(A, V[:1], 0.07)
    with pytest.raises(ValueError, match="temperature must be positive"):
        sync_infonce(A, V, 0.0)


def test_temperature_is_clamped_and_validated():
    t = LearnableTemperature(init=0.07, min=0.001, max=0.5)
    assert t().item() == pytest.approx(0.07)
    with torch.no_grad():
        t.log_temperature.fill_(math.log(10.0))
    t.clamp_()  # in place, after an optimiser step
    assert t().item() == pytest.approx(0.5) and t.log_temperature.item() == pytest.approx(math.log(0.5))
    with torch.no_grad():
        t.log_temperature.fill_(math.log(1e-6))
    t.clamp_()
    assert t().item() == pytest.approx(0.001)
    fixed = LearnableTemperature(0.05, learnable=False)
    assert list(fixed.parameters()) == [] and fixed().item() == pytest.approx(0.05)
    with pytest.raises(ValueError, match="outside"):
        LearnableTemperature(init=0.9)
    with pytest.raises(ValueError, match="bounds"):
        LearnableTemperature(init=0.1, min=0.2, max=0.1)


def test_temperature_at_a_bound_keeps_its_gradient():
    """Clamping in forward froze the temperature: once an optimiser step took the parameter past a bound, its
    gradient was 0 for good. The parameter is clamped in place after the step (CLIP, Synchformer) and forward
    uses it as is, so a loss that wants the temperature back inside moves it."""
    from avssl.objectives import clamp_temperatures

    model = nn.Module()
    model.temp = LearnableTemperature(init=0.4, min=0.001, max=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=10.0)
    model.temp().neg().backward()  # wants a higher temperature: this step overshoots the bound
    opt.step()
    opt.zero_grad()
    clamp_temperatures(model)
    assert model.temp.log_temperature.item() == pytest.approx(math.log(0.5))
    model.temp().backward()  # now wants a lower one
    grad = model.temp.log_temperature.grad
    assert grad is not None and grad.item() == pytest.approx(0.5)  # d exp(log t) / d log t = t
    opt.step()
    clamp_temperatures(model)
    assert model.temp().item() < 0.5  # moved back inside
    # an old checkpoint whose parameter lies past a bound (it was clamped on read) loads clamped
    state = {"log_temperature": torch.tensor(math.log(3.0))}
    fresh = LearnableTemperature(init=0.07, min=0.001, max=0.5)
    fresh.load_state_dict(state)
    assert fresh().item() == pytest.approx(0.5)


def test_sync_contrastive_learns_temperature_and_follows_curriculum():
    module = SyncContrastive(temperature=0.5, negatives="all", curriculum_epochs=2)
    for epoch, mode in [(0, "cross_video"), (1, "cross_video"), (2, "all"), (5, "all")]:
        module.set_epoch(epoch)
        assert module.current_negatives == mode
        loss, logs = module(A, V)
        assert loss.item() == pytest.approx(sync_infonce(A, V, 0.5, mode)[0].item(), abs=1e-6)
        assert logs["temperature"].item() == pytest.approx(0.5)
    loss.backward()
    assert module.temperature.log_temperature.grad is not None
    with pytest.raises(ValueError, match="unknown negatives"):
        SyncContrastive(negatives="hard")


def test_gather_with_grad_is_identity_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert gather_with_grad(x) is x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gather_worker(rank: int, world: int, port: int, out_dir: str, local_loss: bool = False) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        a = F.normalize(torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
        v = F.normalize(torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
        local_a = a[2 * rank: 2 * rank + 2].clone().requires_grad_(True)
        local_v = v[2 * rank: 2 * rank + 2].clone().requires_grad_(True)
        local = slice(2 * rank, 2 * rank + 2) if local_loss else None
        loss, _ = sync_infonce(gather_with_grad(local_a), gather_with_grad(local_v), 0.1, local_clips=local)
        loss.backward()
        torch.save({"loss": loss.detach(), "ga": local_a.grad, "gv": local_v.grad},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down (an early close aborted a peer once)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("local_loss", [False, True])
def test_gather_with_grad_across_two_processes(tmp_path, local_loss: bool):
    """Gathered loss equals the single-process loss (with the local loss: the ranks' mean does); summed gradients
    (what DDP averages) equal the full ones in both cases."""
    import torch.multiprocessing as mp

    mp.spawn(_gather_worker, args=(2, _free_port(), str(tmp_path), local_loss), nprocs=2, join=True)
    a = F.normalize(torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(0)), dim=-1).requires_grad_(True)
    v = F.normalize(torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(1)), dim=-1).requires_grad_(True)
    loss, _ = sync_infonce(a, v, 0.1)
    loss.backward()
    got_losses = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)["loss"].item() for rank in range(2)]
    if local_loss:
        assert sum(got_losses) / 2 == pytest.approx(loss.item(), abs=1e-6)
    else:
        assert got_losses == [pytest.approx(loss.item(), abs=1e-6)] * 2
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        # all_gather's backward sums the gradient of every rank's (identical) loss: world_size x the true one
        torch.testing.assert_close(got["ga"], 2 * a.grad[2 * rank: 2 * rank + 2])
        torch.testing.assert_close(got["gv"], 2 * v.grad[2 * rank: 2 * rank + 2])


def test_masked_mse_counts_hidden_tokens_only():
    pred = torch.zeros(1, 3, 2)
    target = torch.tensor([[[1.0, 1.0], [2.0, 0.0], [3.0, 3.0]]])
    mask = torch.tensor([[True, False, True]])
    # per-token MSE 1, 2, 9; hidden tokens 0 and 2 -> (1 + 9) / 2
    assert masked_mse(pred, target, mask).item() == pytest.approx(5.0)
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 10, 6, generator=gen)
    target = torch.randn(4, 10, 6, generator=gen)
    mask = torch.rand(4, 10, generator=gen) < 0.5
    base = masked_mse(pred, target, mask)
    visible_changed = torch.where(mask.unsqueeze(-1), pred, pred + 100.0)
    assert masked_mse(visible_changed, target, mask).item() == pytest.approx(base.item())
    hidden_changed = torch.where(mask.unsqueeze(-1), pred + 1.0, pred)
    assert masked_mse(hidden_changed, target, mask).item() != pytest.approx(base.item())
    with pytest.raises(ValueError, match="hides no token"):
        masked_mse(pred, target, torch.zeros(4, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="differ in shape"):
        masked_mse(pred[:, :5], target, mask)


def test_norm_pix_targets_and_baseline():
    target = torch.tensor([[[1.0, 3.0], [5.0, 5.0]]])  # second patch constant
    norm = normalize_patches(target)
    assert torch.allclose(norm[0, 0], torch.tensor([-1.0, 1.0]), atol=1e-5)
    assert torch.allclose(norm[0, 1], torch.zeros(2))
    x = normalize_patches(torch.randn(2, 50, 48, generator=torch.Generator().manual_seed(0)))
    assert torch.allclose(x.mean(-1), torch.zeros(2, 50), atol=1e-5)
    mask = torch.ones(2, 50, dtype=torch.bool)
    # predicting zeros (the mean) on unit-variance patches costs 1
    assert recon_baseline(x, mask).item() == pytest.approx(1.0, abs=1e-4)
    assert recon_baseline(x, mask).item() == pytest.approx(masked_mse(torch.zeros_like(x), x, mask).item())
    # raw targets: the baseline is each patch's variance; here (1 + 0) / 2 over both patches
    assert recon_baseline(target, torch.ones(1, 2, dtype=torch.bool)).item() == pytest.approx(0.5)


def test_sync_acc_on_hand_built_embeddings():
    e = torch.eye(3)
    a = torch.stack([e, e])  # [2 clips, 3 segments, 3]
    v = torch.stack([e[[0, 2, 1]], e])  # clip 0: segments 1 and 2 swapped in video
    out = sync_acc(a, v)
    # clip 0: only segment 0 finds its partner (1/3); clip 1: all (3/3) -> 4/6 both ways
    assert out["sync_acc_a2v"].item() == pytest.approx(4 / 6)
    assert out["sync_acc_v2a"].item() == pytest.approx(4 / 6)
    assert out["sync_acc"].item() == pytest.approx(4 / 6)


def test_retrieval_top1_on_hand_built_embeddings():
    e = torch.eye(4)
    v = torch.stack([e[[0, 1]], e[[2, 3]], e[[1, 3]]])  # 3 clips x 2 segments
    a = torch.stack([e[[0, 1]], e[[2, 3]], 0.9 * e[[0, 1]]])  # clip 2's audio looks like clip 0's video
    # C[i, j] = sum_s <a_is, v_js>: rows [2, 0, 0], [0, 2, 1], [1.8, 0, 0]
    out = retrieval_top1(a, v)
    assert out["retrieval_top1_a2v"].item() == pytest.approx(2 / 3)  # clip 2 retrieves clip 0
    assert out["retrieval_top1_v2a"].item() == pytest.approx(2 / 3)  # video 2 retrieves audio 1 (score 1 vs 0)
    assert out["retrieval_top1"].item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="equal shape"):
        retrieval_top1(a, v[:2])


def test_weighted_sum_and_combined_loss():
    terms = {"joint_mae": torch.tensor(2.0, requires_grad=True), "joint_contrastive": torch.tensor(3.0)}
    loss, logs = weighted_sum(terms, {"joint_mae": 1.0, "joint_contrastive": 0.01})
    assert loss.item() == pytest.approx(2.03)
    assert logs == {"loss_joint_mae": 2.0, "loss_joint_contrastive": 3.0, "loss": pytest.approx(2.03)}
    loss.backward()
    assert terms["joint_mae"].grad.item() == 1.0
    with pytest.raises(KeyError, match="terms without weight"):
        weighted_sum(terms, {"joint_mae": 1.0})
    combined = CombinedLoss({"sync": 1.0, "mae_video": 0.0})
    assert combined.active("sync") and not combined.active("mae_video")
    with pytest.raises(ValueError, match=">= 0"):
        CombinedLoss({"sync": -1.0})
    with pytest.raises(ValueError, match="positive"):
        CombinedLoss({"sync": 0.0})


def test_temperature_is_stored_with_shape_1_and_loads_older_0d_values() -> None:
    """FSDP refuses 0-d parameters: log(t) has shape [1]; a 0-d value saved before loads; forward stays 0-d."""
    from types import SimpleNamespace

    from avssl.lit.module import AVSSLModule
    from avssl.objectives.contrastive import LearnableTemperature

    t = LearnableTemperature(0.07)
    assert t.log_temperature.shape == (1,) and t().shape == ()
    t.load_state_dict({"log_temperature": torch.tensor(math.log(0.2))})  # an older checkpoint's 0-d value
    assert t.log_temperature.shape == (1,) and float(t()) == pytest.approx(0.2)
    t.load_state_dict({"log_temperature": torch.tensor(math.log(5.0))})  # past the bound: clamped on load
    assert float(t()) == pytest.approx(0.5)
    fixed = LearnableTemperature(0.05, learnable=False)
    fixed.load_state_dict({"log_temperature": torch.tensor(math.log(0.1))})
    assert fixed.log_temperature.shape == (1,) and float(fixed()) == pytest.approx(0.1)

    # the optimiser state of an older checkpoint: its 0-d moments become [1], Adam's step count stays 0-d
    ckpt = {"optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.tensor(0.1),
                                                "exp_avg_sq": torch.tensor(0.2)},
                                            1: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}},
                                  "param_groups": []}]}
    AVSSLModule.on_load_checkpoint(SimpleNamespace(), ckpt)  # type: ignore[arg-type]
    st = ckpt["optimizer_states"][0]["state"]
    assert st[0]["exp_avg"].shape == (1,) and st[0]["exp_avg_sq"].shape == (1,) and st[0]["step"].shape == ()
    assert st[1]["exp_avg"].shape == (4,)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p])
    opt.load_state_dict({"state": {0: st[0]}, "param_groups": [{**opt.param_groups[0], "params": [0]}]})
    p.grad = torch.ones(1)
    opt.step()  # runs with the reshaped moments
    assert torch.isfinite(p).all()
