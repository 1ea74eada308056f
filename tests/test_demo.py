"""Demo data: real decodable files, sound and picture events coincide, determinism, manifest, cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from avssl.data.manifest import read_manifest
from avssl.data.media import probe, read_av_window
from avssl.data_tools import demo

DUR = 2.5


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    demo.make_demo_dataset(root, num_videos=4, duration=DUR, seed=3)
    return root


def _events(root: Path) -> dict:
    return json.loads((root / "events.json").read_text())


def test_files_decode_and_manifest_reads_back(demo_root: Path) -> None:
    m = read_manifest(demo_root / "manifest.csv")
    assert len(m) == 4
    assert sorted(r.meta["label"] for r in m) == sorted(demo.CLASS_NAMES)
    assert {r.split for r in m} == {"train", "val"} and len(m.filter("val")) == 1
    for r in m:
        assert Path(r.path).is_file() and Path(r.path).parent.name == r.meta["label"]
        info = probe(r.path)
        assert info.video is not None and info.audio is not None
        assert (info.video.codec, info.audio.codec) == ("h264", "aac")
        assert (info.video.width, info.video.height, info.audio.sample_rate) == (96, 96, 16000)
        assert info.duration == pytest.approx(DUR, abs=0.1)
        assert (r.start, r.end, r.fps) == (0.0, DUR, 24.0)


def _onset_notches(wave: np.ndarray, sr: int, onsets: list[float], start: float) -> list[float]:
    """Each onset is a notch in the envelope (old tone stops, new one ramps up): find it within +-40 ms."""
    hop, width = int(0.001 * sr), int(0.004 * sr)
    found = []
    for t in onsets:
        c = int(round((t - start) * sr))
        lo, hi = c - int(0.04 * sr), c + int(0.04 * sr)
        if lo < 0 or hi + width > len(wave):
            continue
        rms = [np.sqrt(np.mean(wave[a : a + width] ** 2)) for a in range(lo, hi, hop)]
        found.append(start + (lo + int(np.argmin(rms)) * hop + width / 2) / sr)
    return found


def test_audio_onsets_and_video_pitch_coincide(demo_root: Path) -> None:
    for vid, info in _events(demo_root).items():
        path = demo_root / info["path"]
        cls = demo.CLASS_NAMES.index(info["label"])
        events = [demo.Event(**e) for e in info["events"]]
        win = read_av_window(path, 0.0, DUR, fps=None, sample_rate=16000)
        if info["label"] == "sine_circle":
            # audio: onsets (previous tone still audible) are found where the event list says, within 8 ms
            close = [e.onset for i, e in enumerate(events[1:], 1) if e.onset - events[i - 1].onset < 0.3]
            found = _onset_notches(win.audio.numpy(), win.sample_rate, close, win.audio_start)
            assert len(found) >= 3
            err = np.abs(np.array(found) - np.array(close[: len(found)]))
            assert np.median(err) < 0.004 and err.max() < 0.008, (vid, err)
        # video: where the envelope is strong, the shape's height encodes the pitch of the event at that time
        onsets = np.array([e.onset for e in events])
        checked = 0
        for frame, t in zip(win.frames.numpy(), win.frame_times.numpy()):
            i = int(np.searchsorted(onsets, t + 1e-6, side="right")) - 1
            if i < 0:
                continue
            tau = np.array([t - onsets[i]])
            if demo._envelope(tau, events[i].amp)[0] < 0.35:
                continue
            ys, _ = np.nonzero(frame.max(axis=-1) > 100)
            expected = demo._pitch_to_y(demo._inst_freq(cls, events[i].freq, tau), 96)[0]
            assert len(ys) > 0, (vid, t)
            centre = (ys.min() + ys.max() + 1) / 2  # bounding box centre (a triangle's centroid is lower)
            assert abs(centre - expected) < 2.5, (vid, t, centre, expected)
            checked += 1
        assert checked >= 10


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    kw = dict(num_videos=2, duration=1.0)
    a = demo.make_demo_dataset(tmp_path / "a", seed=7, **kw)
    b = demo.make_demo_dataset(tmp_path / "b", seed=7, **kw)
    c = demo.make_demo_dataset(tmp_path / "c", seed=8, **kw)
    for rel in ("sine_circle/0000.mp4", "square_square/0001.mp4", "events.json"):
        assert (a.parent / rel).read_bytes() == (b.parent / rel).read_bytes()
    assert (a.parent / "events.json").read_bytes() != (c.parent / "events.json").read_bytes()
    assert a.read_text() == b.read_text()


def test_ensure_demo_dataset_caches(tmp_path: Path) -> None:
    m1 = demo.ensure_demo_dataset(tmp_path, num_videos=2, duration=1.0, seed=1)
    stamp = m1.stat().st_mtime_ns
    m2 = demo.ensure_demo_dataset(tmp_path, num_videos=2, duration=1.0, seed=1)
    assert m1 == m2 and m2.stat().st_mtime_ns == stamp
    m3 = demo.ensure_demo_dataset(tmp_path, num_videos=2, duration=1.0, seed=2)
    assert m3 != m1 and len(read_manifest(m3)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([m1.parent.name, m3.parent.name])
    assert demo.ensure_demo_dataset(tmp_path, num_videos=2, duration=1.0, seed=1, fps=24) == m1  # default spelled out
    with pytest.raises(TypeError):
        demo.ensure_demo_dataset(tmp_path, num_video=2)


def test_env_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AVSSL_CACHE", str(tmp_path))
    assert demo.default_cache_dir() == tmp_path / "demo"


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="num_videos=0"):
        demo.make_demo_dataset("/nonexistent-never-created", num_videos=0)
