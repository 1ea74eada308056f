"""Projection heads: BatchNorm heads (MoCo v3) centre ViT features across the batch, and export keeps them."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from avssl.models.heads import ProjectionHead
from avssl.objectives.build import build_pretrain_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit_model(**overrides: object):
    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = OmegaConf.to_container(compose("train", overrides=["model=vit"]), resolve=True)
    cfg["model"].update(overrides)
    from avssl.lit.datamodule import preprocessing_from_data

    torch.manual_seed(0)
    return build_pretrain_model(cfg["model"], cfg["objective"], preprocessing_from_data(cfg["data"]))


def _mean_cos(e: torch.Tensor) -> float:
    e = e.flatten(0, 1)
    sim = e @ e.T
    return float(sim[~torch.eye(len(e), dtype=torch.bool)].mean())


def test_batchnorm_heads_remove_the_shared_component_of_vit_features():
    """Clips that share most of their content (a static background, as in the demo and egocentric video): at
    initialisation a ViT maps every segment to nearly the same embedding without batch centring, which leaves
    InfoNCE at log(N); `model=vit` uses BatchNorm heads, whose embeddings start decorrelated."""
    g = torch.Generator().manual_seed(0)
    shared_v, shared_a = torch.randn(1, 1, 3, 4, 64, 64, generator=g), torch.randn(1, 1, 1, 48, 64, generator=g)
    video = shared_v + 0.2 * torch.randn(4, 4, 3, 4, 64, 64, generator=g)
    audio = shared_a + 0.2 * torch.randn(4, 4, 1, 48, 64, generator=g)
    plain = _vit_model(proj_norm="none", proj_hidden=None, proj_layers=None).train()
    centred = _vit_model().train()  # the config's: proj_norm=batch
    with torch.no_grad():
        a0, v0 = plain.embed(video, audio)
        a1, v1 = centred.embed(video, audio)
    assert _mean_cos(v0) > 0.9 and _mean_cos(a0) > 0.9
    assert abs(_mean_cos(v1)) < 0.2 and abs(_mean_cos(a1)) < 0.2


def test_batchnorm_head_shapes_and_bad_norm():
    head = ProjectionHead(16, 8, hidden_dim=32, num_layers=2, norm="batch")
    assert head(torch.randn(5, 16)).shape == (5, 8) and head(torch.randn(2, 3, 16)).shape == (2, 3, 8)
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == 2
    with pytest.raises(ValueError, match="norm must be 'none' or 'batch'"):
        ProjectionHead(16, 8, norm="layer")


def test_batchnorm_heads_export_and_reload(tmp_path):
    import avssl
    from avssl import export as ex

    model = _vit_model().eval()
    for p in model.parameters():  # non-trivial running statistics and weights
        p.data.add_(0.01 * torch.randn_like(p))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    v, a = torch.randn(2, 1, 3, 4, 64, 64), torch.randn(2, 1, 1, 48, 64)
    with torch.no_grad():
        ref_a, ref_v = model.embed(v, a)
    for modality, x, ref in (("video", v, ref_v), ("audio", a, ref_a)):
        enc = ex.extract_module(model, modality, {"segment_duration": 0.5, "fps": 8, "frame_size": 64,
                                                  "sample_rate": 16000})
        ex.write_bundle(enc, tmp_path / modality)
        back = avssl.load_encoder(tmp_path / modality, modality)
        with torch.no_grad():
            torch.testing.assert_close(back(x.flatten(0, 1)), ref.flatten(0, 1), rtol=0, atol=1e-5)
