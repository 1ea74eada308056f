"""Normalise one recording with PyAV: upright picture, constant frame rate, fixed short side, 16 kHz mono audio
placed by its timestamps, both streams starting at time 0 of the source's file clock.

Output: an MP4 (H.264 + AAC) written under a temporary name and renamed, plus per-frame and per-10-ms statistics
(``*.stats.npz``) that the quality flags are computed from, so no second decoding pass is needed.
Encoding is deterministic (``avssl.data.encoding``): fixed x264 options, one encoder thread, bit-exact muxing, no
timestamps in metadata.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from avssl.data.encoding import add_h264_stream
from avssl.data.errors import DecodeError, MissingStreamError
from avssl.data.types import MediaInfo

STATS_VERSION = 2  # 2: luma from the Y plane (full range), taken before rotation
AUDIO_BLOCKS_PER_S = 100  # audio statistics resolution: 10 ms blocks


@dataclass(frozen=True)
class NormaliseOptions:
    """How a recording is normalised (``prep.normalise`` in the config)."""

    fps: float = 30.0
    short_side: int | None = 256  # None keeps the source size (rounded to even)
    rotate: str | int = "auto"  # "auto": the stream's rotation metadata; or 0/90/180/270 (counter-clockwise)
    hflip: bool = False
    vflip: bool = False
    sample_rate: int = 16000
    gop_s: float = 1.0  # keyframe interval
    crf: int = 23
    preset: str = "veryfast"
    audio_bitrate: int = 64000
    audio_jitter_s: float = 0.01  # audio timestamp gaps/overlaps up to this are container rounding, not gaps
    clip_level: float = 0.999  # |sample| at or above this counts as clipped
    debug_sleep_per_frame_s: float = 0.0  # test hook: slow the transcode down (kill -9 tests)

    def key(self) -> dict[str, Any]:
        """Everything that changes the output media (the resume check compares it)."""
        d = asdict(self)
        d.pop("debug_sleep_per_frame_s")
        d["rotate"] = str(d["rotate"])
        return d


@dataclass
class NormaliseResult:
    """Facts about a normalised recording (stored as JSON next to it)."""

    width: int
    height: int
    fps: float
    sample_rate: int
    num_frames: int
    num_samples: int
    duration: float
    rotation_applied: int
    has_source_audio: bool
    video_start: float  # source video/audio start and end on the file clock (seconds)
    video_end: float
    audio_start: float | None
    audio_end: float | None
    declared_duration: float | None
    no_audio: list[list[float]] = field(default_factory=list)  # [start, end) spans padded (no source audio)
    no_video: list[list[float]] = field(default_factory=list)  # spans where no source frame was on screen
    decode_errors: int = 0
    decode_error_times: list[float] = field(default_factory=list)  # last good video time before each error
    seconds: float = 0.0  # wall time of the transcode


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def output_size(width: int, height: int, rotation: int, short_side: int | None) -> tuple[int, int]:
    """(width, height) of the upright output for a ``width`` x ``height`` source rotated by ``rotation``."""
    w, h = (height, width) if rotation % 180 else (width, height)
    if short_side is None:
        return _even(w), _even(h)
    s = min(w, h)
    return _even(w * short_side / s), _even(h * short_side / s)


class _Spans:
    """Collects [start, end) sample/frame index spans where a condition holds."""

    def __init__(self) -> None:
        self.spans: list[list[int]] = []

    def add(self, a: int, b: int) -> None:
        if b <= a:
            return
        if self.spans and self.spans[-1][1] == a:
            self.spans[-1][1] = b
        else:
            self.spans.append([a, b])


class _AudioSink:
    """Receives the output audio in order, encodes it in 1024-sample frames and keeps 10-ms block statistics."""

    FRAME = 1024

    def __init__(self, stream: av.audio.stream.AudioStream | None, out: av.container.OutputContainer | None,
                 sample_rate: int, clip_level: float):
        self.stream, self.out, self.sr, self.clip = stream, out, sample_rate, clip_level
        self.block = sample_rate // AUDIO_BLOCKS_PER_S
        self.pos = 0  # samples received so far (== next sample index)
        self.pending = np.zeros(0, np.float32)
        self.encoded = 0
        self.stat_buf = np.zeros(0, np.float32)
        self.valid_buf = np.zeros(0, bool)
        self.sumsq: list[np.ndarray] = []
        self.peak: list[np.ndarray] = []
        self.clipped: list[np.ndarray] = []
        self.nvalid: list[np.ndarray] = []
        self.invalid = _Spans()

    def push(self, samples: np.ndarray, valid: bool) -> None:
        n = int(samples.shape[0])
        if n == 0:
            return
        if not valid:
            self.invalid.add(self.pos, self.pos + n)
        self.pos += n
        self.stat_buf = np.concatenate([self.stat_buf, samples])
        self.valid_buf = np.concatenate([self.valid_buf, np.full(n, valid)])
        self._stats(final=False)
        if self.stream is not None:
            self.pending = np.concatenate([self.pending, samples])
            while self.pending.shape[0] >= 2 * self.FRAME:
                self._encode(self.pending[: self.FRAME])
                self.pending = self.pending[self.FRAME:]

    def _stats(self, final: bool) -> None:
        nb = self.stat_buf.shape[0] // self.block
        if final and self.stat_buf.shape[0] % self.block:
            pad = self.block - self.stat_buf.shape[0] % self.block
            self.stat_buf = np.concatenate([self.stat_buf, np.zeros(pad, np.float32)])
            self.valid_buf = np.concatenate([self.valid_buf, np.zeros(pad, bool)])
            nb += 1
        if nb == 0:
            return
        x = self.stat_buf[: nb * self.block].reshape(nb, self.block)
        v = self.valid_buf[: nb * self.block].reshape(nb, self.block)
        xv = np.where(v, x, 0.0)
        self.sumsq.append((xv.astype(np.float64) ** 2).sum(1).astype(np.float32))
        self.peak.append(np.abs(xv).max(1).astype(np.float32))
        self.clipped.append((np.abs(xv) >= self.clip).sum(1).astype(np.int32))
        self.nvalid.append(v.sum(1).astype(np.int32))
        self.stat_buf = self.stat_buf[nb * self.block:]
        self.valid_buf = self.valid_buf[nb * self.block:]

    def _encode(self, chunk: np.ndarray | None) -> None:
        assert self.stream is not None and self.out is not None
        if chunk is None:
            packets = self.stream.encode(None)
        else:
            frame = av.AudioFrame.from_ndarray(chunk[None, :].astype(np.float32), format="fltp", layout="mono")
            frame.sample_rate = self.sr
            frame.pts = self.encoded
            frame.time_base = Fraction(1, self.sr)
            self.encoded += chunk.shape[0]
            packets = self.stream.encode(frame)
        self.out.mux(packets)

    def finish(self, total: int) -> None:
        """Pad (marked invalid) or trim to exactly ``total`` samples, then flush the encoder."""
        if self.pos < total:
            self.push(np.zeros(total - self.pos, np.float32), valid=False)
        elif self.pos > total:  # at most a sample or two of rounding; drop from what is still pending
            extra = self.pos - total
            self.pending = self.pending[: max(0, self.pending.shape[0] - extra)]
            self.stat_buf = self.stat_buf[: max(0, self.stat_buf.shape[0] - extra)]
            self.valid_buf = self.valid_buf[: self.stat_buf.shape[0]]
            if self.invalid.spans and self.invalid.spans[-1][1] > total:
                self.invalid.spans[-1][1] = total
            self.pos = total
        self._stats(final=True)
        if self.stream is not None:
            while self.pending.shape[0] > 0:
                self._encode(self.pending[: self.FRAME])
                self.pending = self.pending[self.FRAME:]
            self._encode(None)


def _scaled_planes(frame: av.VideoFrame, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frame scaled (swscale, area) to ``width`` x ``height`` (both even) YUV 4:2:0: planes Y [H, W], U and V
    [H/2, W/2]. Staying in YUV saves two colour conversions per frame over an RGB round trip."""
    flat = frame.reformat(width=width, height=height, format="yuv420p", interpolation="AREA").to_ndarray().reshape(-1)
    n, c = width * height, (width // 2) * (height // 2)
    return (flat[:n].reshape(height, width), flat[n : n + c].reshape(height // 2, width // 2),
            flat[n + c : n + 2 * c].reshape(height // 2, width // 2))


def _orient_planes(planes: tuple[np.ndarray, ...], rot: int, hflip: bool, vflip: bool) -> np.ndarray:
    """Rotate (counter-clockwise) and flip each plane, then pack them as a ``[H * 3 / 2, W]`` yuv420p array."""
    out = []
    for p in planes:
        if rot:
            p = np.rot90(p, k=rot // 90)
        if hflip:
            p = p[:, ::-1]
        if vflip:
            p = p[::-1]
        out.append(np.ascontiguousarray(p).reshape(-1))
    return np.concatenate(out).reshape(-1, planes[0].shape[1] if rot % 180 == 0 else planes[0].shape[0])


def _luma_small(y: np.ndarray) -> np.ndarray:
    """Full-range luma [0, 255] (float32) of a limited-range Y plane, subsampled to at most ~64 px on its long side.
    Rotation and flips do not change its mean, spread or frame-to-frame difference, so it is taken before them."""
    step = max(1, max(y.shape) // 64)
    return (y[::step, ::step].astype(np.float32) - 16.0) * np.float32(255.0 / 219.0)


def normalise_recording(src: str | os.PathLike[str], dst: str | os.PathLike[str], info: MediaInfo,
                        opts: NormaliseOptions, progress: Any | None = None, *, encode: bool = True) -> NormaliseResult:
    """Transcode ``src`` into ``dst`` (MP4) and its statistics into ``dst`` + ``.stats.npz``; returns the facts.

    ``info`` is the probe of ``src``. The output starts at the source's file-clock origin; video frame ``k`` shows
    the latest source frame with pts <= k / fps; audio sample ``j`` is the source audio at j / sample_rate (padding
    where the source has none, recorded in ``no_audio``). Both outputs are written atomically.

    With ``encode=False`` nothing is encoded and ``dst`` itself is not written: the same decode pass only measures
    the statistics (on the same output frame and sample grid) and the facts, for ``normalise.enabled=false``,
    where the manifest points at the source files.
    """
    t0 = time.perf_counter()
    src, dst = os.fspath(src), Path(dst)
    if info.video is None:
        raise MissingStreamError(src, "no video stream")
    rot = int(info.video.rotation or 0) if str(opts.rotate) == "auto" else int(opts.rotate)
    if rot % 90:
        raise ValueError(f"{src}: rotation must be a multiple of 90 degrees, got {rot}")
    rot %= 360
    if not info.video.width or not info.video.height:
        raise DecodeError(src, "video stream has no frame size")
    out_w, out_h = output_size(info.video.width, info.video.height, rot, opts.short_side)
    pre_w, pre_h = (out_h, out_w) if rot % 180 else (out_w, out_h)  # resize before rotating
    fps = Fraction(opts.fps).limit_denominator(1001)
    sr = int(opts.sample_rate)
    origin = float(info.start_time)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".part")
    stats_path = dst.with_name(dst.name + ".stats.npz")

    try:
        inp = av.open(src)
    except (av.error.FFmpegError, OSError) as e:
        raise DecodeError(src, f"cannot open: {e}") from None
    try:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        vin.thread_type = "AUTO"
        out = av.open(os.fspath(tmp), "w", format="mp4", container_options={"movflags": "+faststart"},
                      options={"fflags": "+bitexact"}) if encode else None
        try:
            gop = max(1, int(round(float(opts.gop_s) * float(fps))))
            vout = (add_h264_stream(out, fps=fps, width=out_w, height=out_h, gop=gop, preset=opts.preset,
                                    crf=opts.crf) if out is not None else None)
            aout = None
            if ain is not None and out is not None:
                aout = out.add_stream("aac", rate=sr, layout="mono")
                aout.bit_rate = opts.audio_bitrate
                aout.codec_context.flags |= av.codec.context.Flags.bitexact
            sink = _AudioSink(aout, out, sr, opts.clip_level)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sr) if ain is not None else None
            tol = int(round(opts.audio_jitter_s * sr))

            v_mean: list[float] = []
            v_std: list[float] = []
            v_diff: list[float] = []
            v_valid: list[bool] = []
            state: dict[str, Any] = {"k": 0, "prev": None, "prev_t": None, "first_t": None, "last_luma": None,
                                     "diff": 0.0, "a_first": None, "errors": []}

            def emit_video(pic: np.ndarray | None, luma: np.ndarray, upto_t: float | None, valid: bool) -> None:
                """Encode output frames k with k / fps < upto_t (all remaining if None is never passed); ``pic`` is
                the upright yuv420p picture (None when only measuring)."""
                while upto_t is None or state["k"] / fps < upto_t - 1e-9:
                    if vout is not None and out is not None and pic is not None:
                        vf = av.VideoFrame.from_ndarray(pic, format="yuv420p")
                        vf.pts = state["k"]
                        vf.time_base = 1 / fps
                        out.mux(vout.encode(vf))
                    v_mean.append(float(luma.mean()))
                    v_std.append(float(luma.std()))
                    v_diff.append(state["diff"])
                    v_valid.append(valid)
                    state["k"] += 1
                    if opts.debug_sleep_per_frame_s:
                        time.sleep(opts.debug_sleep_per_frame_s)
                    if progress is not None:
                        progress(1)
                    if upto_t is None:
                        break

            def on_video(frame: av.VideoFrame) -> None:
                if frame.pts is None:
                    return
                t = float(frame.pts * frame.time_base) - origin  # type: ignore[operator]
                planes = _scaled_planes(frame, pre_w, pre_h)
                luma = _luma_small(planes[0])  # the same in both modes: statistics need no upright picture
                pic = None if vout is None else _orient_planes(planes, rot, opts.hflip, opts.vflip)
                if state["prev"] is None:
                    state["first_t"] = t
                    # frames before the first source frame: show it, marked as not on screen
                    emit_video(pic, luma, t, valid=False)
                else:
                    if t <= state["prev_t"]:
                        return  # duplicate or out-of-order timestamp: keep the first frame shown for it
                    emit_video(state["prev"][0], state["prev"][1], t, valid=True)
                    state["diff"] = float(np.abs(luma - state["last_luma"]).mean())
                state["prev"], state["prev_t"], state["last_luma"] = (pic, luma), t, luma

            def on_audio(frame: av.AudioFrame) -> None:
                assert resampler is not None
                for rf in resampler.resample(frame):
                    place_audio(rf)

            def place_audio(rf: av.AudioFrame) -> None:
                if rf.pts is None:
                    return
                start = int(round(float(rf.pts * rf.time_base) * sr - origin * sr))  # type: ignore[operator]
                data = rf.to_ndarray().reshape(-1).astype(np.float32)
                if state["a_first"] is None:
                    state["a_first"] = start / sr
                # timestamps jitter by container rounding (1 ms in Matroska): within ``tol`` the audio is
                # contiguous; a larger gap is padded (no audio), a larger overlap is dropped
                if start - sink.pos > tol:
                    sink.push(np.zeros(start - sink.pos, np.float32), valid=False)
                elif sink.pos - start > tol:
                    data = data[sink.pos - start:]
                sink.push(data, valid=True)

            streams = [vin] + ([ain] if ain is not None else [])
            for packet in inp.demux(*streams):
                try:
                    frames = packet.decode()
                except (av.error.InvalidDataError, av.error.FFmpegError):
                    state["errors"].append(float(state["prev_t"] or 0.0))
                    continue
                for fr in frames:
                    if isinstance(fr, av.VideoFrame):
                        on_video(fr)
                    elif isinstance(fr, av.AudioFrame):
                        on_audio(fr)
            if resampler is not None:
                for rf in resampler.resample(None):
                    place_audio(rf)
            if state["prev"] is None:
                raise DecodeError(src, "no decodable video frame")
            vdur = 1.0 / float(vin.average_rate) if vin.average_rate else 1.0 / float(fps)
            video_end = float(state["prev_t"]) + vdur
            audio_end = sink.pos / sr if state["a_first"] is not None else None
            # the recording spans the video: [0, video_end) on the source clock; audio past it is dropped
            n_frames = max(1, int(round(video_end * fps)))
            # the last source frame stays on screen up to video_end; beyond it the frames are padding
            emit_video(state["prev"][0], state["prev"][1], min(video_end, float(n_frames / fps)), valid=True)
            while state["k"] < n_frames:
                emit_video(state["prev"][0], state["prev"][1], None, valid=False)
            n_frames = state["k"]
            n_samples = int(round(n_frames * sr / fps))
            sink.finish(n_samples)
            if vout is not None and out is not None:
                out.mux(vout.encode(None))
        finally:
            if out is not None:
                out.close()
    finally:
        inp.close()

    no_video = _Spans()
    for i, ok in enumerate(v_valid):
        if not ok:
            no_video.add(i, i + 1)
    n_blocks = sum(a.shape[0] for a in sink.sumsq)
    stats = {
        "version": np.array(STATS_VERSION),
        "fps": np.array(float(fps)),
        "sample_rate": np.array(sr),
        "luma_mean": np.asarray(v_mean, np.float32),
        "luma_std": np.asarray(v_std, np.float32),
        "luma_diff": np.asarray(v_diff, np.float32),
        "frame_valid": np.asarray(v_valid, bool),
        "audio_sumsq": np.concatenate(sink.sumsq) if n_blocks else np.zeros(0, np.float32),
        "audio_peak": np.concatenate(sink.peak) if n_blocks else np.zeros(0, np.float32),
        "audio_clipped": np.concatenate(sink.clipped) if n_blocks else np.zeros(0, np.int32),
        "audio_valid": np.concatenate(sink.nvalid) if n_blocks else np.zeros(0, np.int32),
    }
    stats_tmp = stats_path.with_name(stats_path.name + ".part")
    with open(stats_tmp, "wb") as f:
        np.savez(f, **stats)  # type: ignore[arg-type]
    os.replace(stats_tmp, stats_path)
    if encode:
        os.replace(tmp, dst)
    a = info.audio
    return NormaliseResult(
        width=out_w, height=out_h, fps=float(fps), sample_rate=sr, num_frames=n_frames, num_samples=n_samples,
        duration=n_frames / float(fps), rotation_applied=rot, has_source_audio=state["a_first"] is not None,
        video_start=float(state["first_t"]), video_end=video_end,
        audio_start=state["a_first"], audio_end=audio_end,
        declared_duration=info.duration if a is None else info.duration,
        no_audio=[[s / sr, e / sr] for s, e in sink.invalid.spans] if ain is not None else [[0.0, n_samples / sr]],
        no_video=[[s / float(fps), e / float(fps)] for s, e in no_video.spans],
        decode_errors=len(state["errors"]), decode_error_times=state["errors"], seconds=time.perf_counter() - t0,
    )


def load_stats(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Statistics written by :func:`normalise_recording` (``<media>.stats.npz``)."""
    with np.load(path) as z:
        return {k: z[k] for k in z.files}
