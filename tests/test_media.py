"""Aligned A/V reading: timestamps, alignment across containers, fills, resize/rotation, reuse."""

from __future__ import annotations

import pickle
from fractions import Fraction

import av
import numpy as np
import pytest
from mediagen import detect_audio_onsets, detect_flash_times, read_frame_index

from avssl.data.media import MediaReader, probe, read_av_window, select_frames

CONTAINERS = [
    ("mp4_h264_aac.mp4", dict(vcodec="h264", acodec="aac")),
    ("mkv_vp9_opus.mkv", dict(vcodec="vp9", acodec="opus", sample_rate=48000)),
    ("mkv_h264_opus.mkv", dict(vcodec="h264", acodec="opus", sample_rate=48000)),
    ("avi_mjpeg_pcm.avi", dict(vcodec="mjpeg", acodec="pcm_s16le")),
]


def decoded_video_times(path: str) -> np.ndarray:
    """Reference: every decoded frame's pts on the file clock, with plain PyAV."""
    with av.open(path) as c:
        origin = Fraction(c.start_time, av.time_base)
        return np.asarray([float(f.pts * f.time_base - origin) for f in c.decode(video=0)])


def shift_of(truth, path: str) -> float:
    """File clock minus the generator's clock: nonzero when the container signals earlier (priming) audio."""
    return truth.origin - probe(path).start_time


@pytest.mark.parametrize("name,kw", CONTAINERS, ids=[c[0] for c in CONTAINERS])
def test_alignment_across_containers(av_file, name, kw):
    truth = av_file(name, events=(0.52, 1.64, 2.36), **kw)
    shift = shift_of(truth, truth.path)
    win = read_av_window(truth.path, 0.2, 2.6, sample_rate=16000)
    # frame times are the decoded pts, exactly
    ref = decoded_video_times(truth.path)
    ref = ref[(ref >= 0.2) & (ref < 2.8)]
    np.testing.assert_array_equal(win.frame_times.numpy(), ref)
    np.testing.assert_array_equal(win.source_frame_times.numpy(), ref)
    assert win.frames.dtype.__str__() == "torch.uint8" and win.frames.shape[1:] == (64, 96, 3)
    # the flash frames are the frames on screen at the event times
    flashes = detect_flash_times(win.frames.numpy(), win.frame_times.numpy())
    np.testing.assert_allclose(flashes, truth.video_times[truth.event_frames] + shift, atol=1e-6)
    # the audio clicks start within 1 ms of the event times
    assert win.audio_start == 0.2 and win.audio.shape == (int(round(2.6 * 16000)),)
    onsets = detect_audio_onsets(win.audio.numpy(), 16000, start=win.audio_start)
    assert len(onsets) == 3
    np.testing.assert_allclose(onsets, truth.events + shift, atol=1e-3)
    assert bool(win.audio_valid.all()) and bool(win.frames_valid.all())
    assert float(win.audio.abs().max()) <= 1.0


def test_audio_starting_late_is_placed_by_timestamp(av_file):
    truth = av_file("late_audio.mp4", audio_offset=0.5, events=(0.2, 0.8, 1.5))
    info = probe(truth.path)
    assert info.start_time == 0.0 and info.video.start_time == 0.0
    # FFmpeg reports the AAC priming frame just before the first real sample (0.5 - 1024/16000)
    assert info.audio.start_time == pytest.approx(0.5 - 1024 / 16000, abs=1e-6)
    win = read_av_window(truth.path, 0.0, 2.0)
    valid = win.audio_valid.numpy()
    k_first = int(np.argmax(valid))
    assert k_first == int(round(info.audio.start_time * 16000))
    assert not valid[:k_first].any() and valid[k_first:].all()
    assert float(win.audio[:k_first].abs().max()) == 0.0
    onsets = detect_audio_onsets(win.audio.numpy(), 16000)
    np.testing.assert_allclose(onsets, [0.8, 1.5], atol=1e-3)  # the click at 0.2 s precedes the audio
    flashes = detect_flash_times(win.frames.numpy(), win.frame_times.numpy())
    np.testing.assert_allclose(flashes, truth.video_times[truth.event_frames], atol=1e-6)


@pytest.mark.parametrize("ext", ["mkv", "mp4"])
def test_container_clock_starting_at_7s(av_file, ext):
    truth = av_file(f"start7.{ext}", start_pts_offset=7.0, vcodec="h264", acodec="aac", events=(0.6, 1.4))
    info = probe(truth.path)
    assert info.start_time == pytest.approx(truth.origin - shift_of(truth, truth.path))
    assert 6.9 <= info.start_time <= 7.0
    shift = shift_of(truth, truth.path)
    win = read_av_window(truth.path, 0.3, 1.5, fps=25)
    onsets = detect_audio_onsets(win.audio.numpy(), 16000, start=0.3)
    np.testing.assert_allclose(onsets, truth.events + shift, atol=1e-3)
    flashes = detect_flash_times(win.frames.numpy(), win.source_frame_times.numpy())
    np.testing.assert_allclose(flashes, truth.video_times[truth.event_frames] + shift, atol=1e-6)


def test_mp4_and_matroska_agree(av_file):
    a = av_file("same.mp4", vcodec="h264", acodec="aac", events=(0.7, 1.9))
    b = av_file("same.mkv", vcodec="h264", acodec="aac", events=(0.7, 1.9))
    wa = read_av_window(a.path, 0.5, 2.0, fps=10)
    wb = read_av_window(b.path, 0.5, 2.0, fps=10)
    np.testing.assert_array_equal(wa.source_frame_times.numpy(), wb.source_frame_times.numpy())
    assert (wa.frames.float() - wb.frames.float()).abs().mean() < 1.0
    oa = detect_audio_onsets(wa.audio.numpy(), 16000, start=0.5)
    ob = detect_audio_onsets(wb.audio.numpy(), 16000, start=0.5)
    np.testing.assert_allclose(oa, ob, atol=1e-3)
    np.testing.assert_allclose(oa, [0.7, 1.9], atol=1e-3)


def test_vfr_frames_selected_by_pts_not_index(av_file):
    truth = av_file("vfr.mp4", vfr=True, fps=25, duration=3.0)
    info = probe(truth.path)
    assert info.video.is_vfr is True
    win = read_av_window(truth.path, 0.25, 2.0, fps=10)
    targets = win.frame_times.numpy()
    np.testing.assert_allclose(targets, 0.25 + np.arange(20) / 10)
    expected = np.searchsorted(truth.video_times, targets + 1e-9, side="right") - 1
    got = np.asarray([read_frame_index(f) for f in win.frames.numpy()])
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(win.source_frame_times.numpy(), truth.video_times[expected], atol=1e-6)
    # the trap: an index computed from the average rate points at other frames
    naive = np.floor(targets * info.video.avg_fps + 1e-9).astype(int)
    assert (naive != expected).sum() >= 5


@pytest.mark.parametrize("sr,channels", [(16000, 1), (44100, 2), (48000, 1), (48000, 2)])
def test_sample_rates_and_channels(av_file, sr, channels):
    truth = av_file(f"sr{sr}_{channels}.mp4", sample_rate=sr, channels=channels, events=(0.4, 1.3))
    info = probe(truth.path)
    assert info.audio.sample_rate == sr and info.audio.channels == channels
    shift = shift_of(truth, truth.path)
    for out_sr in (16000, 44100):
        mono = read_av_window(truth.path, 0.1, 1.5, sample_rate=out_sr)
        assert mono.audio.shape == (int(round(1.5 * out_sr)),) and mono.sample_rate == out_sr
        np.testing.assert_allclose(
            detect_audio_onsets(mono.audio.numpy(), out_sr, start=0.1), truth.events + shift, atol=1e-3
        )
        multi = read_av_window(truth.path, 0.1, 1.5, sample_rate=out_sr, mono=False)
        assert multi.audio.shape == (channels, int(round(1.5 * out_sr)))
        if channels == 2:  # the generator writes the right channel's click at half amplitude
            k = int(round((truth.events[0] + shift - 0.1) * out_sr))
            seg = multi.audio[:, k : k + int(0.005 * out_sr)].abs().amax(dim=1)
            assert 0.4 < float(seg[1] / seg[0]) < 0.6


def test_late_audio_seek_matroska(av_file):
    """Audio seeks in Matroska land late; a window starting just before an event must still hold it."""
    truth = av_file(
        "seek.mkv", vcodec="vp9", acodec="opus", sample_rate=48000, duration=4.0, events=(2.43, 3.1)
    )
    full = read_av_window(truth.path, 0.0, 3.9, sample_rate=48000)
    for start in (2.40, 2.42, 3.05):
        win = read_av_window(truth.path, start, 0.5, sample_rate=48000)
        assert bool(win.audio_valid.all())
        k = int(round(start * 48000))
        ref = full.audio[k : k + win.num_samples].numpy()
        np.testing.assert_allclose(win.audio.numpy(), ref, atol=2e-3)
        onsets = detect_audio_onsets(win.audio.numpy(), 48000, start=start)
        assert len(onsets) >= 1 and abs(onsets[0] - truth.events[truth.events > start][0]) < 1e-3


def test_window_past_the_end_is_filled_and_flagged(av_file):
    truth = av_file("end.avi", duration=2.0)
    win = read_av_window(truth.path, 1.5, 1.0, fps=10)
    fv = win.frames_valid.numpy()
    assert fv[:5].all() and not fv[5:].any()
    # filled frames repeat the last frame of the stream
    assert np.allclose(win.source_frame_times[5:].numpy(), truth.video_times[-1])
    assert (win.frames[5:] == win.frames[5]).all()
    av_ = win.audio_valid.numpy()
    end_k = int(round((truth.audio_end - 1.5) * 16000))
    assert av_[:end_k].all() and not av_[end_k:].any()
    assert float(win.audio[end_k:].abs().max()) == 0.0
    # a window that starts before 0 is filled with the first frame
    win = read_av_window(truth.path, -0.2, 0.5, fps=10)
    assert win.frames_valid.tolist() == [False, False, True, True, True]


def test_resize_and_rotation(av_file):
    truth = av_file("rot.mp4", rotation=90, size=(96, 64))
    info = probe(truth.path)
    assert info.video.rotation == 90 and (info.video.width, info.video.height) == (96, 64)
    win = read_av_window(truth.path, 0.0, 0.5)
    assert win.frames.shape[1:] == (96, 64, 3)  # displayed: portrait
    img = win.frames[0].numpy().astype(int)
    # the red marker drawn top-left ends at the bottom-left after a counter-clockwise quarter turn
    red = (img[..., 0] > 180) & (img[..., 1] < 80) & (img[..., 2] < 80)
    ys, xs = np.nonzero(red)
    assert ys.mean() > 96 * 0.75 and xs.mean() < 64 * 0.25
    assert read_frame_index(np.rot90(img, k=-1)) == 0
    assert read_av_window(truth.path, 0.0, 0.5, size=32).frames.shape[1:] == (48, 32, 3)
    assert read_av_window(truth.path, 0.0, 0.5, size=(40, 30)).frames.shape[1:] == (40, 30, 3)
    plain = av_file("plain.mp4")
    assert read_av_window(plain.path, 0.0, 0.5, size=32).frames.shape[1:] == (32, 48, 3)


def test_media_reader_reuse_and_pickle(av_file):
    truth = av_file("reuse.mkv", duration=3.0)
    reader = MediaReader(truth.path)
    clone = pickle.loads(pickle.dumps(reader))  # nothing open yet
    starts = [2.0, 0.1, 1.3, 0.1]
    for s in starts:
        a = reader.read(s, 1.0, fps=8, size=32)
        b = read_av_window(truth.path, s, 1.0, fps=8, size=32)
        assert (a.frames == b.frames).all() and (a.audio == b.audio).all()
    clone2 = pickle.loads(pickle.dumps(reader))  # open container is dropped
    assert (clone2.read(1.0, 0.5).audio == clone.read(1.0, 0.5).audio).all()
    reader.close()
    clone.close()
    clone2.close()


def test_reader_reads_do_not_depend_on_history(av_file):
    """A window's samples are a function of (file, window) alone: decoders keep state across seeks (AAC's first
    frame after a seek differed with what was decoded before) unless each read decodes with a fresh decoder."""
    truth = av_file("history.mp4", duration=5.0, vcodec="h264", acodec="aac")
    reader = MediaReader(truth.path)
    for s in [3.1, 0.55, 2.0, 0.0, 1.0, 0.6, 4.0, 0.7, 1.3]:
        a = reader.read(s, 1.0, fps=8, size=32)
        b = read_av_window(truth.path, s, 1.0, fps=8, size=32)
        assert (a.audio == b.audio).all(), s
        assert (a.frames == b.frames).all(), s
    reader.close()


def test_probe_facts(av_file):
    truth = av_file("probe.mkv", duration=2.0, fps=25)
    info = probe(truth.path)
    v, a = info.video, info.audio
    assert info.format == "matroska,webm" and info.duration == pytest.approx(2.0, abs=0.05)
    assert v.codec == "vp9" and v.avg_fps == 25 and v.is_vfr is False and v.rotation == 0
    assert v.time_base == pytest.approx(1e-3) and v.start_time == 0.0
    assert v.duration == pytest.approx(2.0, abs=0.05)
    assert a.codec == "opus" and a.sample_rate == 48000 and a.channels == 1
    assert info.to_dict()["streams"][0]["kind"] in ("video", "audio")


def test_select_frames_logic():
    times = [0.0, 0.1, 0.35]
    idx, ft, st, valid = select_frames(times, 0.0, 0.5, 10, at_stream_end=True, frame_step=0.1)
    assert idx.tolist() == [0, 1, 1, 1, 2] and st.tolist() == [0.0, 0.1, 0.1, 0.1, 0.35]
    assert valid.tolist() == [True] * 5
    idx, *_, valid = select_frames(times, 0.0, 0.6, 10, at_stream_end=True, frame_step=0.1)
    assert valid.tolist() == [True] * 5 + [False]
    idx, ft, st, valid = select_frames(times, 0.05, 0.3, None)
    assert idx.tolist() == [1] and ft.tolist() == [0.1]


def write_flac_mkv(path, sig: np.ndarray, sr: int, fps: int, frames: int) -> None:
    """Matroska with mono FLAC ``sig`` at ``sr`` (1152-sample frames, pts = sample index) and ``frames`` H.264
    pictures at ``fps``."""
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=fps)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("flac", rate=sr)
        a.layout = "mono"
        for i in range(0, len(sig), 1152):
            fr = av.AudioFrame.from_ndarray(sig[None, i:i + 1152], format="flt", layout="mono")
            fr.sample_rate, fr.pts = sr, i
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
        for k in range(frames):
            f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), k, np.uint8), format="rgb24")
            f.pts = k
            for p in v.encode(f):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)


@pytest.mark.parametrize("sr,start", [(22050, 0.5), (44100, 0.937), (16000, 0.0)])
def test_matroska_millisecond_timestamps_give_contiguous_audio(tmp_path, sr, start):
    """Matroska keeps audio timestamps in whole milliseconds. Placing each decoded frame by its own rounded
    timestamp left overlaps and one-sample gaps (``audio_valid`` 0.998) and moved frames against each other;
    the window is now one contiguous stretch of the stream, at most half a tick (0.5 ms) off the file clock."""
    path = tmp_path / f"flac_{sr}.mkv"
    n = int(3 * sr)
    sig = (0.5 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)
    write_flac_mkv(path, sig, sr, fps=30, frames=90)
    w = read_av_window(str(path), start, 2.0, sample_rate=sr, mono=True)
    valid = np.asarray(w.audio_valid)
    audio = np.asarray(w.audio).reshape(-1)
    assert valid.all()
    i0 = round(start * sr)
    half_tick = sr // 2000 + 1
    errs = {lag: np.abs(sig[i0 + lag: i0 + lag + len(audio)] - audio).max() if i0 + lag >= 0 else np.inf
            for lag in range(-half_tick, half_tick + 1)}
    assert min(errs.values()) < 1e-4, errs  # FLAC is lossless: one lag explains every sample of the window


def test_audio_window_resamples_only_what_it_needs(tmp_path, monkeypatch):
    """A window's audio is sought ``AUDIO_PREROLL`` before it and decoded from there (decoders converge), but the
    frames that end more than ``RESAMPLE_LEAD`` before the window are not resampled; what is resampled still gives
    the window's samples, equal to the same stretch of a read of the whole file and to the tone on the file clock
    (a 200 Hz tone, lossless FLAC at 48 kHz read at 16 kHz: 1152-sample frames keep the 3:1 resampler's phase)."""
    from avssl.data import _pyav

    path = tmp_path / "tone48k.mkv"
    sr, n = 48000, 4 * 48000
    sig = (0.5 * np.sin(2 * np.pi * 200 * np.arange(n) / sr)).astype(np.float32)
    write_flac_mkv(path, sig, sr, fps=25, frames=100)
    full = read_av_window(str(path), 0.0, 3.9, sample_rate=16000, mono=True)

    seen: list[float] = []
    real = av.AudioResampler

    class Recording:
        def __init__(self, *args, **kwargs):
            self._r = real(*args, **kwargs)

        def resample(self, frame):
            if frame is not None:
                seen.append(float(frame.pts * frame.time_base) + frame.samples / frame.sample_rate)
            return self._r.resample(frame)

    monkeypatch.setattr(av, "AudioResampler", Recording)
    for start in (1.0, 1.537, 2.9):
        seen.clear()
        win = read_av_window(str(path), start, 0.8, sample_rate=16000, mono=True)
        assert bool(win.audio_valid.all())
        assert seen and min(seen) >= start - _pyav.RESAMPLE_LEAD - 1e-6, (start, min(seen))
        k = round(start * 16000)
        got = win.audio.numpy().reshape(-1)
        np.testing.assert_allclose(got, full.audio.numpy().reshape(-1)[k : k + win.num_samples], atol=1e-4)
        tone = 0.5 * np.sin(2 * np.pi * 200 * (k + np.arange(got.size)) / 16000)
        np.testing.assert_allclose(got, tone, atol=1e-4)  # and on the file clock
