"""Synthetic test media, encoded with PyAV, with known ground truth.

Every generated file shows a picture with an asymmetric layout (a red marker in the top-left corner, colour
gradients) and the frame index written as 8 black/white cells in a bottom stripe, so tests can tell which frame they
got (``read_frame_index``). Each event time ``t`` is drawn as a white flash on the frame that is on screen at ``t``
and as an audio click whose first sample sits at ``t`` (rounded to the audio sample grid). Times in
``MediaTruth`` are seconds on the file clock (origin = earliest stream start), see docs/time.md.

Typical use::

    truth = make_av_file(tmp_path / "a.mp4", events=[0.5, 1.7], audio_offset=0.5)
    win = read_av_window(truth.path, 0.0, 2.0)
    onsets = detect_audio_onsets(win.audio.numpy(), win.sample_rate, start=win.audio_start)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

from avssl.data.encoding import audio_frame

__all__ = [
    "MediaTruth",
    "make_av_file",
    "make_garbage_file",
    "make_truncated_copy",
    "render_frame",
    "read_frame_index",
    "detect_audio_onsets",
    "detect_flash_times",
    "CLICK_FREQ",
]

_VIDEO_ENCODERS = {"h264": "libx264", "vp9": "libvpx-vp9", "mjpeg": "mjpeg", "mpeg4": "mpeg4"}
_AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "pcm_s16le": "pcm_s16le", "flac": "flac"}
_FORMATS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "avi": "avi"}
CLICK_FREQ = 1000.0  # Hz, carrier of the click burst
_VFR_PATTERN = (1, 1, 3, 1, 2, 5, 1, 2)  # frame durations in units of 1/(2*fps) ... see _frame_times
_BITS = 8


@dataclass(frozen=True)
class MediaTruth:
    """What a generated file contains. Times are seconds on the file clock (origin 0)."""

    path: str
    container: str
    duration: float
    origin: float  # expected container start time (the streams' own clock), seconds
    video_times: np.ndarray  # pts of every frame, file clock
    audio_start: float | None  # time of the first audio sample, file clock
    audio_end: float | None
    events: np.ndarray  # event times, file clock
    event_frames: np.ndarray  # index of the flash frame of each event
    fps: float
    size: tuple[int, int]  # (width, height) as stored (before display rotation)
    sample_rate: int
    channels: int
    rotation: int
    vfr: bool
    extra: dict = field(default_factory=dict)


def render_frame(index: int, width: int, height: int, flash: bool = False) -> np.ndarray:
    """The picture of frame ``index``: uint8 [H, W, 3] (asymmetric; index in the bottom stripe)."""
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (40 + 120 * x + 0 * y).astype(np.uint8)
    img[..., 1] = (40 + 120 * y + 0 * x).astype(np.uint8)
    img[..., 2] = 90
    stripe = max(8, height // 6)
    if flash:
        img[: height - stripe] = 250
    mh, mw = max(4, height // 5), max(4, width // 5)
    img[2 : 2 + mh, 2 : 2 + mw] = (230, 20, 20)
    cw = width // _BITS
    for b in range(_BITS):
        v = 255 if (index >> b) & 1 else 0
        img[height - stripe :, b * cw : (b + 1) * cw] = v
    return img


def read_frame_index(frame: np.ndarray) -> int:
    """Decode the frame index drawn by ``render_frame`` (unrotated, decoded at any size)."""
    h, w = frame.shape[:2]
    stripe = max(2, int(round(h / 6 * 0.5)))
    row = frame[h - stripe : h - 1].astype(np.float32).mean(axis=(0, 2))
    cw = w / _BITS
    value = 0
    for b in range(_BITS):
        cell = row[int(b * cw + cw * 0.3) : int(b * cw + cw * 0.7)]
        if cell.mean() > 127:
            value |= 1 << b
    return value


def _frame_times(duration: float, fps: float, vfr: bool) -> np.ndarray:
    if not vfr:
        return np.arange(int(round(duration * fps)), dtype=np.float64) / fps
    times, t, i = [], 0.0, 0
    unit = 1.0 / (2 * fps)
    while t < duration - 1e-9:
        times.append(t)
        t += _VFR_PATTERN[i % len(_VFR_PATTERN)] * unit
        i += 1
    return np.asarray(times, np.float64)


def _click(sample_rate: int) -> np.ndarray:
    n = np.arange(int(0.012 * sample_rate))
    return (
        0.8 * np.cos(2 * np.pi * CLICK_FREQ * n / sample_rate) * np.exp(-n / (0.004 * sample_rate))
    ).astype(np.float32)


def make_av_file(
    path: str | os.PathLike[str],
    *,
    container: str | None = None,
    vcodec: str | None = "default",
    acodec: str | None = "default",
    duration: float = 3.0,
    fps: float = 25,
    size: tuple[int, int] = (96, 64),
    sample_rate: int = 16000,
    channels: int = 1,
    audio_offset: float = 0.0,
    audio_duration: float | None = None,
    start_pts_offset: float = 0.0,
    vfr: bool = False,
    events: Sequence[float] = (0.52, 1.64),
    gop: int | None = None,
    rotation: int = 0,
    tone: float = 0.02,
) -> MediaTruth:
    """Encode a test file and return its ground truth.

    ``container`` defaults to the file suffix (mp4, mov, mkv, webm, avi). ``vcodec``/``acodec`` name codecs
    (h264, vp9, mjpeg, mpeg4 / aac, opus, pcm_s16le, flac); ``"default"`` picks the usual pair for the container
    and ``None`` leaves that stream out. ``size`` is (width, height). ``audio_offset`` > 0 starts the audio that
    many seconds after the video (< 0: before). ``start_pts_offset`` adds a constant to every timestamp (the
    container clock then starts there). ``vfr`` uses irregular frame durations (average rate != ``fps``).
    ``gop`` is the keyframe interval in frames (default 2 s). ``rotation`` writes a display matrix
    (counter-clockwise degrees). ``events`` are file-clock times where the video flashes and the audio clicks
    (audio clicks only where audio exists). The audio lasts ``audio_duration`` (default: to the end of the video).
    """
    path = os.fspath(path)
    container = container or os.path.splitext(path)[1].lstrip(".").lower()
    if container not in _FORMATS:
        raise ValueError(f"unknown container {container!r}")
    if vcodec == "default":
        vcodec = {"mp4": "h264", "mov": "h264", "mkv": "vp9", "webm": "vp9", "avi": "mjpeg"}[container]
    if acodec == "default":
        acodec = {"mp4": "aac", "mov": "aac", "mkv": "opus", "webm": "opus", "avi": "pcm_s16le"}[container]
    width, height = size
    # file clock: origin = earliest stream start
    v0 = 0.0 if audio_offset >= 0 or acodec is None else -audio_offset
    a0 = max(audio_offset, 0.0) if vcodec is not None else 0.0
    vtimes = _frame_times(duration, fps, vfr) + v0 if vcodec is not None else np.zeros(0)
    video_end = (vtimes[-1] + 1.0 / fps) if len(vtimes) else duration
    events_arr = np.asarray(sorted(events), np.float64)

    out = av.open(path, mode="w", format=_FORMATS[container])
    try:
        vs = ast = None
        if vcodec is not None:
            if container == "avi" or not (vfr or start_pts_offset):
                vtb = Fraction(1, int(fps)) if float(fps).is_integer() else Fraction(1, 1000)
            else:
                vtb = Fraction(1, 1000)
            if vfr and container == "avi":
                raise ValueError("AVI cannot hold variable frame rate here")
            vs = out.add_stream(_VIDEO_ENCODERS[vcodec], rate=Fraction(fps).limit_denominator(1001))
            vs.width, vs.height = width, height
            vs.pix_fmt = "yuvj420p" if vcodec == "mjpeg" else "yuv420p"
            vs.time_base = vtb
            vs.codec_context.time_base = vtb
            vs.codec_context.gop_size = int(gop if gop is not None else max(1, round(2 * fps)))
            if vcodec == "h264":
                vs.codec_context.options = {"preset": "veryfast", "crf": "18"}
            elif vcodec == "vp9":
                vs.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "crf": "20", "b": "0"}
            elif vcodec == "mjpeg":
                vs.codec_context.options = {"q:v": "3"}
            if rotation:
                vs.set_display_rotation(rotation)
        if acodec is not None:
            ast = out.add_stream(_AUDIO_ENCODERS[acodec], rate=sample_rate)
            ast.codec_context.layout = "mono" if channels == 1 else "stereo"
            ast.time_base = Fraction(1, sample_rate)
            ast.codec_context.time_base = Fraction(1, sample_rate)

        if vs is not None:
            flash_idx = []
            for t in events_arr:
                k = int(np.searchsorted(vtimes, t + 1e-9, side="right") - 1)
                flash_idx.append(max(k, 0))
            flash_set = set(flash_idx)
            vtb = vs.codec_context.time_base
            for i, t in enumerate(vtimes):
                img = render_frame(i, width, height, flash=i in flash_set)
                fr = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format=vs.pix_fmt)
                fr.pts = int(round((t + start_pts_offset) / vtb))
                fr.time_base = vtb
                for pkt in vs.encode(fr):
                    out.mux(pkt)
            for pkt in vs.encode(None):
                out.mux(pkt)
            event_frames = np.asarray(flash_idx, np.int64)
        else:
            event_frames = np.zeros(0, np.int64)

        audio_start = audio_end = None
        if ast is not None:
            a_dur = audio_duration if audio_duration is not None else (video_end - a0)
            n_total = int(round(a_dur * sample_rate))
            fsz = ast.codec_context.frame_size or 1024
            n_total = -(-n_total // fsz) * fsz
            t = np.arange(n_total) / sample_rate
            sig = np.zeros((channels, n_total), np.float32)
            for c in range(channels):
                sig[c] = tone * np.sin(2 * np.pi * (220.0 * (c + 1)) * (t + a0))
            click = _click(sample_rate)
            for te in events_arr:
                k = int(round((te - a0) * sample_rate))
                if 0 <= k < n_total:
                    n = min(len(click), n_total - k)
                    for c in range(channels):
                        sig[c, k : k + n] += click[:n] / (c + 1)
            fmt = ast.codec_context.format.name
            layout = ast.codec_context.layout.name
            pts0 = int(round((a0 + start_pts_offset) * sample_rate))
            for s in range(0, n_total, fsz):
                fr = audio_frame(sig[:, s : s + fsz], fmt, layout, sample_rate)
                fr.pts = pts0 + s
                fr.time_base = Fraction(1, sample_rate)
                for pkt in ast.encode(fr):
                    out.mux(pkt)
            for pkt in ast.encode(None):
                out.mux(pkt)
            audio_start = a0
            audio_end = a0 + n_total / sample_rate
    finally:
        out.close()

    ends = [video_end if vs is not None else 0.0, audio_end or 0.0]
    return MediaTruth(
        path=path,
        container=container,
        duration=max(ends),
        origin=start_pts_offset + (min(v0, a0) if (vs is not None and ast is not None) else 0.0),
        video_times=vtimes,
        audio_start=audio_start,
        audio_end=audio_end,
        events=events_arr,
        event_frames=event_frames,
        fps=float(fps),
        size=(width, height),
        sample_rate=sample_rate,
        channels=channels,
        rotation=rotation,
        vfr=vfr,
        extra={"vcodec": vcodec, "acodec": acodec},
    )


def make_truncated_copy(
    src: str | os.PathLike[str], dst: str | os.PathLike[str], fraction: float = 0.5
) -> str:
    """Copy the first ``fraction`` of the bytes of ``src`` (a file cut off mid-write)."""
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return os.fspath(dst)


def make_garbage_file(dst: str | os.PathLike[str], nbytes: int = 4096, seed: int = 0) -> str:
    """Random bytes with a media suffix."""
    with open(dst, "wb") as f:
        f.write(np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8).tobytes())
    return os.fspath(dst)


def detect_audio_onsets(
    audio: np.ndarray, sample_rate: int, start: float = 0.0, threshold: float = 0.3, refractory: float = 0.1
) -> np.ndarray:
    """Times (seconds, ``start`` + k / sr) of click onsets: first sample above ``threshold`` in magnitude."""
    x = np.abs(np.asarray(audio, np.float32))
    if x.ndim == 2:
        x = x.max(axis=0)
    idx = np.flatnonzero(x > threshold)
    onsets: list[int] = []
    for i in idx:
        if not onsets or i - onsets[-1] > refractory * sample_rate:
            onsets.append(int(i))
    return start + np.asarray(onsets, np.float64) / sample_rate


def detect_flash_times(frames: np.ndarray, frame_times: np.ndarray) -> np.ndarray:
    """Times of frames whose upper part is (almost) white: the flashes drawn for events."""
    f = np.asarray(frames)
    h = f.shape[1]
    bright = f[:, h // 4 : h // 2].astype(np.float32).mean(axis=(1, 2, 3)) > 200
    return np.asarray(frame_times, np.float64)[bright]
