"""Objectives as plug-ins (issue 10): one registry, options only in the YAML, the same model from Python as from
`avssl-train`, and a new objective (`avc`) added in three files."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import console_script
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from avssl.lit.datamodule import preprocessing_from_data
from avssl.lit.module import AVSSLModule
from avssl.models import create_encoder
from avssl.objectives import OBJECTIVES, all_terms
from avssl.objectives.avc import negative_clips
from avssl.objectives.base import Objective, register_objective
from avssl.objectives.build import build_pretrain_model
from avssl.objectives.pretrain import AVPretrainModel

pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(*overrides: str):
    with initialize_config_module("avssl.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_registry_holds_the_built_in_objectives_and_their_terms():
    assert {"sync", "mae", "joint", "avc"} <= set(OBJECTIVES)
    assert all_terms() == {"sync": "sync", "mae_video": "mae", "mae_audio": "mae", "joint_mae": "joint",
                           "joint_contrastive": "joint", "avc": "avc"} | {t: o for t, o in all_terms().items()
                                                                          if o not in ("sync", "mae", "joint", "avc")}
    for cls in OBJECTIVES.values():
        # no defaults in Python: every option's value comes from the objective's YAML
        assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   for f in dataclasses.fields(cls.Options)), cls.name
        cfg = _compose(f"objective={cls.config}")
        block = OmegaConf.to_container(cfg.objective[cls.name])
        assert set(block) == {f.name for f in dataclasses.fields(cls.Options)}, cls.name
        assert any(cfg.objective.weights[t] > 0 for t in cls.terms), cls.name


def test_registering_a_clashing_objective_fails():
    @dataclasses.dataclass
    class Opts:
        x: int

    class Clash(Objective):
        name, Options, config, terms = "clash", Opts, "clash", ("sync",)

    with pytest.raises(ValueError, match=r"terms \['sync'\] belong to \['sync'\]"):
        register_objective(Clash)
    assert "clash" not in OBJECTIVES


@pytest.mark.parametrize("experiment", ["sync_contrastive", "masked_av", "sync_masked"])
@pytest.mark.parametrize("model", ["cnn", "vit"])
def test_python_build_equals_the_avssl_train_model(experiment, model):
    """build_pretrain_model(cfg.model, cfg.objective, preprocessing) from a composed config is, parameter by
    parameter, the model avssl-train builds (AVSSLModule.from_config), with the YAML's decoder settings."""
    cfg = OmegaConf.to_container(_compose(f"experiment={experiment}", f"model={model}"), resolve=True)
    pre = preprocessing_from_data(cfg["data"])
    torch.manual_seed(0)
    trained = AVSSLModule.from_config(cfg, pre).model.state_dict()
    torch.manual_seed(0)
    built = build_pretrain_model(cfg["model"], cfg["objective"], pre).state_dict()
    assert list(trained) == list(built)
    for k in trained:
        assert trained[k].shape == built[k].shape and torch.equal(trained[k], built[k]), k
    if experiment == "sync_masked":  # the decoder width is the YAML's (it drifted from Python's 256 before)
        dec = cfg["objective"]["mae"]["decoder_dim"]
        assert built["objectives.mae.branches.video.decoder.embed.weight"].shape[0] == dec == 128


def _tiny_pair():
    video = create_encoder("r3d_tiny", img_size=16, num_frames=2, widths=[4, 8, 8, 8])
    audio = create_encoder("cnn_audio_tiny", widths=[4, 8, 8, 8], num_frames=24, num_mels=16)
    return video, audio


def _batch(b: int = 3, s: int = 2):
    g = torch.Generator().manual_seed(0)
    return {"video": torch.randn(b, s, 3, 2, 16, 16, generator=g), "audio": torch.randn(b, s, 1, 24, 16, generator=g),
            "path": [f"v{i}.mp4" for i in range(b)]}


def test_avc_negatives_come_from_other_videos():
    assert negative_clips(4, None).tolist() == [1, 2, 3, 0]
    ids = torch.tensor([7, 7, 9, 9])
    assert negative_clips(4, ids).tolist() == [2, 2, 0, 0]  # the nearest following clip of another video
    assert negative_clips(3, torch.tensor([5, 5, 5])).tolist() == [1, 2, 0]  # one video: other clips


def test_avc_objective_trains_every_parameter_and_aligns_no_space():
    video, audio = _tiny_pair()
    model = AVPretrainModel(video, audio, objective={"weights": {"avc": 1.0}})
    assert list(model.objectives) == ["avc"] and model.heads is None and model.embedding_space is None
    assert model.default_monitor == ("val/avc_acc", "max")
    out = model(_batch())
    assert set(out.logs) >= {"loss", "loss_avc", "avc_acc"} and out.audio_emb is None
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="at least 2 clips"):
        model({k: v[:1] for k, v in _batch().items()})


def test_an_objective_declares_the_modalities_it_needs():
    video, audio = _tiny_pair()
    model = AVPretrainModel(video, audio, objective={"weights": {"mae_audio": 1.0}})
    assert model.modalities == ("audio",)
    # options left out come from the objective's YAML (the one source), never from Python defaults
    assert model.objectives["mae"].branches["audio"].decoder.embed.weight.shape[0] == 128
    batch = _batch()
    out = model({"audio": batch["audio"]})  # no video decoded at all
    assert "loss_mae_audio" in out.logs
    both = AVPretrainModel(*_tiny_pair(), objective={"weights": {"sync": 1.0, "mae_audio": 1.0}}, embed_dim=8)
    assert both.modalities == ("video", "audio") and both.default_monitor == ("val/sync_acc", "max")


@pytest.mark.slow
def test_avssl_train_objective_avc_fast_dev_run_prints_its_metrics(tmp_path: Path):
    env_cache = tmp_path / "cache"
    proc = subprocess.run([console_script("avssl-train"), "objective=avc", "debug=[tiny,fast_dev_run]",
                           "data.num_workers=0", "data.persistent_workers=false"], cwd=tmp_path,
                          env={**__import__("os").environ, "AVSSL_CACHE": str(env_cache), "HYDRA_FULL_ERROR": "1"},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/loss_avc = " in proc.stdout and "val/avc_acc = " in proc.stdout


def test_only_the_modalities_the_objectives_need_are_decoded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An audio-only objective trains without one video frame decoded (dataset and DataModule)."""
    from mediagen import make_av_file

    from avssl.data.datasets import AVClipDataset
    from avssl.data.manifest import ManifestRow
    from avssl.data.media import MediaReader
    from avssl.data.sampling import ClipSpec
    from avssl.lit.run import train

    decoded: list[str] = []
    real = MediaReader._read_video_pyav

    def spy(self, *args, **kwargs):  # noqa: ANN001, ANN202
        decoded.append(self.path)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(MediaReader, "_read_video_pyav", spy)
    truth = make_av_file(tmp_path / "a.mp4", duration=2.0)
    rows = [ManifestRow(path=truth.path, start=0.0, end=2.0)]
    kw = dict(clip=ClipSpec(2, 0.5), fps=8, frame_size=16, mode="center", label_column=None)
    item = AVClipDataset(rows, modalities=("audio",), **kw)[0]
    assert "video" not in item and item["audio"].shape[0] == 2 and not decoded
    assert "video" in AVClipDataset(rows, **kw)[0] and decoded
    decoded.clear()
    cfg = _compose("objective=masked", "objective.weights.mae_video=0", "debug=[tiny,fast_dev_run]",
                   "data.num_workers=0", "data.persistent_workers=false", f"data.demo.cache_dir={tmp_path / 'demo'}")
    out = train(cfg, output_dir=tmp_path / "run")
    assert "val/loss_mae_audio" in out.metrics and out.monitor == "val/loss" and not decoded
