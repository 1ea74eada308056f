"""Unit tests of avssl.data_tools pieces: grid, splits, metadata parsing, flags, discovery, config composition."""

from __future__ import annotations

import numpy as np
import pytest

from avssl.cli.prep import compose_prep_config
from avssl.data_tools import FLAGS, QualityOptions, assign_split, discover, segment_flags, segment_grid
from avssl.data_tools.metadata import load_transcripts, parse_clock, recording_metadata, utterances_json
from avssl.data_tools.normalise import AUDIO_BLOCKS_PER_S, output_size
from avssl.data_tools.pipeline import parse_shard


def test_segment_grid_is_contiguous_on_frame_and_sample_boundaries():
    g = segment_grid(125.0, 60.0, 30.0, 16000)
    assert g == [(0.0, 60.0), (60.0, 120.0), (120.0, 125.0)]
    assert segment_grid(2.0, 0.64, 25.0, 16000)[-1] == (1.92, 2.0)
    with pytest.raises(ValueError, match="whole number of frames"):
        segment_grid(10.0, 0.05, 30.0, 16000)


def test_output_size_rotation_and_even():
    assert output_size(640, 480, 0, 256) == (342, 256)
    assert output_size(1080, 1920, 0, 256) == (256, 456)  # portrait keeps its orientation
    assert output_size(1920, 1080, 90, 256) == (256, 456)
    assert output_size(63, 47, 180, None) == (64, 48)


def test_splits_deterministic_heldout_and_close_to_fractions():
    fr = {"train": 0.8, "val": 0.1, "test": 0.1}
    groups = [f"S_2013{i:04d}_0600" for i in range(2000)]
    a = [assign_split(g, fr, seed=3) for g in groups]
    assert a == [assign_split(g, fr, seed=3) for g in groups]
    assert a != [assign_split(g, fr, seed=4) for g in groups]
    assert abs(a.count("train") / len(a) - 0.8) < 0.04
    assert assign_split("x", fr, child="Y", heldout_children=["Y"]) == "test"
    with pytest.raises(ValueError):
        assign_split("x", {"train": 0.0})


def test_metadata_from_saycam_names(tmp_path):
    cfg = compose_prep_config(["src=/x", "out=/y", "dataset=saycam"])["dataset"]
    m = recording_metadata("S/S_20130417_0600_02.mp4", cfg, {})
    assert m["child"] == "S" and m["session_id"] == "S_20130417_0600" and m["recording_date"] == "2013-04-17"
    odd = recording_metadata("misc/clip.mp4", cfg, {})
    assert odd == {"session_id": "misc/clip"}
    assert parse_clock("01:02:03") == 3723 and parse_clock("2:05") == 125 and parse_clock("7.5") == 7.5
    with pytest.raises(ValueError):
        parse_clock("soon")
    t = tmp_path / "t.csv"
    t.write_text("Time,Speaker,Utterance,Video Name\n00:00:05,MOT,hi,S_1.mp4\n00:00:01,CHI,ba,S_1\n")
    utts = load_transcripts(t)["S_1"]
    assert [u.time for u in utts] == [1.0, 5.0]
    assert utterances_json(utts, 4.0, 6.0) == '[{"t":1.0,"speaker":"MOT","text":"hi"}]'
    bad = tmp_path / "bad.csv"
    bad.write_text("Time,Speaker\n1,MOT\n")
    with pytest.raises(ValueError, match="bad.csv.*lacks column"):
        load_transcripts(bad)


def _stats(n_frames: int, luma: float, std: float, diff: float, audio_amp: float | None, fps: float = 30.0):
    nb = int(n_frames / fps * AUDIO_BLOCKS_PER_S)
    block = 16000 // AUDIO_BLOCKS_PER_S
    valid = np.full(nb, block if audio_amp is not None else 0, np.int32)
    amp = audio_amp or 0.0
    return {"fps": np.array(fps), "sample_rate": np.array(16000),
            "luma_mean": np.full(n_frames, luma, np.float32), "luma_std": np.full(n_frames, std, np.float32),
            "luma_diff": np.full(n_frames, diff, np.float32), "frame_valid": np.ones(n_frames, bool),
            "audio_sumsq": np.full(nb, amp**2 * block / 2, np.float32), "audio_peak": np.full(nb, amp, np.float32),
            "audio_clipped": np.full(nb, block // 10 if amp >= 1.0 else 0, np.int32), "audio_valid": valid}


@pytest.mark.parametrize("kw, expect", [
    (dict(luma=100, std=30, diff=5, audio_amp=0.1), []),
    (dict(luma=5, std=1, diff=0, audio_amp=0.1), ["dark"]),
    (dict(luma=128, std=1, diff=0, audio_amp=0.1), ["blank"]),
    (dict(luma=100, std=30, diff=0.1, audio_amp=0.1), ["frozen"]),
    (dict(luma=100, std=30, diff=5, audio_amp=1e-5), ["silence"]),
    (dict(luma=100, std=30, diff=5, audio_amp=1.0), ["clipping"]),
    (dict(luma=100, std=30, diff=5, audio_amp=None), ["no_audio"]),
])
def test_segment_flags_each_reason(kw, expect):
    facts = {"no_audio": [] if kw["audio_amp"] is not None else [[0.0, 2.0]]}
    flags, values = segment_flags(_stats(60, **kw), facts, 0.0, 2.0, 2.0, 1.0, QualityOptions())
    assert set(flags) <= set(FLAGS)
    assert sorted(k for k, v in flags.items() if v) == expect


def test_discover_filters_and_sorts(tmp_path):
    for rel in ("b/x.MP4", "a/y.mkv", "a/notes.txt", ".hidden/z.mp4", "a/.w.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    assert discover(tmp_path, ["mp4", "mkv"]) == ["a/y.mkv", "b/x.MP4"]
    assert discover(tmp_path, None, exclude=["a/*"]) == ["b/x.MP4"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover(tmp_path / "nope")


def test_shard_parsing_and_configs_compose():
    assert parse_shard("3/8") == (3, 8) and parse_shard(None) == (0, 1)
    for bad in ("8/8", "x", "1/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)
    for ds in ("folder", "saycam", "babyview", "ego4d"):
        cfg = compose_prep_config(["src=/x", "out=/y", f"dataset={ds}"])
        assert cfg["dataset"]["name"] == ds and cfg["normalise"]["rotate"] == cfg["dataset"]["rotate"]
    assert compose_prep_config(["src=/x", "out=/y", "dataset=saycam"])["normalise"]["rotate"] == 180
    with pytest.raises(Exception, match="typo"):
        compose_prep_config(["src=/x", "out=/y", "segment.typo=1"])


def test_orientation_parse_apply_and_source_correction():
    import torch

    from avssl.data.orient import Orientation, parse_orient
    from avssl.data_tools.normalise import NormaliseOptions
    from avssl.data_tools.pipeline import source_orientation

    assert parse_orient(None).identity and parse_orient("").identity and parse_orient("0").identity
    assert parse_orient("90+hflip") == Orientation(90, hflip=True)
    assert parse_orient(-90) == Orientation(270) and parse_orient("180+vflip+hflip") == Orientation(180, True, True)
    for text in ("", "180", "90+hflip", "0+vflip", "270+hflip+vflip"):
        assert str(parse_orient(text)) == text  # round trip through the manifest column
    for bad in ("45", "upside", "90+mirror"):
        with pytest.raises(ValueError, match="orient"):
            parse_orient(bad)
    x = torch.arange(2 * 3 * 4 * 3).reshape(2, 3, 4, 3)  # [T, H, W, C]
    ref = x.numpy()
    for o in (Orientation(90), Orientation(180, hflip=True), Orientation(270, vflip=True)):
        want = np.rot90(ref, k=o.rotate // 90, axes=(1, 2))  # same order as normalise: rotate, hflip, vflip
        want = want[:, :, ::-1] if o.hflip else want
        want = want[:, ::-1] if o.vflip else want
        assert np.array_equal(o.apply(x).numpy(), want)
    # readers apply the stream rotation themselves; an explicit rotate replaces it when normalising
    assert source_orientation(0, NormaliseOptions(rotate=180)) == Orientation(180)
    assert source_orientation(90, NormaliseOptions(rotate=180)) == Orientation(90)
    assert source_orientation(90, NormaliseOptions(rotate="auto", hflip=True)) == Orientation(0, hflip=True)
    assert source_orientation(270, NormaliseOptions(rotate=0)) == Orientation(90)
