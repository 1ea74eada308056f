"""Deterministic H.264 encoding: the one place that sets libx264's options for avssl's writers
(``avssl-prep``'s normaliser and ``avssl-shards``).

Same input frames and settings give the same bytes on one machine, whatever ran before in the process:

- one encoder thread (frame and lookahead threading make the output depend on scheduling);
- ``bitexact`` flags, so no version strings or timestamps go into the stream;
- ``mbtree=0``: x264's macroblock-tree rate control is off. Its AVX-512 code path reads memory that x264 never
  initialised (found on AMD Zen 4/5: 20 encodes of the same 75 frames at 42x32 in one process gave 3 different
  outputs; with ``mbtree=0``, or with x264 limited to AVX2, all 20 were identical). The cost is a few percent of
  bitrate at equal quality, which does not matter for training data;
- a fixed keyframe interval without scene-cut detection, so keyframes sit on a known grid.

Bytes are *not* promised to be identical across CPUs: x264's AVX2 and SSE2 paths round some rate-control
arithmetic differently (measured: same machine, ``asm=sse2`` vs AVX2 give different streams).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from av.container import OutputContainer
from av.video.stream import VideoStream


def add_h264_stream(container: OutputContainer, *, fps: Fraction, width: int, height: int, gop: int,
                    preset: str = "veryfast", crf: int = 23, intra_only: bool = False) -> VideoStream:
    """Add a deterministic libx264 yuv420p stream of ``width`` x ``height`` at ``fps`` to ``container``.

    ``gop`` is the keyframe interval in frames (``intra_only=True`` makes every frame a keyframe).
    """
    gop = 1 if intra_only else max(1, int(gop))
    vs = container.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt = int(width), int(height), "yuv420p"
    vs.time_base = 1 / fps
    cc = vs.codec_context
    cc.thread_count = 1
    cc.gop_size = gop
    cc.flags |= av.codec.context.Flags.bitexact
    params = f"keyint={gop}:min-keyint={gop}:scenecut=0:threads=1:lookahead-threads=1:mbtree=0"
    cc.options = {"preset": str(preset), "crf": str(crf), "x264-params": params}
    return vs


def audio_frame(samples: np.ndarray, fmt: str, layout: str, sample_rate: int) -> av.AudioFrame:
    """float ``[C, n]`` samples in [-1, 1] -> an ``av.AudioFrame`` in an encoder's sample format (``s16``, ``s32``,
    ``flt``, packed or planar ``...p``): integers rounded and clipped, packed formats interleaved."""
    planar = fmt.endswith("p")
    base = fmt[:-1] if planar else fmt
    if base == "s16":
        data: np.ndarray = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
    elif base == "s32":
        data = np.clip(np.round(samples * 2147483647.0), -(2**31), 2**31 - 1).astype(np.int32)
    elif base == "flt":
        data = np.asarray(samples, np.float32)
    else:
        raise ValueError(f"unsupported encoder sample format {fmt!r} (s16, s32, flt, packed or planar)")
    if not planar:
        data = data.T.reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
    frame.sample_rate = sample_rate
    return frame
