"""Training runs on tiny demo data: every experiment x encoder family for one step, reproducibility, checkpoints
(weights_only loading, rebuild, resume) and a short run that learns synchrony and beats the reconstruction baseline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module

from avssl.lit.module import AVSSLModule
from avssl.lit.run import train

EXPERIMENTS = ["sync_contrastive", "masked_av", "sync_masked"]
FAMILIES = ["cnn", "vit"]
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.num_workers=0",
         "data.persistent_workers=false"]


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("demo_cache"))


def _cfg(overrides: list[str]):
    with initialize_config_module("avssl.conf", version_base="1.3"):
        return compose("train", overrides=overrides)


def _tiny(cache: str, out: Path, *extra: str) -> list[str]:
    return ["debug=tiny", f"data.demo.cache_dir={cache}", f"output_dir={out}", *QUIET, *extra]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_one_step_of_every_experiment(experiment: str, family: str, demo_cache: str, tmp_path: Path):
    overrides = _tiny(demo_cache, tmp_path, f"experiment={experiment}", f"model={family}")
    overrides[0] = "debug=[tiny,fast_dev_run]"
    result = train(_cfg(overrides))
    assert math.isfinite(result.metrics["val/loss"])
    assert 0.0 <= result.metrics["val/sync_acc"] <= 1.0
    assert result.metrics["data/bad_files"] == 0
    if experiment != "sync_contrastive":
        assert any(k.startswith("val/recon_baseline") for k in result.metrics)


def test_seeded_runs_are_reproducible(demo_cache: str, tmp_path: Path):
    common = ["experiment=sync_masked", "trainer.max_epochs=1", "trainer.limit_train_batches=2", "seed=3"]
    runs = [train(_cfg(_tiny(demo_cache, tmp_path / f"run{i}", *common))) for i in range(2)]
    assert runs[0].metrics == runs[1].metrics
    states = [torch.load(r.last_checkpoint, map_location="cpu", weights_only=True)["state_dict"] for r in runs]
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    other = train(_cfg(_tiny(demo_cache, tmp_path / "run_other", *common[:-1], "seed=4")))
    assert other.metrics["val/loss"] != runs[0].metrics["val/loss"]


def test_checkpoint_loads_weights_only_rebuilds_and_resumes(demo_cache: str, tmp_path: Path):
    out = tmp_path / "run"
    first = train(_cfg(_tiny(demo_cache, out, "trainer.max_epochs=1", "trainer.limit_train_batches=2")))
    assert first.last_checkpoint and Path(first.last_checkpoint).is_file()
    assert first.best_checkpoint and Path(first.best_checkpoint).is_file()
    ckpt = torch.load(first.last_checkpoint, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    prep = hp["preprocessing"]
    for key in ("segment_duration", "num_segments", "fps", "frame_size", "video_mean", "video_std", "sample_rate",
                "fbank", "video_input_shape", "audio_input_shape"):
        assert key in prep, key
    assert prep["fbank"]["mean"] == pytest.approx(-5.081) and prep["fbank"]["num_mel_bins"] == 64
    assert hp["model"]["video"]["name"] == "r3d_tiny"
    # rebuild from hparams alone, load strictly, same embeddings
    module = AVSSLModule(**hp)
    module.load_state_dict(ckpt["state_dict"], strict=True)
    module.eval()
    video = torch.randn(2, 4, *prep["video_input_shape"])
    audio = torch.randn(2, 4, *prep["audio_input_shape"])
    loaded = AVSSLModule.load_from_checkpoint(first.last_checkpoint, map_location="cpu", weights_only=True).eval()
    a1, v1 = module.segment_embeddings(video, audio)
    a2, v2 = loaded.segment_embeddings(video, audio)
    assert torch.allclose(a1, a2) and torch.allclose(v1, v2)
    assert set(module.encoders.keys()) == {"video", "audio"}
    # resume from last.ckpt and train one more epoch
    resumed = train(_cfg(_tiny(demo_cache, out, "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                               "ckpt_path=last")))
    after = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    assert after["global_step"] == 2 * ckpt["global_step"] > 0  # one more epoch of the same length
    assert after["epoch"] > ckpt["epoch"]


def test_bad_settings_fail_with_clear_messages(demo_cache: str, tmp_path: Path):
    with pytest.raises(ValueError, match="data.fbank"):
        train(_cfg(_tiny(demo_cache, tmp_path, "+data.fbank.num_mel_binz=32")))
    with pytest.raises(ValueError, match="model.video"):
        train(_cfg(_tiny(demo_cache, tmp_path, "+model.video.kwargs.depthh=2")))
    with pytest.raises(FileNotFoundError, match="nowhere.csv"):
        train(_cfg(_tiny(demo_cache, tmp_path, "data=manifest", "data.path=/nowhere.csv")))


@pytest.mark.slow
def test_short_training_learns_synchrony_and_reconstruction(demo_cache: str, tmp_path: Path):
    """sync_masked on a small demo set: held-out sync_acc >= 0.6 (chance 0.25) on >= 64 segments, and masked
    reconstruction below its predict-the-mean baseline."""
    overrides = [
        f"data.demo.cache_dir={demo_cache}", f"output_dir={tmp_path}", *QUIET,
        "experiment=sync_masked", "data.demo.num_videos=24", "data.demo.val_fraction=0.17",
        "data.clips_per_file=12", "trainer.max_epochs=5", "logger=none", "seed=0",
        # small inputs keep it near a minute on 2 cores: 32 px frames, 32 mel bins, a higher learning rate, and
        # light MAE weights so that 75 steps suffice for synchrony (measured 0.64-0.69 over seeds; docs/results.md)
        "data.frame_size=32", "data.fbank.num_mel_bins=32", "optimizer.lr=3e-3",
        "objective.weights.mae_video=0.1", "objective.weights.mae_audio=0.1",
        "data.num_workers=2", "data.persistent_workers=true",
    ]
    result = train(_cfg(overrides))
    m = result.metrics
    assert m["val/sync_acc"] >= 0.6, m
    assert m["val/recon_video"] < m["val/recon_baseline_video"], m
    assert m["val/recon_audio"] < m["val/recon_baseline_audio"], m
