"""The cross-modal transfer experiment (issue 14): unimodal arms, the random arm, the report's statistics, resuming,
the demo's transfer labels, and ``avssl-transfer`` end to end."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import console_script

from avssl.evaluation import transfer as tr

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny demo set with the transfer labels (8 videos of 3 s, 32 px); every arm trains for 2 steps of batch 2
TINY = ["data.demo.num_videos=8", "data.demo.duration=3.0", "data.demo.size=32", "data.frame_size=32",
        "data.demo.val_fraction=0.5", "data.clips_per_file=1", "data.num_workers=0", "data.persistent_workers=false",
        "trainer=cpu", "trainer.limit_val_batches=1"]


@pytest.fixture(scope="module")
def demo_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


def _cfg(demo_cache: Path, arms: list[str], seeds: list[int], **eval_over: Any) -> dict[str, Any]:
    """The shipped transfer config, made tiny."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("avssl.conf.transfer", version_base="1.3"):
        cfg = compose("transfer")
    plain: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    plain.update(arms=arms, seeds=seeds)
    plain["train"].update(steps=2, batch_size=2, extra=[*TINY, f"data.demo.cache_dir={demo_cache}"])
    plain["eval"].update(item_seconds=1.0, **eval_over)
    plain["eval"]["probe"]["max_windows"] = 1
    plain["eval"]["offset"]["clips_per_item"] = 1
    return plain


# --- statistics on hand-made numbers -------------------------------------------------------------------------


def test_mean_std_and_paired_t_test_equal_hand_computed_values():
    mean, sd = tr.mean_std([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6) and sd == pytest.approx(0.1)  # sqrt((0.01 + 0.01 + 0) / 2)
    assert tr.mean_std([0.3]) == (0.3, None)
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3), df 2
    test = tr.paired_t_test([0.6, 0.7, 0.9], [0.5, 0.5, 0.6])
    t = 0.2 / (0.1 / math.sqrt(3))
    assert test["mean_diff"] == pytest.approx(0.2) and test["std_diff"] == pytest.approx(0.1)
    assert test["t"] == pytest.approx(t) and test["df"] == 2
    assert test["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9)  # Student t, df 2, in closed form
    # df 1 (two seeds) is the Cauchy distribution: p = 1 - (2 / pi) atan |t|
    one = tr.paired_t_test([1.0, 3.0], [0.0, 0.0])
    assert one["t"] == pytest.approx(2.0) and one["p"] == pytest.approx(1 - 2 / math.pi * math.atan(2.0), rel=1e-9)
    # a textbook quantile: t = 2.228 with 10 degrees of freedom is p = 0.05
    assert tr.t_two_sided_p(2.228139, 10) == pytest.approx(0.05, abs=1e-6)
    assert tr.t_two_sided_p(-2.228139, 10) == tr.t_two_sided_p(2.228139, 10)
    assert tr.betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - sum_{j<2} C(4,j) .4^j .6^(4-j)
    # degenerate cases are stated, not divided by zero
    assert tr.paired_t_test([0.5], [0.4])["p"] is None
    same = tr.paired_t_test([0.6, 0.7], [0.5, 0.6])
    assert same["std_diff"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="pairs"):
        tr.paired_t_test([0.1, 0.2], [0.1])


def _run(probe: dict[str, dict[str, float]], trained: list[str], zero: tuple[float, float] | None = None) -> dict:
    out: dict[str, Any] = {"trained_modalities": trained, "probe": {"label": {}}, "zero_shot": None}
    for m, acc in probe.items():
        out["probe"]["label"][m] = {"linear_acc": acc["lin"], "knn5_acc": acc["knn"], "majority_acc": 0.25,
                                    "num_test": 16}
    if zero is not None:
        out["zero_shot"] = {"offset_acc": {"acc": zero[0], "chance_acc": 0.1},
                            "retrieval": {"a2v_R@1": zero[1], "v2a_R@1": zero[1], "chance_R@1": 0.0625}}
    return out


def test_summary_and_table_on_hand_made_results(tmp_path: Path):
    lin_sync, lin_uni = [0.6, 0.7, 0.9], [0.5, 0.5, 0.6]
    runs = {
        "sync": {str(s): _run({"video": {"lin": lin_sync[s], "knn": 0.5}, "audio": {"lin": 0.8, "knn": 0.8}},
                              ["video", "audio"], (0.3 + 0.1 * s, 0.5)) for s in range(3)},
        "masked_video": {str(s): _run({"video": {"lin": lin_uni[s], "knn": 0.5}, "audio": {"lin": 0.3, "knn": 0.3}},
                                      ["video"]) for s in range(3)},
    }
    summary = tr.summarize(runs, seeds=[0, 1, 2], k=5)
    rows = {(r["arm"], r["modality"]): r for r in summary["probe"]}
    video = rows[("sync", "video")]
    assert video["linear_acc"]["mean"] == pytest.approx(np.mean(lin_sync))
    assert video["linear_acc"]["std"] == pytest.approx(np.std(lin_sync, ddof=1))
    test = video["vs_unimodal"]["linear_acc"]
    t = 0.2 / (0.1 / math.sqrt(3))
    assert test["mean_diff"] == pytest.approx(0.2) and test["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert video["vs_unimodal"]["knn5_acc"]["mean_diff"] == 0 and video["vs_unimodal"]["knn5_acc"]["p"] == 1.0
    assert "vs_unimodal" not in rows[("masked_video", "video")]  # the reference itself
    assert "vs_unimodal" not in rows[("sync", "audio")]  # no audio-only arm in this experiment
    assert rows[("masked_video", "audio")]["trained"] is False
    assert [r["arm"] for r in summary["zero_shot"]] == ["sync"]  # masked_video has no shared space
    assert summary["zero_shot"][0]["offset_acc"]["mean"] == pytest.approx(0.4)
    table = tr.markdown_table(summary, k=5)
    assert "| video | sync | 0.733 ± 0.153 | 0.500 ± 0.000 | 0.250 ± 0.000 | +0.200 (p=0.074) | +0.000 (p=1.000) |" \
        in table
    assert "| audio | masked_video (untrained) | 0.300 ± 0.000 |" in table
    assert "| sync | 0.400 ± 0.100 | 0.500 ± 0.000 | 0.500 ± 0.000 |" in table
    cfg = {"arms": list(runs), "seeds": [0, 1, 2], "train": {"steps": 2, "batch_size": 2},
           "eval": {"probe": {"k": 5}}, "plots": True}
    out = tr.write_report(cfg, runs, tmp_path)
    assert (tmp_path / "results.md").read_text().endswith(table)
    assert json.loads((tmp_path / "results.json").read_text())["summary"]["probe"][0]["arm"] == "sync"
    assert [Path(p).name for p in out["plots"]] == ["probe_label.png"] and Path(out["plots"][0]).stat().st_size


# --- the arms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arm", ["sync", "sync_masked"])
def test_audio_visual_arms_build_and_run_a_fast_dev_run(arm: str, demo_cache: Path, tmp_path: Path):
    from avssl.lit.run import train

    cfg = _cfg(demo_cache, [arm], [0])
    cfg["train"]["extra"].append("debug=fast_dev_run")
    train_cfg = tr.arm_train_config(cfg, arm, 3)
    assert train_cfg["objective"]["name"] == cfg["objectives"][arm] and train_cfg["seed"] == 3
    assert train_cfg["trainer"]["max_steps"] == 2 and train_cfg["data"]["batch_size"] == 2
    out = train(train_cfg, output_dir=tmp_path)
    assert "val/loss" in out.metrics and tr.trained_modalities(train_cfg, arm) == ["video", "audio"]


@pytest.mark.parametrize("arm, other", [("masked_video", "audio"), ("masked_audio", "video")])
def test_unimodal_arms_train_without_decoding_the_other_modality(arm: str, other: str, demo_cache: Path,
                                                                  tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from avssl.data.media import MediaReader
    from avssl.lit.run import train

    decoded: dict[str, int] = {"video": 0, "audio": 0}
    for name, modality in (("_read_video_pyav", "video"), ("_read_video_decord", "video"), ("_read_audio", "audio")):
        real = getattr(MediaReader, name)

        def spy(self, *args, _real=real, _m=modality, **kwargs):  # noqa: ANN001, ANN202
            decoded[_m] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(MediaReader, name, spy)
    cfg = _cfg(demo_cache, [arm], [0])
    cfg["train"]["extra"].append("debug=fast_dev_run")
    train_cfg = tr.arm_train_config(cfg, arm, 0)
    assert train_cfg["objective"]["weights"][f"mae_{other}"] == 0
    assert train_cfg["objective"]["weights"][f"mae_{arm.split('_')[1]}"] > 0
    out = train(train_cfg, output_dir=tmp_path)
    own = arm.split("_")[1]
    assert f"val/loss_mae_{own}" in out.metrics and f"val/loss_mae_{other}" not in out.metrics
    assert decoded[own] > 0 and decoded[other] == 0, decoded  # the other modality never decoded
    assert tr.trained_modalities(train_cfg, arm) == [own]


def test_random_arm_exports_the_untrained_model_of_its_seed(demo_cache: Path, tmp_path: Path):
    from avssl.export import load_encoder

    cfg = _cfg(demo_cache, ["random"], [0])
    train_cfg = tr.arm_train_config(cfg, "random", 1)
    bundles = tr.export_untrained(train_cfg, tmp_path / "bundle")
    assert sorted(bundles) == ["audio", "video"]
    init = tr._build_module(train_cfg).model  # avssl-train's model at step 0 of seed 1
    other = tr._build_module(tr.arm_train_config(cfg, "random", 2)).model
    for m in ("video", "audio"):
        enc = load_encoder(tmp_path / "bundle", m)
        assert enc.provenance["untrained"] is True and enc.embedding == "head"  # sync_contrastive's space
        mine = enc.encoder.state_dict()
        assert all(torch.equal(v, init.encoders[m].state_dict()[k]) for k, v in mine.items())
        assert not all(torch.equal(v, other.encoders[m].state_dict()[k]) for k, v in mine.items())
    assert tr.trained_modalities(train_cfg, "random") == []


def test_config_errors_name_the_problem(demo_cache: Path):
    cfg = _cfg(demo_cache, ["sync", "nope"], [0])
    with pytest.raises(ValueError, match=r"arm\(s\) \['nope'\] have no entry in `objectives`"):
        tr.check_config(cfg)
    cfg = _cfg(demo_cache, ["sync"], [0])
    cfg["train"]["extra"].append("trainer.max_steps=5")
    with pytest.raises(ValueError, match="train.steps"):
        tr.check_config(cfg)
    cfg = _cfg(demo_cache, ["sync"], [0])
    cfg["train"]["extra"].append("data.demo.pitch_bands=0")  # no pitch_band column: named, with the fix
    with pytest.raises(ValueError, match=r"label column\(s\) \['pitch_band'\].*pitch_bands>=2"):
        tr.eval_items(cfg, tr.arm_train_config(cfg, "sync", 0))


# --- resuming -------------------------------------------------------------------------------------------------


def test_a_rerun_skips_finished_arms_and_redoes_only_what_changed(demo_cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    cfg = _cfg(demo_cache, ["masked_audio", "random"], [0, 1])
    first = tr.run_transfer(cfg, tmp_path)
    assert set(first["runs"]) == {"masked_audio", "random"} and set(first["runs"]["random"]) == {"0", "1"}
    r = first["runs"]["masked_audio"]["0"]
    assert set(r["probe"]) == {"label", "pitch_band", "distractor"} and r["zero_shot"] is None
    assert first["runs"]["random"]["0"]["zero_shot"]["offset_acc"]["num_clips"] > 0
    assert (tmp_path / "results.md").is_file() and len(list((tmp_path / "plots").glob("*.png"))) == 3

    calls: dict[str, int] = {"pretrain": 0, "evaluate": 0}
    real_pretrain, real_evaluate = tr.pretrain_arm, tr.evaluate_arm

    def pretrain(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["pretrain"] += 1
        return real_pretrain(*a, **k)

    def evaluate(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls["evaluate"] += 1
        return real_evaluate(*a, **k)

    monkeypatch.setattr(tr, "pretrain_arm", pretrain)
    monkeypatch.setattr(tr, "evaluate_arm", evaluate)
    again = tr.run_transfer(cfg, tmp_path)
    assert calls == {"pretrain": 0, "evaluate": 0}  # everything finished: nothing redone
    assert again["summary"] == first["summary"]
    # an interrupted evaluation (train.json written, result.json not): evaluated again, not retrained
    (tmp_path / "runs" / "masked_audio" / "seed1" / "result.json").unlink()
    tr.run_transfer(cfg, tmp_path)
    assert calls == {"pretrain": 0, "evaluate": 1}
    # other evaluation settings: every arm re-evaluated from its bundle, none retrained
    cfg["eval"]["probe"]["k"] = 3
    tr.run_transfer(cfg, tmp_path)
    assert calls == {"pretrain": 0, "evaluate": 5}
    # other pretraining settings in the same folder: refused, naming the folder
    cfg["train"]["steps"] = 3
    with pytest.raises(ValueError, match="pretrained with other settings"):
        tr.run_transfer(cfg, tmp_path)


def test_accuracy_versus_steps_runs_the_experiment_per_step_count(demo_cache: Path, tmp_path: Path):
    cfg = _cfg(demo_cache, ["masked_audio", "random"], [0], tasks=["probe"])
    cfg["steps_curve"] = [2, 1]
    curve = tr.run_steps_curve(cfg, tmp_path)
    assert curve["steps"] == [1, 2] and sorted(p.name for p in tmp_path.iterdir()) == [
        "plots", "steps1", "steps2", "steps_curve.json"]
    trained = json.loads((tmp_path / "steps1" / "runs" / "masked_audio" / "seed0" / "train.json").read_text())
    assert trained["steps"] == 1 and trained["metrics"]
    assert sorted(p.name for p in (tmp_path / "plots").glob("steps_*.png")) == [
        "steps_distractor.png", "steps_label.png", "steps_pitch_band.png"]
    with pytest.raises(ValueError, match="steps_curve"):
        tr.run_steps_curve({**cfg, "steps_curve": [0]}, tmp_path)


# --- the demo's transfer labels -------------------------------------------------------------------------------


def test_transfer_labels_are_off_by_default_and_keep_the_default_cache_key(tmp_path: Path):
    from avssl.config import DemoConfig
    from avssl.data_tools import demo

    assert DemoConfig().pitch_bands == 0 and DemoConfig().distractors is False
    # the key of the default tiny demo set (debug=tiny) from before these options existed: a finished dataset
    # there is found, so the options at their defaults neither change the key nor regenerate anything
    old = tmp_path / "demo-873f88db756ff0e5"
    old.mkdir()
    (old / "manifest.csv").write_text("# avssl-manifest v1\n")
    params = dict(num_videos=8, duration=4.0, val_fraction=0.25)
    assert demo.ensure_demo_dataset(tmp_path, **params) == old / "manifest.csv"
    assert demo.ensure_demo_dataset(tmp_path, **params, pitch_bands=0, distractors=False) == old / "manifest.csv"
    # with a transfer label on, the key changes (and carries the labels' own version)
    labelled = tmp_path / "labelled"
    manifest = demo.ensure_demo_dataset(labelled, num_videos=2, duration=0.5, size=16, pitch_bands=2)
    assert manifest.parent.name != old.name
    assert json.loads((manifest.parent / "params.json").read_text())["labels_version"] == demo.LABELS_VERSION
    # without a distractor the frames are what they were; with one, a large bar appears
    events = demo.make_events(np.random.default_rng(0), 1.0, 0.15, 0.4)
    plain = demo.render_video(0, events, 1.0, 8, 32, 1)
    assert np.array_equal(plain, demo.render_video(0, events, 1.0, 8, 32, 1, None))
    bar = demo.render_video(0, events, 1.0, 8, 32, 1, demo.make_distractor(np.random.default_rng(1), 0))
    assert (np.abs(bar.astype(int) - plain.astype(int)).max(axis=-1) > 30).mean() > 0.05
    with pytest.raises(ValueError, match="pitch_bands"):
        demo.make_demo_dataset(tmp_path / "bad", num_videos=2, duration=0.5, pitch_bands=1)


def test_pitch_band_and_distractor_labels(tmp_path: Path):
    from avssl.data.manifest import read_manifest
    from avssl.data_tools import demo

    manifest = demo.make_demo_dataset(tmp_path, num_videos=16, duration=0.5, size=16, pitch_bands=3,
                                      distractors=True, val_fraction=0.25)
    rows = list(read_manifest(manifest))
    bands = [r.get("pitch_band") for r in rows]
    kinds = [r.get("distractor") for r in rows]
    assert sorted(set(bands)) == ["high", "low", "mid"] and set(kinds) == set(demo.DISTRACTOR_NAMES)
    for split in ("train", "val"):  # balanced within each split: a probe's test split too
        for values in (bands, kinds):
            mine = [v for v, r in zip(values, rows) if r.split == split]
            counts = [mine.count(v) for v in set(values)]
            assert max(counts) - min(counts) <= 1, (split, mine)
    events = json.loads((tmp_path / "events.json").read_text())
    names = demo.pitch_band_names(3)
    for vid in events.values():  # every event's pitch lies in its video's band
        lo, hi = demo.pitch_band_range(names.index(vid["pitch_band"]), 3)
        assert all(lo <= e["freq"] <= hi for e in vid["events"]) and vid["distractor"] in demo.DISTRACTOR_NAMES
    assert demo.pitch_band_range(0, 3)[0] == pytest.approx(demo.F_LOW)
    assert demo.pitch_band_range(2, 3)[1] == pytest.approx(demo.F_HIGH)


# --- the command ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_avssl_transfer_runs_end_to_end_as_the_installed_command(demo_cache: Path, tmp_path: Path):
    extra = ",".join(f'"{o}"' for o in [*TINY, f"data.demo.cache_dir={demo_cache}"])
    cmd = [console_script("avssl-transfer"), f"output_dir={tmp_path / 'out'}", "arms=[sync,masked_video,random]",
           "seeds=[0,1]", "train.steps=2", "train.batch_size=2", f"train.extra=[{extra}]", "eval.item_seconds=1.0",
           "eval.probe.max_windows=1", "eval.offset.clips_per_item=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"sync", "masked_video", "random"}
    assert {r["arm"] for r in results["summary"]["zero_shot"]} == {"sync", "random"}
    assert "| video | sync |" in proc.stdout and "Zero-shot" in proc.stdout
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "probe_distractor.png", "probe_label.png", "probe_pitch_band.png"]
    bad = subprocess.run([console_script("avssl-transfer"), "arms=[]", f"output_dir={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert bad.returncode == 1 and "avssl-transfer: error: transfer: arms is empty" in bad.stderr
