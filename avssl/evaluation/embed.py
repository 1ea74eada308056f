"""Embeddings of media windows with a pair of loaded encoders (``avssl.load_encoder``).

One read per span: a long window is decoded once with ``read_av_window`` at the model's fps and sample rate, and
every sub-window (segment, shifted audio, extraction window) is cut from it in memory, by frame time and by audio
sample index on the window's grid (audio sample ``k`` sits at ``audio_start + k / sample_rate``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

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

    def read(self, path: str | os.PathLike[str], start: float, duration: float, orient: str | None = None) -> AVWindow:
        """Decode ``[start, start + duration)`` at the model's fps and sample rate (mono); ``orient`` is a fixed
        picture correction (a manifest's ``orient`` column, see ``avssl.data.orient``)."""
        from avssl.data.media import read_av_window

        return read_av_window(path, start, duration, fps=self.fps, sample_rate=self.sample_rate, mono=True,
                              orient=orient)

    @torch.no_grad()
    def embed_video(self, win: AVWindow, start: float, num_segments: int = 1) -> Tensor:
        """Embeddings ``[num_segments, D]`` of consecutive video segments from ``start`` (file clock)."""
        x = self.video.preprocess(win.frames, times=win.frame_times, start=start, num_segments=num_segments)
        return self.video(x.to(self.device)).cpu()

    @torch.no_grad()
    def embed_audio(self, win: AVWindow, starts: list[float] | Tensor) -> Tensor:
        """Embeddings ``[len(starts), D]`` of one audio segment starting at each time in ``starts``."""
        seg = [cut_audio(win, float(t), self.segment_duration) for t in starts]
        # one call: consecutive whole segments are preprocessed independently (one log-mel batch)
        x = self.audio.preprocess(torch.cat(seg), sample_rate=win.sample_rate)
        if x.shape[0] != len(seg):
            raise RuntimeError(f"audio preprocessing made {x.shape[0]} segments from {len(seg)}")
        return self.audio(x.to(self.device)).cpu()


def cut_audio(win: AVWindow, start: float, duration: float) -> Tensor:
    """Mono samples of ``[start, start + duration)`` from a decoded window (zeros where it has none)."""
    sr = win.sample_rate
    n = round(duration * sr)
    a0 = round((start - win.audio_start) * sr)
    audio = win.audio if win.audio.dim() == 1 else win.audio.mean(0)
    out = torch.zeros(n, dtype=torch.float32)
    lo, hi = max(a0, 0), min(a0 + n, audio.shape[-1])
    if hi > lo:
        out[lo - a0 : hi - a0] = audio[lo:hi]
    return out


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
    seg = pair.segment_duration
    n_seg = max(1, int(window / seg + 1e-6))
    vs, as_ = [], []
    i = 0
    while i < len(starts):
        j = i
        while j + 1 < len(starts) and starts[j + 1] + window - starts[i] <= max(chunk, window) + 1e-9:
            j += 1
        lo, hi = starts[i], starts[j] + window
        win = pair.read(path, lo, hi - lo, orient)
        for t in starts[i : j + 1]:
            v = pair.embed_video(win, t, n_seg)
            a = pair.embed_audio(win, [t + k * seg for k in range(n_seg)])
            vs.append(F.normalize(v.mean(0), dim=-1))
            as_.append(F.normalize(a.mean(0), dim=-1))
        i = j + 1
    if not vs:
        return torch.empty(0), torch.empty(0)
    return torch.stack(vs), torch.stack(as_)


@torch.no_grad()
def offset_similarities(
    pair: EncoderPair, path: str | os.PathLike[str], video_start: float, offsets: list[float],
    orient: str | None = None,
) -> Tensor:
    """Cosine similarity ``[K]`` of the video segment at ``video_start`` with the audio segment starting at
    ``video_start + offsets[k]`` (positive offset: audio taken from later in the file). One read per call."""
    seg = pair.segment_duration
    lo = video_start + min(0.0, min(offsets))
    hi = video_start + seg + max(0.0, max(offsets))
    win = pair.read(path, lo, hi - lo, orient)
    v = pair.embed_video(win, video_start, 1)  # [1, D]
    a = pair.embed_audio(win, [video_start + o for o in offsets])  # [K, D]
    return (F.normalize(a, dim=-1) @ F.normalize(v, dim=-1).T).squeeze(1)


__all__ = ["EncoderPair", "cut_audio", "window_starts", "embed_windows", "offset_similarities"]
