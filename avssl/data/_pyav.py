"""PyAV (FFmpeg) implementation of probing and window decoding. Private: use ``avssl.data.media``.

All times handed in and out are seconds on the file clock (origin = container start, see docs/time.md). Inside,
a stream timestamp ``pts`` becomes ``pts * time_base - origin``.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, BinaryIO

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from avssl.data import _display
from avssl.data.errors import DecodeError, MediaNotFound
from avssl.data.types import MediaInfo, StreamInfo

SEEK_RETRIES = (0.0, 1.0, 8.0, math.inf)  # back off this much more when a seek lands after the target
# Audio seeks this much before the window: Matroska audio seeks land 36-48 ms late, and a decoder needs packets
# before the window to converge (Opus asks for 80 ms). 0.2 s was tried and reverted: FFmpeg's AAC decoder fills
# noise-substituted (PNS) bands from a generator whose state depends on every frame decoded since it opened, so a
# window's samples depend on where decoding began; with 0.5 s every window in a file's first half second or so
# decodes from the file's start and, for a stream already at the target rate, agrees with any other such read
# (tests/test_extract.py relies on it). A resampled stream also carries the resampler's sub-sample phase, set by
# the first frame resampled (RESAMPLE_LEAD below), so its overlapping windows agree only to that phase.
AUDIO_PREROLL = 0.5
# Decoded frames that end this long before the window are not resampled (the decoder still needs them; the
# resampler's filter reaches about 2 ms, so its output inside the window is the same up to its sub-sample phase).
RESAMPLE_LEAD = 0.05
AUDIO_TAIL = 0.1  # decode this much audio past the window end (covers the resampler's delay)
MAX_PACKETS_PAST_END = 512  # hard bound on packets read after the window end without output
_EPS = 1e-9


def open_container(path: str, threads: int | None = None) -> av.container.InputContainer:
    """Open ``path`` for reading; raise MediaNotFound / DecodeError naming the file."""
    if not os.path.exists(path):
        raise MediaNotFound(path, "no such file")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise MediaNotFound(path, "not a readable file")
    try:
        container = av.open(path, mode="r", metadata_errors="ignore")
    except av.FFmpegError as e:
        raise DecodeError(path, f"cannot open container: {e}") from e
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DecodeError(path, f"cannot open container: {e}") from e
    if threads is not None:
        for s in container.streams:
            if s.type in ("video", "audio"):
                s.codec_context.thread_count = int(threads)
    return container


def container_origin(container: Any) -> Fraction:
    """The file clock's origin in the streams' own clock (exact seconds): the container start, else the earliest
    stream start."""
    if container.start_time is not None:
        return Fraction(container.start_time, av.time_base)
    starts = [
        Fraction(s.start_time) * s.time_base
        for s in container.streams
        if s.start_time is not None and s.time_base is not None and s.type in ("video", "audio")
    ]
    return min(starts) if starts else Fraction(0)


def _parse_duration_tag(value: str | None) -> float | None:
    m = re.fullmatch(r"(\d+):(\d+):(\d+(?:\.\d+)?)", value or "")
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _rotation_from_degrees(deg: float) -> int:
    return int(round(deg / 90.0)) % 4 * 90


def decoded_rotation(path: str, container: Any, stream: Any) -> int:
    """The display rotation the decoder attaches to the stream's first frame (decodes one frame: the fallback
    where the container header does not tell)."""
    try:
        container.seek(0, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        pass
    try:
        for n, packet in enumerate(container.demux(stream)):
            for frame in stream.decode(packet):
                return _rotation_from_degrees(frame.rotation)
            if n > 64:
                break
    except av.FFmpegError as e:
        raise DecodeError(path, f"cannot decode the video stream: {e}") from e
    return 0


def stream_rotation(path: str, container: Any, stream: Any, fileobj: BinaryIO | None = None) -> int:
    """Counter-clockwise display rotation of a video stream, without decoding where the container says it: the
    legacy ``rotate`` tag (clockwise), else the display matrix of an MP4/MOV or Matroska/WebM header
    (``avssl.data._display``), else (other containers, or a header that cannot be followed) the rotation of the
    first decoded frame. A bitstream-level orientation (an H.264/HEVC display-orientation SEI) inside MP4 or
    Matroska is not looked for: cameras write the container's matrix. ``fileobj``: the container's bytes as a
    seekable binary file (for a container opened from memory; its position is restored), else ``path`` is read."""
    tag = stream.metadata.get("rotate")
    if tag is not None:
        try:
            # the legacy tag is clockwise
            return _rotation_from_degrees(-float(tag))
        except ValueError:
            pass
    names = container.format.name or ""
    if set(names.split(",")) & (_display.MOV_FORMATS | _display.MATROSKA_FORMATS):
        try:
            if fileobj is not None:
                pos = fileobj.tell()
                try:
                    deg = _display.header_rotation(fileobj, names, stream.index, stream.id, len(container.streams))
                finally:
                    fileobj.seek(pos)
            else:
                with open(path, "rb") as f:
                    deg = _display.header_rotation(f, names, stream.index, stream.id, len(container.streams))
        except OSError:
            deg = None
        if deg is not None:
            return _rotation_from_degrees(deg)
    return decoded_rotation(path, container, stream)


def probe_container(path: str, container: Any, fileobj: BinaryIO | None = None) -> MediaInfo:
    """Facts about an open container (see MediaInfo). Decodes nothing for MP4/MOV and Matroska/WebM files; for
    other containers one video frame (to learn the rotation, see ``stream_rotation``)."""
    origin = container_origin(container)
    streams = []
    for s in container.streams:
        tb = s.time_base
        start = float(s.start_time * tb - origin) if (s.start_time is not None and tb) else None
        duration = float(s.duration * tb) if (s.duration is not None and tb) else None
        if duration is None:
            duration = _parse_duration_tag(s.metadata.get("DURATION") or s.metadata.get("duration"))
            if duration is not None and s.start_time is not None and tb:
                duration -= float(s.start_time * tb)  # Matroska's DURATION tag is the stream's end time
        common = dict(
            index=s.index,
            kind=s.type,
            codec=s.codec_context.name if s.codec_context is not None else "unknown",
            start_time=start,
            duration=duration,
            time_base=float(tb) if tb else None,
        )
        if s.type == "video":
            avg = s.average_rate
            base = s.base_rate
            is_vfr = None
            if avg and base:
                is_vfr = abs(float(avg) - float(base)) > 0.01 * float(base)
            streams.append(
                StreamInfo(
                    **common,
                    width=s.codec_context.width or None,
                    height=s.codec_context.height or None,
                    avg_fps=float(avg) if avg else (float(base) if base else None),
                    is_vfr=is_vfr,
                    frame_count=s.frames or None,
                    rotation=stream_rotation(path, container, s, fileobj),
                )
            )
        elif s.type == "audio":
            cc = s.codec_context
            streams.append(
                StreamInfo(
                    **common,
                    frame_count=None,
                    sample_rate=cc.sample_rate or None,
                    channels=(cc.layout.nb_channels if cc.layout is not None else None)
                    or cc.channels
                    or None,
                )
            )
        else:
            streams.append(StreamInfo(**common))
    duration = container.duration / av.time_base if container.duration is not None else None
    if duration is None:
        ends = [st.start_time + st.duration for st in streams if st.start_time is not None and st.duration]
        duration = max(ends) if ends else None
    return MediaInfo(
        path=path,
        format=container.format.name,
        start_time=float(origin),
        duration=duration,
        streams=tuple(streams),
    )


def _seek(path: str, container: Any, stream: Any, t_raw: float) -> None:
    """Seek ``stream`` backward to the keyframe at or before raw time ``t_raw`` (seconds, stream clock)."""
    tb = stream.time_base
    first = stream.start_time if stream.start_time is not None else None
    ts = int(math.floor(t_raw / tb)) if math.isfinite(t_raw) else (first or 0)
    if first is not None:
        ts = max(ts, first)
    try:
        container.seek(ts, stream=stream, backward=True, any_frame=False)
    except av.FFmpegError:
        try:  # no keyframe before ts: go to the beginning
            container.seek(first if first is not None else 0, stream=stream, backward=True, any_frame=True)
        except av.FFmpegError as e:
            raise DecodeError(path, f"cannot seek the {stream.type} stream: {e}") from e


MAX_BAD_PACKETS = 64  # undecodable packets tolerated in one read before the file counts as corrupt


def decode_packets(container: Any, stream: Any, decoder: Any,
                   packets: Iterator[tuple[Any, bool]] | None = None) -> Iterator[tuple[Any, list[Any]]]:
    """Demux ``stream`` from its current position and decode each packet with ``decoder``: yields (packet, frames).
    A few undecodable packets (damaged data) are skipped; more than ``MAX_BAD_PACKETS`` raise. ``packets``:
    ``(packet, needed)`` pairs instead of the plain demuxer (``needed_packets``); the decoder skips the
    non-reference pictures of packets not needed (``skip_frame=NONREF``), decodes everything else."""
    errors = 0
    source = ((p, True) for p in container.demux(stream)) if packets is None else packets
    cc = decoder.codec_context if hasattr(decoder, "codec_context") else decoder
    skipping = False
    try:
        for packet, needed in source:
            if needed == skipping:  # switch only on change
                skipping = not needed
                cc.skip_frame = "NONREF" if skipping else "DEFAULT"
            try:
                frames = decoder.decode(packet)
            except av.InvalidDataError:
                errors += 1
                if errors > MAX_BAD_PACKETS:
                    raise
                continue
            yield packet, frames
    finally:
        if skipping:
            cc.skip_frame = "DEFAULT"


SKIP_CODECS = frozenset({"h264", "hevc"})  # decoders whose NONREF skipping drops only non-reference pictures
SKIP_UNSHOWN = True  # decode_video_span skips non-reference pictures no target shows (False: decode all)


def needed_packets(container: Any, stream: Any, clock: StreamClock, targets: np.ndarray,
                   stop: float) -> Generator[tuple[Any, bool], None, None]:
    """``(packet, needed)`` in demux order: ``needed`` is False only for a packet whose picture is surely not the
    one on screen at any of the sorted ``targets`` (the latest picture with ``pts <= target + EPS``), i.e. no
    target lies in ``[pts - EPS, next pts - EPS)``, and which precedes ``stop``. The next pts is known once a
    later pts at or below the last demuxed dts has been seen (pictures not yet demuxed present no earlier than
    their dts, which never decreases); packets wait in a short queue until then. Any packet without pts or dts,
    with a pts before its dts, or sharing its pts makes everything from there on needed."""
    pending: deque[tuple[Any, float]] = deque()
    seen: list[float] = []  # pts of the packets demuxed so far, sorted
    safe = True
    last_dts = -math.inf

    def decide(pts: float, nxt: float) -> bool:
        if pts > stop + _EPS:
            return True  # past the window: decoded as usual (it ends the read)
        k = int(np.searchsorted(targets, pts - _EPS, side="left"))
        return k < len(targets) and targets[k] < nxt - _EPS

    for packet in container.demux(stream):
        if safe and (packet.pts is None or packet.dts is None or packet.size == 0):
            safe = False
        if safe:
            pts, dts = clock.seconds(packet.pts), clock.seconds(packet.dts)
            i = bisect.bisect_left(seen, pts)
            if pts < dts - _EPS or (i < len(seen) and seen[i] == pts) or dts < last_dts:
                safe = False
            else:
                seen.insert(i, pts)
                last_dts = dts
                pending.append((packet, pts))
                while pending:
                    head, hp = pending[0]
                    j = bisect.bisect_right(seen, hp)
                    if j == len(seen) or seen[j] > last_dts:
                        break  # its successor may not be demuxed yet
                    pending.popleft()
                    yield head, decide(hp, seen[j])
                continue
        while pending:
            yield pending.popleft()[0], True
        yield packet, True
    while pending:  # the stream ended: the last pictures are needed
        yield pending.popleft()[0], True


def fresh_audio_decoder(stream: Any) -> Any:
    """A new decoder for ``stream`` with the stream's parameters, so that decoded samples depend only on the packets
    fed since the seek: FFmpeg decoders keep state across a seek (``flush_buffers`` does not clear all of it; AAC's
    first frame after a seek came out differently depending on what was decoded before). Falls back to the
    stream's own decoder where a copy cannot be made."""
    cc = stream.codec_context
    try:
        ctx = av.CodecContext.create(cc.name, "r")
        if cc.extradata:
            ctx.extradata = cc.extradata
        ctx.sample_rate = cc.sample_rate
        ctx.layout = cc.layout
        ctx.open()
        return ctx
    except Exception:  # pragma: no cover - codec-specific; the stream decoder still works
        cc.flush_buffers()
        return cc


class StreamClock:
    """Timestamps in one time base -> seconds on the file clock: exactly ``float(ts * time_base - origin)``, without
    building Fractions per frame where the origin is a whole number of ticks (then ``(ts - o) * num / den`` is one
    correctly rounded integer division, the same float)."""

    __slots__ = ("time_base", "origin", "_ticks", "_num", "_den")

    def __init__(self, time_base: Fraction, origin: Fraction):
        self.time_base, self.origin = Fraction(time_base), Fraction(origin)
        ticks = self.origin / self.time_base
        self._ticks = int(ticks) if ticks.denominator == 1 else None
        self._num, self._den = self.time_base.numerator, self.time_base.denominator

    def seconds(self, ts: int) -> float:
        if self._ticks is not None:
            return (ts - self._ticks) * self._num / self._den
        return float(ts * self.time_base - self.origin)


def _frame_time(frame: Any, clock: StreamClock, prev: float | None, step: float) -> float:
    ts = frame.pts if frame.pts is not None else frame.dts
    if ts is not None:
        return clock.seconds(ts)
    return (prev + step) if prev is not None else 0.0


def _frame_clock(frame: Any, clock: StreamClock) -> StreamClock:
    """``clock``, or one for the frame's own time base where the decoder hands out another."""
    tb = frame.time_base
    return clock if tb is None or tb == clock.time_base else StreamClock(tb, clock.origin)


@dataclass
class VideoSpan:
    """Decoded video frames covering a window: ``frames`` sorted by time, plus what is known about the ends."""

    times: list[float]
    frames: list[Any]  # av.VideoFrame
    at_stream_start: bool  # no frame exists before times[0]
    at_stream_end: bool  # decoding reached the end of the stream
    frame_step: float  # nominal frame duration (seconds)


def decode_video_span(
    path: str, container: Any, stream: Any, origin: Fraction, start: float, stop: float, keep_before: bool,
    targets: np.ndarray | None = None,
) -> VideoSpan:
    """Decode the frames with ``start <= t < stop`` (``t <= stop`` when ``keep_before``), plus, when
    ``keep_before``, the last frame before ``start`` (the one on screen at ``start``). With ``targets`` (sorted
    instants, the only ones the caller shows), H.264/HEVC pictures no target shows and no other picture
    references are not decoded at all (``needed_packets``); the frames on screen at the targets are the same."""
    rate = stream.average_rate or stream.base_rate or 25
    step = 1.0 / float(rate)
    first_ts = float(stream.start_time * stream.time_base - origin) if stream.start_time is not None else None
    stream_clock = StreamClock(stream.time_base, origin)
    for back in SEEK_RETRIES:
        clock: StreamClock | None = None
        _seek(path, container, stream, start + float(origin) - back)
        times: list[float] = []
        frames: list[Any] = []
        prev: float | None = None
        before: tuple[float, Any] | None = None
        first_seen: float | None = None
        done = False
        past_end = 0
        decoded_any = False
        packets = None
        if targets is not None and SKIP_UNSHOWN and stream.codec_context.name in SKIP_CODECS:
            packets = needed_packets(container, stream, stream_clock, targets, stop)
        try:
            for _packet, out in decode_packets(container, stream, stream, packets):
                for frame in out:
                    decoded_any = True
                    if clock is None:
                        clock = _frame_clock(frame, stream_clock)
                    t = _frame_time(frame, clock, prev, step)
                    prev = t
                    if first_seen is None:
                        first_seen = t
                    if t < start - _EPS:
                        if keep_before and (before is None or t >= before[0]):
                            before = (t, frame)
                        continue
                    if (t > stop + _EPS) if keep_before else (t >= stop - _EPS):
                        done = True
                        break
                    times.append(t)
                    frames.append(frame)
                if done:
                    break
                if frames or before is not None:
                    past_end = 0
                else:
                    past_end += 1
                    if past_end > MAX_PACKETS_PAST_END * 8:
                        break
        except av.FFmpegError as e:
            if not decoded_any:
                raise DecodeError(path, f"cannot decode the video stream: {e}") from e
            done = False  # treat as end of the readable stream
        finally:
            if packets is not None:
                packets.close()
                stream.codec_context.skip_frame = "DEFAULT"
        # landed after the target although earlier frames exist: seek further back
        seek_late = first_seen is not None and first_seen > start + _EPS
        stream_begins_here = first_ts is None or first_seen is None or first_seen <= first_ts + step * 0.5
        if seek_late and not stream_begins_here and back != SEEK_RETRIES[-1]:
            continue
        order = sorted(range(len(times)), key=times.__getitem__)
        times = [times[i] for i in order]
        frames = [frames[i] for i in order]
        at_start = before is None and stream_begins_here
        if before is not None:
            times.insert(0, before[0])
            frames.insert(0, before[1])
        return VideoSpan(times, frames, at_start, not done, step)
    raise AssertionError("unreachable")


@dataclass
class AudioSpan:
    audio: np.ndarray  # float32 [C, S]
    valid: np.ndarray  # bool [S]


def decode_audio_window(
    path: str,
    container: Any,
    stream: Any,
    origin: Fraction,
    start: float,
    duration: float,
    sample_rate: int,
    mono: bool,
) -> AudioSpan:
    """Audio samples of ``[start, start + duration)`` on the grid ``start + k / sample_rate``, placed by their
    timestamps after resampling; uncovered samples are zero and marked invalid."""
    n = int(round(duration * sample_rate))
    cc = stream.codec_context
    src_layout = cc.layout.name if cc.layout is not None and cc.layout.nb_channels else "mono"
    layout = "mono" if mono else src_layout
    channels = av.AudioLayout(layout).nb_channels
    buf = np.zeros((channels, n), np.float32)
    valid = np.zeros(n, bool)
    end = start + duration
    first_ts = float(stream.start_time * stream.time_base - origin) if stream.start_time is not None else None

    # One clock per time base, looked up once: a decoder's frames all carry their packets' time base and a
    # resampler's outputs its own (fixed when it is built), and PyAV builds a new Fraction on every ``time_base``
    # read, which (hashed and multiplied per frame) had cost more CPU than decoding the AAC itself.
    origin_s = float(origin)
    packet_clock = StreamClock(stream.time_base, origin) if stream.time_base is not None else None
    clocks: dict[str, StreamClock | None] = {"in": None, "out": None}

    def clock_of(kind: str, frame: Any) -> StreamClock | None:
        clock = clocks[kind]
        if clock is None:
            tb = frame.time_base
            if tb is None:
                return None
            clock = clocks[kind] = StreamClock(tb, origin)
        return clock

    # Timestamps are only as precise as the stream's time base: Matroska keeps whole milliseconds, so frames placed
    # one by one by their own timestamps landed up to half a tick off each, with overlaps and one-sample gaps
    # between them. Instead the decoded outputs are collected and laid down in runs: a run's frames are
    # contiguous, and its start is the middle of the interval of starts consistent with every member's
    # timestamp to within half a tick (plus half a sample for the resampler's own rounding). A frame whose
    # timestamp no contiguous start can explain (a real gap or overlap, or a clock drifting off its sample
    # count by more than that) starts a new run, placed by its own timestamps.
    half = 0.5 * max(1.0, float(stream.time_base) * sample_rate if stream.time_base is not None else 1.0) + 0.5
    pending: list[tuple[float, np.ndarray]] = []  # (position in samples from ``start``, [C, m] samples)

    def place(out: Any) -> None:
        pts = out.pts
        if pts is None or out.samples <= 0:
            return
        clock = clock_of("out", out)
        if clock is None:
            return
        t0 = clock.seconds(pts)
        m = out.samples
        planes = out.planes
        if len(planes) == channels:  # planar float (what the resampler makes): one view per channel, no vstack
            arr = np.stack([np.frombuffer(p, np.float32, count=m) for p in planes]) if channels > 1 else \
                np.frombuffer(planes[0], np.float32, count=m)[None]
        else:
            arr = out.to_ndarray()
            if arr.shape[0] != channels:  # packed layout
                arr = arr.reshape(-1, channels).T
        pending.append(((t0 - start) * sample_rate, arr[:, :m]))

    def lay_down() -> None:
        k = 0
        while k < len(pending):
            run, off = [(pending[k][1], 0)], pending[k][1].shape[1]
            lo, hi = pending[k][0] - half, pending[k][0] + half  # starts consistent with the run so far
            k += 1
            while k < len(pending):
                d = pending[k][0] - off  # the run's start as this frame's timestamp says
                if max(lo, d - half) > min(hi, d + half):
                    break
                lo, hi = max(lo, d - half), min(hi, d + half)
                run.append((pending[k][1], off))
                off += pending[k][1].shape[1]
                k += 1
            i0 = int(round(0.5 * (lo + hi)))
            for arr, o in run:
                a0 = i0 + o
                lo_i, hi_i = max(a0, 0), min(a0 + arr.shape[1], n)
                if hi_i > lo_i:
                    buf[:, lo_i:hi_i] = arr[:, lo_i - a0 : hi_i - a0]
                    valid[lo_i:hi_i] = True
        pending.clear()

    for back in SEEK_RETRIES:
        _seek(path, container, stream, start + float(origin) - AUDIO_PREROLL - back)
        decoder = fresh_audio_decoder(stream)
        buf[:] = 0
        valid[:] = False
        pending.clear()
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        clocks["in"] = clocks["out"] = None  # a new decoder and resampler
        first_seen: float | None = None
        next_pts: float | None = None
        decoded_any = False
        past = 0
        try:
            for packet, frames in decode_packets(container, stream, decoder):
                stop = False
                for frame in frames:
                    decoded_any = True
                    pts = frame.pts
                    if pts is None and next_pts is not None and frame.time_base is not None:
                        pts = frame.pts = int(round(next_pts / frame.time_base))  # no timestamp: go on from the last
                    clock = clock_of("in", frame) if pts is not None else None
                    if clock is None:
                        continue
                    t = clock.seconds(pts)
                    next_pts = t + origin_s + frame.samples / frame.sample_rate
                    if first_seen is None:
                        first_seen = t
                    if t > end + AUDIO_TAIL:
                        stop = True
                        break
                    if next_pts - origin_s < start - RESAMPLE_LEAD:
                        continue  # decoded (the decoder needs it), not resampled: it ends before the window
                    try:
                        outs = resampler.resample(frame)
                    except ValueError:  # format change mid-stream: start a new resampler
                        for out in resampler.resample(None):
                            place(out)
                        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
                        clocks["out"] = None
                        outs = resampler.resample(frame)
                    for out in outs:
                        place(out)
                if stop:
                    break
                if packet.dts is not None and packet_clock is not None:
                    if packet_clock.seconds(packet.dts) > end + AUDIO_TAIL + 2.0:
                        past += 1
                        if past > MAX_PACKETS_PAST_END:
                            break
            for out in resampler.resample(None):
                place(out)
        except av.FFmpegError as e:
            if not decoded_any:
                raise DecodeError(path, f"cannot decode the audio stream: {e}") from e
        late = first_seen is not None and first_seen > start - 0.05
        at_first = first_ts is None or first_seen is None or first_seen <= first_ts + 0.05
        if late and not at_first and back != SEEK_RETRIES[-1]:
            continue
        lay_down()
        np.clip(buf, -1.0, 1.0, out=buf)
        return AudioSpan(buf, valid)
    raise AssertionError("unreachable")


def output_size(
    width: int, height: int, rotation: int, size: int | tuple[int, int] | None
) -> tuple[int, int, int, int]:
    """(decode_w, decode_h, out_w, out_h): the size to scale the stored picture to, and the displayed size."""
    disp_w, disp_h = (height, width) if rotation in (90, 270) else (width, height)
    if size is None:
        out_w, out_h = disp_w, disp_h
    elif isinstance(size, int):
        scale = size / min(disp_w, disp_h)
        out_w, out_h = max(1, int(round(disp_w * scale))), max(1, int(round(disp_h * scale)))
        if disp_w <= disp_h:
            out_w = size
        else:
            out_h = size
    else:
        out_h, out_w = int(size[0]), int(size[1])
    dec_w, dec_h = (out_h, out_w) if rotation in (90, 270) else (out_w, out_h)
    return dec_w, dec_h, out_w, out_h


def frame_to_rgb(frame: Any, dec_w: int, dec_h: int, rotation: int, reformatter: Any = None) -> np.ndarray:
    """uint8 [H, W, 3] RGB: scaled by swscale (bilinear, which averages over the footprint when shrinking) and
    converted in the same pass, then turned by the display rotation (a view). ``reformatter`` (an
    ``av.video.reformatter.VideoReformatter``) keeps one scaler context across frames. A scaled picture is
    written as planar RGB (``gbrp``; ``to_ndarray`` packs it): about 2/3 of the time of packed ``rgb24``, and as
    close to converting at full size and resizing with antialiasing (within 2 grey levels on average;
    tests/test_media_rawpath.py); swscale's two writers agree exactly at most sizes, not at all."""
    if frame.width == dec_w and frame.height == dec_h:
        rgb = frame.to_ndarray(format="rgb24")
    else:
        rf = reformatter if reformatter is not None else VideoReformatter()
        rgb = rf.reformat(frame, width=dec_w, height=dec_h, format="gbrp", interpolation="BILINEAR").to_ndarray()
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)
    return rgb
