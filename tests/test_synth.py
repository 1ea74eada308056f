"""The second media generator (``avssl.data_tools.synth``, ``avssl-synth``): byte-identical output for the same
arguments whatever ran before, the containers / codecs / rates / sizes it promises, events on the file clock where
``events.json`` says (decoded through avssl's own reader), distractors that are what they claim, sparser events than
the demo's, and safe writing (never over a folder it did not write)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import console_script

from avssl.data.media import probe, read_av_window
from avssl.data_tools import demo, synth

DUR = 3.0  # seconds per test recording: short, yet several events each


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One recording per container (5), 3 s each."""
    return synth.make_synth_dataset(tmp_path_factory.mktemp("synth") / "set", num_videos=len(synth.CONTAINERS),
                                    duration=DUR, seed=3)


def _listing(root: Path) -> dict[str, dict]:
    return json.loads((root / "events.json").read_text())


def _scene(seed: int, i: int, duration: float = DUR) -> tuple[synth.Scene, int]:
    rng = np.random.default_rng([seed, i])
    scene = synth.make_scene(rng, duration, synth.FAMILIES[i % len(synth.FAMILIES)])
    return scene, int(rng.integers(0, 2**31 - 1))


def test_same_arguments_same_bytes_whatever_ran_before(dataset: Path, tmp_path: Path):
    first = _digests(dataset)
    synth.make_synth_dataset(tmp_path / "other", num_videos=3, duration=2.0, seed=11)  # something else in between
    again = synth.make_synth_dataset(tmp_path / "again", num_videos=len(synth.CONTAINERS), duration=DUR, seed=3)
    assert _digests(again) == first
    other_seed = synth.make_synth_dataset(tmp_path / "seed4", num_videos=len(synth.CONTAINERS), duration=DUR, seed=4)
    differs = [k for k, v in _digests(other_seed).items() if k != "params.json" and first.get(k) != v]
    assert differs, "another seed must give other media"


@pytest.mark.parametrize("index", range(len(synth.CONTAINERS)))
def test_containers_codecs_rates_and_sizes(dataset: Path, index: int):
    spec = synth.CONTAINERS[index]
    entry = _listing(dataset)[f"{index:04d}"]
    path = dataset / entry["path"]
    assert path.suffix == spec.ext and entry["path"].split("/")[0] == synth.FAMILIES[index % len(synth.FAMILIES)]
    info = probe(path)
    v = next(s for s in info.streams if s.kind == "video")
    a = next(s for s in info.streams if s.kind == "audio")
    assert v.codec == spec.vcodec
    assert a.codec.startswith(spec.acodec)
    assert (v.width, v.height) == (spec.width, spec.height)
    assert a.sample_rate == spec.sample_rate and a.channels == 1
    assert v.avg_fps == pytest.approx(spec.fps, rel=1e-3)
    assert info.duration == pytest.approx(DUR, abs=0.06)


def test_the_set_spans_several_containers_rates_and_frame_rates():
    assert len({c.format for c in synth.CONTAINERS}) >= 4
    assert len({c.sample_rate for c in synth.CONTAINERS}) >= 4
    assert len({c.fps for c in synth.CONTAINERS}) >= 4
    assert len({(c.vcodec, c.acodec) for c in synth.CONTAINERS}) >= 4
    with pytest.raises(ValueError, match="unknown container"):
        synth.select_containers(["mp4", "flv"])


def _rms(x: np.ndarray, hop: int) -> np.ndarray:
    n = len(x) // hop
    return np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(axis=1))


@pytest.mark.parametrize("index", range(len(synth.CONTAINERS)))
def test_decoded_audio_is_the_waveform_at_its_place(dataset: Path, index: int):
    """The audio read back (at the file's own rate, no resampling) has the synthesised loudness envelope (5 ms
    frames), best aligned at lag 0 among +-40 ms: the events sound where events.json puts them, whatever the
    container's codec delay. (Envelopes, not samples: Matroska stores audio timestamps in whole milliseconds, and
    the reader places each frame by its timestamp, so FLAC frames in MKV land up to half a millisecond off.)"""
    spec = synth.CONTAINERS[index]
    scene, sub = _scene(3, index)
    ref = synth.synth_audio(scene, spec.sample_rate, sub).astype(np.float64)
    win = read_av_window(dataset / _listing(dataset)[f"{index:04d}"]["path"], 0.5, 2.0, fps=float(spec.fps),
                         sample_rate=spec.sample_rate)
    got = win.audio.numpy().reshape(-1).astype(np.float64)
    hop = spec.sample_rate // 200  # 5 ms
    a0, lags = int(round(0.5 * spec.sample_rate)), range(-8, 9)
    env = _rms(got, hop)[8:-8]

    def corr(lag: int) -> float:
        y = _rms(ref[a0 + lag * hop : a0 + lag * hop + len(got)], hop)[8 : 8 + len(env)]
        return float(np.corrcoef(env, y)[0, 1])

    best = max(lags, key=corr)
    assert best == 0, f"{spec.name}: audio displaced by {best * 5} ms"
    assert corr(0) > 0.9  # Opus and AAC are lossy


@pytest.mark.parametrize("index", range(len(synth.CONTAINERS)))
def test_decoded_frames_are_the_rendered_frames_at_their_times(dataset: Path, index: int):
    spec = synth.CONTAINERS[index]
    scene, _ = _scene(3, index)
    frames = synth.render_video(scene, spec.fps, spec.width, spec.height).astype(np.float64)
    win = read_av_window(dataset / _listing(dataset)[f"{index:04d}"]["path"], 0.0, DUR, fps=float(spec.fps))
    got = win.frames.numpy().astype(np.float64)
    assert got.shape == frames.shape
    err = np.abs(got - frames).mean(axis=(1, 2, 3))
    shifted = np.abs(got[1:] - frames[:-1]).mean(axis=(1, 2, 3))
    assert err.mean() < 6.0  # codec error only (of 255)
    assert err[1:].mean() < shifted.mean()  # frame k is the scene at k / fps, not at a neighbour's time


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_events_show_and_sound_where_they_say_and_distractors_are_what_they_claim(seed: int):
    """Over several scenes: the picture changes exactly while a visible source's events sound (onset to end of
    the visual release) and so does the waveform (onset to end of the audio release); the decoy changes the
    picture and never the sound; off-screen sounds change the sound and never the picture."""
    import dataclasses

    fps, size, sr = 25, 64, 16000
    for i in range(4):
        scene, sub = _scene(seed, i, duration=8.0)
        frames = synth.render_video(scene, fps, size, size)
        audio = synth.synth_audio(scene, sr, sub)
        times, ts = np.arange(len(frames)) / fps, np.arange(len(audio)) / sr

        def spans(evs: tuple[synth.SynthEvent, ...], t: np.ndarray, release: float) -> np.ndarray:
            inside = np.zeros(len(t), bool)
            for e in evs:
                inside |= (t >= e.onset) & (t < e.onset + e.duration + release)
            return inside

        for j in range(len(scene.sources)):
            mine = tuple(e for e in scene.events if e.source == j)
            rest = dataclasses.replace(scene, events=tuple(e for e in scene.events if e.source != j))
            changed = (frames != synth.render_video(rest, fps, size, size)).any(axis=(1, 2, 3))
            assert np.array_equal(changed, spans(mine, times, synth.VISUAL_RELEASE)), (seed, i, j)
            heard = np.abs(audio - synth.synth_audio(rest, sr, sub)) > 1e-7
            assert not (heard & ~spans(mine, ts, synth.RELEASE + 1.0 / sr)).any(), (seed, i, j)
            assert heard[spans(mine, ts, synth.RELEASE)].mean() > 0.9, (seed, i, j)
        no_decoy = dataclasses.replace(scene, decoy_events=())
        changed = (frames != synth.render_video(no_decoy, fps, size, size)).any(axis=(1, 2, 3))
        assert np.array_equal(changed, spans(scene.decoy_events, times, synth.VISUAL_RELEASE))
        assert np.array_equal(audio, synth.synth_audio(no_decoy, sr, sub))  # the decoy is silent
        no_off = dataclasses.replace(scene, offscreen=())
        assert np.array_equal(frames, synth.render_video(no_off, fps, size, size))  # off-screen: nothing shows
        heard = np.abs(audio - synth.synth_audio(no_off, sr, sub)) > 1e-7
        assert not (heard & ~spans(scene.offscreen, ts, synth.RELEASE + 1.0 / sr)).any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_events_are_sparser_and_longer_than_the_demos(seed: int):
    duration = 60.0
    scene, _ = _scene(seed, 0, duration=duration)
    rate = len(scene.events) / duration
    demo_events = demo.make_events(np.random.default_rng(seed), duration, 0.15, 0.4)
    demo_rate = len(demo_events) / duration
    assert 0.7 <= rate <= 1.4 and rate < demo_rate / 2.5
    # the distractor streams at their rates (Poisson; 60 s: loose bounds)
    assert 0.5 * synth.DECOY_RATE < len(scene.decoy_events) / duration < 1.5 * synth.DECOY_RATE
    assert 0.5 * synth.OFFSCREEN_RATE < len(scene.offscreen) / duration < 1.5 * synth.OFFSCREEN_RATE
    durations = [e.duration for e in scene.events]
    assert min(durations) >= synth.EVENT_DURATION[0] and max(durations) <= synth.EVENT_DURATION[1]
    gaps = [b.onset - (a.onset + a.duration) for a, b in zip(scene.events, scene.events[1:])]
    assert min(gaps) >= synth.EVENT_GAP[0] - 1e-6  # one visible source sounds at a time
    # most 0.5 s windows hold part of a visible event (the rest: silence, as in real recordings)
    starts = np.arange(0.0, duration - 0.5, 0.05)
    covered = np.array([synth.event_coverage(scene.events, s, 0.5) > 0.05 for s in starts])
    assert 0.8 < covered.mean() < 1.0


def test_existing_folders_are_kept_or_refused(tmp_path: Path):
    out = synth.make_synth_dataset(tmp_path / "a", num_videos=2, duration=1.0, seed=0, containers=["mkv"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert synth.make_synth_dataset(out, num_videos=2, duration=1.0, seed=0, containers=["mkv"]) == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # same parameters: kept as it is
    with pytest.raises(FileExistsError, match="not a synth dataset with these parameters"):
        synth.make_synth_dataset(out, num_videos=3, duration=1.0, seed=0, containers=["mkv"])
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        synth.make_synth_dataset(foreign, num_videos=1, duration=1.0)
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "mine"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="num_videos"):
        synth.make_synth_dataset(tmp_path / "b", num_videos=0)


def test_console_script_from_outside_the_repository(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    exe = console_script("avssl-synth")
    proc = subprocess.run([exe, "set", "--num-videos", "2", "--duration", "1.5", "--seed", "2",
                           "--containers", "webm,avi"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads((tmp_path / "set" / "events.json").read_text())
    assert [Path(e["path"]).suffix for e in listing.values()] == [".webm", ".avi"]
    direct = synth.make_synth_dataset(tmp_path / "direct", num_videos=2, duration=1.5, seed=2,
                                      containers=["webm", "avi"])
    assert _digests(direct) == _digests(tmp_path / "set")
    bad = subprocess.run([exe, "x", "--containers", "mp4,flv"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "flv" in bad.stderr and not (tmp_path / "x").exists()
