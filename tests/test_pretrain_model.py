"""MAE decoder, joint (CAV-MAE) model and the composed AVPretrainModel on tiny real encoders."""

from __future__ import annotations

import math

import pytest
import torch

from avssl.models.cnn import AudioCNN, VideoCNN
from avssl.models.vit import AudioViT, VideoViT
from avssl.objectives.joint import JointMAE
from avssl.objectives.mae import MAEDecoder, make_mask, masked_input, scatter_visible
from avssl.objectives.pretrain import AVPretrainModel, PretrainOutput

B, S = 2, 2


pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def vit_pair() -> tuple[VideoViT, AudioViT]:
    torch.manual_seed(0)
    video = VideoViT(num_frames=4, img_size=32, tubelet=2, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    audio = AudioViT(num_frames=32, num_mels=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    return video, audio  # token grids (2, 4, 4) and (4, 4); widths differ on purpose


def batch(seed: int = 0, structured: bool = False) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    if structured:
        # every 8-cell patch row holds the same ramp: normalised patch targets are predictable from nothing
        ramp = torch.arange(8.0).repeat(4)
        video = ramp.expand(B, S, 3, 4, 32, 32) * (1 + torch.rand(B, S, 3, 1, 1, 1, generator=gen))
        audio = ramp.expand(B, S, 1, 32, 32) * (1 + torch.rand(B, S, 1, 1, 1, generator=gen))
        return {"video": video.contiguous(), "audio": audio.contiguous()}
    return {"video": torch.randn(B, S, 3, 4, 32, 32, generator=gen),
            "audio": torch.randn(B, S, 1, 32, 32, generator=gen)}


OBJECTIVE_SETS = {
    "sync": {"sync": 1.0},
    "mae": {"mae_video": 1.0, "mae_audio": 1.0},
    "joint": {"joint_mae": 1.0, "joint_contrastive": 0.01},
    "combined": {"sync": 1.0, "mae_video": 0.5, "mae_audio": 0.5, "joint_mae": 1.0, "joint_contrastive": 0.01},
}


def test_make_mask_counts_tubes_and_seeding():
    m = make_mask("random", 3, (4, 4), 0.8, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 16) and m.dtype == torch.bool and m.sum(1).tolist() == [13, 13, 13]
    again = make_mask("random", 3, (4, 4), 0.8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    tube = make_mask("tube", 2, (3, 4, 4), 0.75, generator=torch.Generator().manual_seed(1))
    grid = tube.reshape(2, 3, 16)
    assert torch.equal(grid[:, 0], grid[:, 1]) and torch.equal(grid[:, 0], grid[:, 2])  # same mask at every time
    assert grid[:, 0].sum(1).tolist() == [12, 12]
    with pytest.raises(ValueError, match="unknown mask kind"):
        make_mask("block", 1, (4, 4), 0.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        make_mask("random", 1, (4, 4), 1.0)


def test_scatter_visible_places_tokens_in_grid_order():
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    visible = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]])
    full = scatter_visible(visible, mask, torch.tensor([-1.0]))
    assert full.squeeze(-1).tolist() == [[-1.0, 1.0, -1.0, 2.0], [3.0, 4.0, -1.0, -1.0]]
    with pytest.raises(ValueError, match="do not match the mask"):
        scatter_visible(visible[:, :1], mask, torch.tensor([-1.0]))


def test_mae_decoder_predicts_every_token():
    video, _ = vit_pair()
    x = torch.randn(3, 3, 4, 32, 32)
    m = masked_input(video, x, mask_kind="tube", mask_ratio=0.75, generator=torch.Generator().manual_seed(0))
    assert m.grid == (2, 4, 4) and m.target.shape == (3, 32, 2 * 8 * 8 * 3)
    decoder = MAEDecoder(32, m.target.shape[-1], dim=32, depth=1, num_heads=2)
    pred = decoder(video.forward_features(x, mask=m.mask), m.mask, m.grid)
    assert pred.shape == m.target.shape


@pytest.mark.parametrize("name", list(OBJECTIVE_SETS))
def test_gradients_reach_every_trainable_parameter(name):
    video, audio = vit_pair()
    model = AVPretrainModel(video, audio, embed_dim=16, objectives=OBJECTIVE_SETS[name], mae=TINY_DECODER,
                            joint={**TINY_DECODER, "num_heads": 2})
    out = model(batch(), generator=torch.Generator().manual_seed(0))
    assert isinstance(out, PretrainOutput) and out.loss.dim() == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert no_grad == []
    for term in OBJECTIVE_SETS[name]:
        assert f"loss_{term}" in out.logs
    expected = sum(w * out.logs[f"loss_{t}"] for t, w in OBJECTIVE_SETS[name].items())
    assert out.logs["loss"].item() == pytest.approx(float(expected), rel=1e-5)
    if "sync" in OBJECTIVE_SETS[name] or "joint_contrastive" in OBJECTIVE_SETS[name]:
        for key in ("sync_acc", "sync_acc_a2v", "retrieval_top1", "retrieval_top1_v2a"):
            assert 0.0 <= out.logs[key].item() <= 1.0
        assert out.audio_emb is not None and out.audio_emb.shape[:2] == (B, S)
    else:
        assert out.audio_emb is None and "sync_acc" not in out.logs
    if name == "sync":
        assert out.logs["temperature"].item() == pytest.approx(0.07)
        assert "mae" not in model.objectives
    if name == "mae":
        assert model.heads is None and "joint" not in model.objectives
        for m in ("video", "audio"):
            assert out.logs[f"recon_baseline_{m}"].item() == pytest.approx(1.0, abs=0.05)


def test_mae_with_cnn_encoders():
    video = VideoCNN(conv="3d", num_frames=4, img_size=32, widths=(8, 8, 16, 16), layers=(1, 1, 1, 1))
    audio = AudioCNN(num_frames=32, num_mels=32, widths=(8, 8, 16, 16), convs_per_stage=1)
    model = AVPretrainModel(video, audio, embed_dim=16, objectives={"sync": 1.0, "mae_audio": 1.0, "mae_video": 1.0},
                            mae={**TINY_DECODER, "video_mask_ratio": 0.5})
    out = model(batch(), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert torch.isfinite(out.logs["recon_video"]) and torch.isfinite(out.logs["recon_audio"])


def test_joint_model_reconstructs_both_modalities():
    video, audio = vit_pair()
    model = AVPretrainModel(video, audio, objectives={"joint_mae": 1.0},
                            joint={**TINY_DECODER, "num_heads": 2})
    joint = model.objectives["joint"].net
    assert isinstance(joint, JointMAE) and joint.contrastive is None
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    data = batch(structured=True)
    gen = torch.Generator().manual_seed(0)
    first = model(data, generator=gen).logs
    for _ in range(30):
        opt.zero_grad()
        out = model(data, generator=gen)
        out.loss.backward()
        opt.step()
    logs = out.logs
    for m in ("video", "audio"):
        assert logs[f"recon_baseline_joint_{m}"].item() == pytest.approx(1.0, abs=1e-3)
        assert logs[f"recon_joint_{m}"].item() < 0.5 * logs[f"recon_baseline_joint_{m}"].item()
        assert logs[f"recon_joint_{m}"].item() < first[f"recon_joint_{m}"].item()
    assert logs["loss_joint_mae"].item() == pytest.approx(
        logs["recon_joint_video"].item() + logs["recon_joint_audio"].item(), rel=1e-5)


def test_seeded_forward_is_deterministic():
    video, audio = vit_pair()
    model = AVPretrainModel(video, audio, embed_dim=16, objectives=OBJECTIVE_SETS["combined"], mae=TINY_DECODER,
                            joint={**TINY_DECODER, "num_heads": 2})
    data = batch()
    one = model(data, generator=torch.Generator().manual_seed(7))
    two = model(data, generator=torch.Generator().manual_seed(7))
    other = model(data, generator=torch.Generator().manual_seed(8))
    assert torch.equal(one.loss, two.loss)
    assert one.logs.keys() == two.logs.keys()
    assert all(torch.equal(one.logs[k], two.logs[k]) for k in one.logs)
    assert not torch.equal(one.logs["recon_video"], other.logs["recon_video"])


def test_embed_is_normalised_and_matches_pooled_encoders():
    video, audio = vit_pair()
    model = AVPretrainModel(video, audio, embed_dim=16, objectives={"sync": 1.0})
    data = batch()
    a, v = model.embed(data["video"], data["audio"])
    assert a.shape == v.shape == (B, S, 16)
    assert torch.allclose(a.norm(dim=-1), torch.ones(B, S), atol=1e-5)
    direct = model.heads["video"](video(data["video"][1, 0:1]))
    assert torch.allclose(v[1, 0], direct[0] / direct.norm(), atol=1e-5)


def test_curriculum_and_errors():
    video, audio = vit_pair()
    model = AVPretrainModel(video, audio, embed_dim=16, objectives={"sync": 1.0}, sync={"curriculum_epochs": 1})
    assert model.objectives["sync"].loss.current_negatives == "cross_video"
    model.set_epoch(1)
    assert model.objectives["sync"].loss.current_negatives == "all"
    with pytest.raises(ValueError, match="unknown objective"):
        AVPretrainModel(video, audio, objectives={"synch": 1.0})
    with pytest.raises(ValueError, match=r"objective.mae: unknown option\(s\) \['mask_ratio'\]"):
        AVPretrainModel(video, audio, objectives={"mae_video": 1.0}, mae={"mask_ratio": 0.5})
    with pytest.raises(ValueError, match="modality"):
        AVPretrainModel(audio, video, objectives={"sync": 1.0})
    data = batch()
    with pytest.raises(ValueError, match=r"\[B, S, C, T, H, W\]"):
        model({"video": data["video"][0], "audio": data["audio"]})
    with pytest.raises(ValueError, match="disagree"):
        model({"video": data["video"], "audio": data["audio"][:1]})
    with pytest.raises(KeyError, match="audio"):
        model({"video": data["video"]})
    assert math.isfinite(model(data).loss.item())


def test_cross_video_negatives_exclude_other_clips_of_the_same_video():
    """The batch's per-clip video id (``video_id``, or hashed from ``path``) reaches the sync loss, so clips of one
    video are not each other's negatives; a batch without either keeps one video per clip."""
    from avssl.data.sampling import video_id
    from avssl.objectives import sync_infonce

    video, audio = vit_pair()
    model = AVPretrainModel(video, audio, embed_dim=16, objectives={"sync": 1.0},
                            sync={"negatives": "cross_video", "learn_temperature": False})
    model.eval()
    gen = torch.Generator().manual_seed(2)
    base = {"video": torch.randn(3, S, 3, 4, 32, 32, generator=gen), "audio": torch.randn(3, S, 1, 32, 32, generator=gen)}
    paths = ["/d/a.mp4", "/d/a.mp4", "/d/b.mp4"]  # two clips of a.mp4
    with torch.no_grad():
        by_path = model({**base, "path": paths})
        by_id = model({**base, "video_id": torch.tensor([5, 5, 9])})
        plain = model(base)
    a, v = by_path.audio_emb, by_path.video_emb
    same_video = sync_infonce(a, v, 0.07, "cross_video", video_ids=torch.tensor([0, 0, 1]))[0]
    other_clips = sync_infonce(a, v, 0.07, "cross_video")[0]
    assert by_path.logs["loss_sync"].item() == pytest.approx(same_video.item(), abs=1e-5)
    assert by_id.logs["loss_sync"].item() == pytest.approx(same_video.item(), abs=1e-5)
    assert plain.logs["loss_sync"].item() == pytest.approx(other_clips.item(), abs=1e-5)
    assert abs(same_video.item() - other_clips.item()) > 1e-3
    assert video_id("/d/a.mp4") == video_id("/d/a.mp4") != video_id("/d/b.mp4") and video_id("/d/a.mp4") >= 0
