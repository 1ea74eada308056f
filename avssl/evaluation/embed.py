"""Embeddings of media windows with a pair of loaded encoders (``avssl.load_encoder``).

One read per span: a long window is decoded once with ``read_av_window`` at the model's fps and sample rate, and
every sub-window (segment, shifted audio, extraction window) is cut from it in memory, by frame time and by audio
sample index on the window's grid (audio sample ``k`` sits at ``audio_start + k / sample_rate``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from avssl.data.types import AVWindow

if TYPE_CHECKING:
    from avssl.export import PretrainedEncoder


@dataclass
class EncoderPair:
    """The video and audio encoders of one checkpoint/bundle, in eval mode, on ``device``."""

    video: PretrainedEncoder
    audio: PretrainedEncoder
    device: str = "cpu"

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str = "cpu") -> EncoderPair:
        from avssl.export import load_encoder

        return cls(
            load_encoder(path, "video").to(device).eval(),
            load_encoder(path, "audio").to(device).eval(),
            device,
        )

    @property
    def segment_duration(self) -> float:
        return float(self.video.preprocessor.segment_seconds)

    @property
    def fps(self) -> float:
        return float(self.video.preprocessor.fps)

    @property
    def sample_rate(self) -> int:
        return int(self.audio.preprocessor.sample_rate)

    @property
    def segment_stride(self) -> float:
        return float(self.video.preprocessor.spec.segment_stride)

    def segments_in(self, window: float) -> int:
        """How many model segments (with the model's gap) a window of ``window`` seconds holds; at least one."""
        spec = self.video.preprocessor.spec
        return max(1, math.floor((window - spec.segment_duration) / spec.segment_stride + 1e-6) + 1)

    def read(self, path: str | os.PathLike[str], start: float, duration: float, orient: str | None = None,
             video_starts: Sequence[float] | None = None) -> AVWindow:
        """Decode ``[start, start + duration)`` (mono, the model's sample rate; the window starts on the file's
        sample grid) with the frames on screen at the frame instants of segments starting at ``video_starts``
        (``avssl.data.preprocess``: exactly what the cutter picks), or on the model's fps grid when None.
        ``orient`` is a fixed picture correction (a manifest's ``orient`` column, see ``avssl.data.orient``)."""
        from avssl.data.media import read_av_window

        sr = self.sample_rate
        a = max(math.floor(start * sr + 1e-6), 0) / sr
        duration, start = duration + (start - a), a
        if video_starts is None:
            return read_av_window(path, start, duration, fps=self.fps, sample_rate=sr, mono=True, orient=orient)
        targets = np.unique(self.video.preprocessor.spec.frame_targets(video_starts).reshape(-1))
        return read_av_window(path, start, duration, frame_times=targets, sample_rate=sr, mono=True,
                              orient=orient)

    @torch.no_grad()
    def embed_video(self, win: AVWindow, start: float, num_segments: int = 1) -> Tensor:
        """Embeddings ``[num_segments, D]`` of consecutive video segments from ``start`` (file clock)."""
        starts = self.video.preprocessor.spec.segment_starts(start, num_segments)
        x = self.video.preprocessor.video_at(win.frames, win.frame_times, starts)
        return self.video(x.to(self.device)).cpu()

    @torch.no_grad()
    def embed_audio(self, win: AVWindow, starts: list[float] | Tensor) -> Tensor:
        """Embeddings ``[len(starts), D]`` of one audio segment starting at each time in ``starts``."""
        x = self.audio.preprocessor.audio_at(win.audio, win.audio_start, [float(t) for t in starts],
                                             win.audio_valid)
        return self.audio(x.to(self.device)).cpu()


def window_starts(start: float, end: float, window: float, hop: float) -> list[float]:
    """Starts of windows ``[t, t + window)`` every ``hop`` seconds that fit in ``[start, end)``."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got window={window}, hop={hop}")
    n = int(math.floor((end - start - window) / hop + 1e-6)) + 1
    return [round(start + i * hop, 6) for i in range(max(n, 0))]


def embed_windows(
    pair: EncoderPair, path: str | os.PathLike[str], starts: list[float], window: float, chunk: float = 30.0,
    orient: str | None = None,
) -> tuple[Tensor, Tensor]:
    """L2-normalised ``(video, audio)`` embeddings ``[W, D]`` of windows ``[t, t + window)`` for ``t`` in ``starts``.

    A window spanning several model segments is embedded as the normalised mean of its segments. Files are read
    in chunks of about ``chunk`` seconds.
    """
    n_seg = pair.segments_in(window)
    vs, as_ = [], []
    i = 0
    while i < len(starts):
        j = i
        while j + 1 < len(starts) and starts[j + 1] + window - starts[i] <= max(chunk, window) + 1e-9:
            j += 1
        lo, hi = starts[i], starts[j] + window
        segs = [pair.video.preprocessor.spec.segment_starts(t, n_seg) for t in starts[i : j + 1]]
        win = pair.read(path, lo, hi - lo, orient, video_starts=[s for ss in segs for s in ss])
        for t, ss in zip(starts[i : j + 1], segs):
            v = pair.embed_video(win, t, n_seg)
            a = pair.embed_audio(win, ss)
            vs.append(F.normalize(v.mean(0), dim=-1))
            as_.append(F.normalize(a.mean(0), dim=-1))
        i = j + 1
    if not vs:
        return torch.empty(0), torch.empty(0)
    return torch.stack(vs), torch.stack(as_)


@torch.no_grad()
def segment_embeddings(
    pair: EncoderPair, path: str | os.PathLike[str], start: float, num_segments: int, orient: str | None = None,
) -> tuple[Tensor, Tensor]:
    """L2-normalised ``(video, audio)`` embeddings ``[num_segments, D]`` of the consecutive model segments from
    ``start`` (with the model's gap), one read."""
    spec = pair.video.preprocessor.spec
    starts = [float(t) for t in spec.segment_starts(start, num_segments)]
    win = pair.read(path, start, starts[-1] + spec.segment_duration - start, orient, video_starts=starts)
    return (F.normalize(pair.embed_video(win, start, num_segments), dim=-1),
            F.normalize(pair.embed_audio(win, starts), dim=-1))


@torch.no_grad()
def offset_similarities(
    pair: EncoderPair, path: str | os.PathLike[str], video_start: float, offsets: list[float],
    orient: str | None = None, num_segments: int = 1,
) -> Tensor:
    """Similarity ``[K]`` of the video at ``video_start`` with its audio shifted by ``offsets[k]`` (positive
    offset: audio taken from later in the file). One read per call.

    One segment (default): the cosine of the two segment embeddings. ``num_segments`` consecutive model segments
    (a longer clip, with the model's gap): the mean over segments ``i`` of the cosine of video segment ``i`` with
    the audio segment at its start plus the offset, so each segment is scored exactly as alone and a longer clip
    only adds evidence (the window averaging that sync detectors use over a long context)."""
    if num_segments < 1:
        raise ValueError(f"offset_similarities: num_segments must be >= 1, got {num_segments}")
    spec = pair.video.preprocessor.spec
    v_starts = [float(t) for t in spec.segment_starts(video_start, num_segments)]
    lo = video_start + min(0.0, min(offsets))
    hi = v_starts[-1] + spec.segment_duration + max(0.0, max(offsets))
    win = pair.read(path, lo, hi - lo, orient, video_starts=v_starts)
    v = F.normalize(pair.embed_video(win, video_start, num_segments), dim=-1)  # [n, D]
    a_starts = [t + o for o in offsets for t in v_starts]  # offset-major: [K * n]
    a = F.normalize(pair.embed_audio(win, a_starts), dim=-1).view(len(offsets), num_segments, -1)  # [K, n, D]
    return (a * v[None]).sum(-1).mean(1)


__all__ = ["EncoderPair", "window_starts", "embed_windows", "segment_embeddings", "offset_similarities"]
