"""AVClipDataset / FolderDataset: sample contract, same-time cutting, determinism, bad files across workers."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mediagen import make_av_file, make_garbage_file
from torch.utils.data import DataLoader

from avssl.data import datasets as dsmod
from avssl.data.datasets import AVClipDataset, TooManyBadFiles, from_folder
from avssl.data.features import FbankConfig, log_mel, normalize, num_frames
from avssl.data.manifest import ManifestRow, read_manifest, write_manifest
from avssl.data.media import read_av_window
from avssl.data.sampling import ClipSpec
from avssl.data_tools.demo import CLASS_NAMES, make_demo_dataset

DUR = 3.0
CLIP = ClipSpec(num_segments=4, segment_duration=0.5, audio_jitter=0.05)


@pytest.fixture(scope="module")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_videos=4, duration=DUR, seed=5)


def _raw_video(frames: torch.Tensor) -> torch.Tensor:
    """[S, T, H, W, 3] uint8 -> [S, 3, T, H, W] float without resizing (to compare with direct reads)."""
    return frames.permute(0, 4, 1, 2, 3).float()


def test_sample_contract(demo_manifest: Path) -> None:
    ds = AVClipDataset(demo_manifest, clip=CLIP, fps=8, frame_size=32, mode="random")
    assert len(ds) == 4 and ds.classes == sorted(CLASS_NAMES)
    s = ds[1]
    f = num_frames(8000, FbankConfig())
    assert s["video"].shape == (4, 3, 4, 32, 32) and s["video"].dtype == torch.float32
    assert s["audio"].shape == (4, 1, f, 128) and s["audio"].dtype == torch.float32
    assert s["video_valid"].shape == (4, 4) and s["video_valid"].all()
    assert s["audio_valid"].shape == (4, f) and s["audio_valid"].dtype == torch.bool
    assert s["segment_starts"].dtype == torch.float64
    assert torch.allclose(s["segment_starts"].diff(), torch.full((3,), 0.5, dtype=torch.float64))
    assert 0 <= s["segment_starts"][0] <= DUR - 2.0
    assert ds.classes[int(s["label"])] == Path(s["path"]).parent.name
    assert int(s["index"]) == 1 and int(s["num_skipped"]) == 0


def test_segments_cut_at_same_times_as_direct_reads(demo_manifest: Path) -> None:
    ds = AVClipDataset(demo_manifest, clip=CLIP, fps=8, video_transform=_raw_video, mode="random", seed=3)
    for i in range(2):
        s = ds[i]
        cut, v_starts, a_starts = ds.read_clip(i)
        assert s["segment_starts"].tolist() == v_starts == ds.clip_times(i)[0]
        assert torch.equal(s["video"], _raw_video(cut.frames))
        offsets = torch.tensor(a_starts) - torch.tensor(v_starts)
        assert offsets.abs().max() <= 0.05 and offsets.abs().max() > 0  # jitter moves audio only
        for k in range(4):
            # frames: exactly those of an independent read of the segment
            w = read_av_window(s["path"], v_starts[k], 0.5, fps=8)
            assert torch.equal(cut.frames[k], w.frames) and cut.frames_valid[k].all()
            # audio: an independent read of the jittered segment, up to rounding onto the window's sample grid
            ref = read_av_window(s["path"], a_starts[k], 0.5, fps=8).audio
            got = cut.audio[k]
            # mean, not max: reads that start at different packets differ locally by a few 1e-2 (AAC decoding)
            errs = [(got[8:-8] - ref[8 + d : len(ref) - 8 + d]).abs().mean().item() for d in (-1, 0, 1)]
            assert min(errs) < 2e-3 < max(errs), (i, k, errs)
            assert ref.abs().max() > 0.05  # the comparison is not between silences
        # the spectrogram is the normalised log-mel of the cut audio
        cfg = ds.fbank
        assert torch.allclose(s["audio"][:, 0], normalize(log_mel(cut.audio, cfg), cfg), atol=1e-5)


def test_epochs_deterministic_in_any_worker(demo_manifest: Path) -> None:
    ds = AVClipDataset(demo_manifest, clip=CLIP, fps=8, frame_size=32, mode="random", seed=1)
    seq = [ds[i] for i in range(len(ds))]
    loader = DataLoader(ds, batch_size=1, num_workers=2)
    par = list(loader)
    for a, b in zip(seq, par):
        assert torch.equal(a["segment_starts"], b["segment_starts"][0])
        assert torch.equal(a["video"], b["video"][0]) and torch.equal(a["audio"], b["audio"][0])
    ds.set_epoch(1)
    moved = [ds.clip_times(i)[0][0] for i in range(len(ds))]
    assert moved != [float(x["segment_starts"][0]) for x in seq]
    again = AVClipDataset(demo_manifest, clip=CLIP, fps=8, frame_size=32, mode="random", seed=1)
    again.set_epoch(1)
    assert [again.clip_times(i)[0][0] for i in range(len(ds))] == moved


def test_uniform_and_center_modes(demo_manifest: Path) -> None:
    clip = ClipSpec(num_segments=2, segment_duration=0.5)
    grid = AVClipDataset(demo_manifest, clip=clip, mode="uniform")
    assert len(grid) == 4 * 3  # back-to-back 1 s clips in 3 s files
    assert [grid.clip_times(i)[0][0] for i in range(3)] == [0.0, 1.0, 2.0]
    three = AVClipDataset(demo_manifest, clip=CLIP, mode="uniform", clips_per_row=3)
    assert len(three) == 12 and [three.clip_times(i)[0][0] for i in range(3)] == [0.0, 0.5, 1.0]
    three.set_epoch(5)  # fixed grids do not move with the epoch, and have no audio jitter
    assert three.clip_times(1) == ([0.5, 1.0, 1.5, 2.0], [0.5, 1.0, 1.5, 2.0])
    center = AVClipDataset(demo_manifest, clip=CLIP, mode="center", split="val")
    assert len(center) == 1 and center.classes == sorted(CLASS_NAMES)  # classes from all rows, not just val
    assert center.clip_times(0)[0][0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="mode"):
        AVClipDataset(demo_manifest, clip=CLIP, mode="shuffle")  # type: ignore[arg-type]


def _with_bad(demo_manifest: Path, tmp_path: Path, n_bad: int) -> Path:
    rows = list(read_manifest(demo_manifest))
    for b in range(n_bad):
        bad = make_garbage_file(tmp_path / f"broken{b}.mp4", seed=b)
        rows.insert(1 + b, replace(rows[0], path=bad, meta={"label": "sine_circle"}))
    return write_manifest(tmp_path / "m.csv", rows)


def test_bad_file_skipped_and_counted_across_workers(demo_manifest: Path, tmp_path: Path) -> None:
    m = _with_bad(demo_manifest, tmp_path, 1)
    ds = AVClipDataset(m, clip=CLIP, fps=8, frame_size=32, max_bad_fraction=0.5)
    assert len(ds) == 5
    paths: list[str] = []
    skipped = 0
    for batch in DataLoader(ds, batch_size=2, num_workers=2):
        paths += batch["path"]
        skipped += int(batch["num_skipped"].sum())
    assert skipped == 1 and len(paths) == 5
    assert not any("broken" in p for p in paths)
    assert paths[1] == paths[2]  # the broken item 1 was replaced by the next one, deterministically


def test_bad_file_logged_once(demo_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = _with_bad(demo_manifest, tmp_path, 1)
    ds = AVClipDataset(m, clip=CLIP, fps=8, frame_size=32, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="avssl.data.datasets"):
        for _ in range(2):
            assert [int(ds[i]["num_skipped"]) for i in range(len(ds))] == [0, 1, 0, 0, 0]
    msgs = [r.getMessage() for r in caplog.records if "broken0.mp4" in r.getMessage()]
    assert len(msgs) == 1 and "skipping" in msgs[0]
    assert list(ds.bad_items) == [1]


def test_too_many_bad_files(demo_manifest: Path, tmp_path: Path) -> None:
    m = _with_bad(demo_manifest, tmp_path, 3)
    ds = AVClipDataset(m, clip=CLIP, fps=8, frame_size=32, max_bad_fraction=0.1)
    with pytest.raises(TooManyBadFiles, match="max_bad_fraction=0.1"):
        for i in range(len(ds)):
            ds[i]
    with pytest.raises(TooManyBadFiles):
        list(DataLoader(AVClipDataset(m, clip=CLIP, fps=8, frame_size=32), batch_size=2, num_workers=2))


def test_missing_audio(tmp_path: Path) -> None:
    truth = make_av_file(tmp_path / "silent.mp4", acodec=None, duration=2.5, size=(64, 48))
    rows = [ManifestRow(path=truth.path, start=0.0, end=2.5, split="train")]
    s = AVClipDataset(rows, clip=CLIP, fps=8, frame_size=32, mode="center", label_column=None)[0]
    assert not s["audio_valid"].any() and torch.all(s["audio"] == 0) and s["video_valid"].all()
    assert int(s["label"]) == -1
    strict = AVClipDataset(rows, clip=CLIP, fps=8, mode="center", allow_missing_audio=False, max_bad_fraction=1.0)
    with pytest.raises(TooManyBadFiles, match="silent.mp4"):
        strict[0]


def test_short_rows_dropped(demo_manifest: Path) -> None:
    rows = list(read_manifest(demo_manifest))
    rows[0] = replace(rows[0], end=1.5)  # shorter than a 2 s clip
    ds = AVClipDataset(rows, clip=CLIP)
    assert ds.num_short_rows == 1 and len(ds) == 3


def test_folder_dataset_and_probe_cache(demo_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "videos"
    shutil.copytree(demo_manifest.parent, root)
    make_garbage_file(root / "noise_ring" / "broken.mp4")
    ds = from_folder(root, clip=CLIP, fps=8, frame_size=32, mode="center")
    assert len(ds) == 4 and ds.classes == sorted(CLASS_NAMES)
    for i in range(len(ds)):
        assert ds.classes[int(ds.label_of(ds.rows[i]))] == Path(ds.rows[i].path).parent.name
        assert ds.rows[i].duration == pytest.approx(DUR, abs=0.1) and ds.rows[i].has_audio
    assert (root / ".avssl_cache" / "probe.json").is_file()
    calls: list[str] = []
    real_probe = dsmod.probe

    def counting_probe(p):  # type: ignore[no-untyped-def]
        calls.append(os.fspath(p))
        return real_probe(p)

    monkeypatch.setattr(dsmod, "probe", counting_probe)
    assert len(from_folder(root, clip=CLIP)) == 4 and calls == []  # all from the cache, broken file included
    target = root / "sine_circle" / "0000.mp4"
    os.utime(target, ns=(1, 1))
    assert len(from_folder(root, clip=CLIP)) == 4 and calls == [os.fspath(target)]
    s = ds[0]
    assert s["video"].shape == (4, 3, 4, 32, 32)
