"""Where clips start. A clip is S consecutive equal segments cut at the same times in video and audio.

Every random choice here is a pure function of ``(seed, epoch, index)`` (a keyed hash, not a global RNG), so a
sample is the same whichever DataLoader worker or process draws it and in whatever order.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import struct
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ClipSpec",
    "audio_offsets",
    "clip_start",
    "hash_uniform",
    "segment_starts",
    "uniform_clip_starts",
    "video_id",
]

_EPS = 1e-9  # seconds; absorbs float rounding when a clip exactly fills its span


@dataclass(frozen=True)
class ClipSpec:
    """Layout of a clip.

    - ``num_segments`` (S) segments of ``segment_duration`` seconds each;
    - ``segment_gap``: extra seconds between the end of one segment and the start of the next (0 = contiguous;
      negative, down to just above ``-segment_duration``: overlapping segments, e.g. ``-0.3`` with 0.5 s segments
      starts one every 0.2 s, so the clip's other segments are negatives 0.2 s, 0.4 s, ... away);
    - ``audio_jitter``: each segment's audio window may be shifted by up to this many seconds either way
      (training only; see :func:`audio_offsets`). Shifted windows may reach ``audio_jitter`` past the clip.
    """

    num_segments: int = 4
    segment_duration: float = 0.5
    segment_gap: float = 0.0
    audio_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.num_segments < 1:
            raise ValueError(f"ClipSpec.num_segments must be >= 1, got {self.num_segments}")
        if not self.segment_duration > 0:
            raise ValueError(f"ClipSpec.segment_duration must be > 0, got {self.segment_duration}")
        if not self.segment_gap > -self.segment_duration or self.audio_jitter < 0:
            raise ValueError(
                f"ClipSpec.segment_gap must be > -segment_duration (segments may overlap, but each must start after "
                f"the one before) and audio_jitter >= 0, got {self.segment_gap}, {self.audio_jitter}"
            )

    @property
    def segment_stride(self) -> float:
        """Seconds between the starts of consecutive segments."""
        return self.segment_duration + self.segment_gap

    @property
    def clip_duration(self) -> float:
        """Seconds from the start of the first segment to the end of the last."""
        return self.num_segments * self.segment_duration + (self.num_segments - 1) * self.segment_gap

    def starts(self, clip_start: float, num_segments: int | None = None) -> list[float]:
        """``s_k = clip_start + k * (segment_duration + segment_gap)`` for ``k < num_segments`` (default: S): the
        one rule every consumer cuts segments by (``avssl.data.preprocess``)."""
        n = self.num_segments if num_segments is None else int(num_segments)
        return [float(clip_start) + k * self.segment_stride for k in range(n)]


def _key_part(x: object) -> object:
    """One key element as a plain Python value, so that a draw depends on the value, not on its type:
    integral numpy/torch scalars -> int, floating ones -> float, numpy strings -> str (one-element arrays and
    tensors count as scalars). Python ``int``/``float``/``str``/``bool``/``None`` pass unchanged."""
    if x is None or type(x) in (bool, int, float, str):
        return x
    if isinstance(x, (tuple, list)):
        parts = [_key_part(e) for e in x]
        return parts if isinstance(x, list) else tuple(parts)
    if isinstance(x, numbers.Integral):  # numpy integers, int subclasses
        return int(x)
    if isinstance(x, numbers.Real):  # numpy floats (np.float64 subclasses float, its repr differs)
        return float(x)
    if isinstance(x, str):  # np.str_
        return str(x)
    item = getattr(x, "item", None)
    if callable(item) and hasattr(x, "dtype"):  # numpy arrays and scalars (np.bool_), torch tensors
        numel = x.numel() if hasattr(x, "numel") else getattr(x, "size", None)
        if numel != 1:
            raise TypeError(f"hash_uniform: a key element must hold one value, got {type(x).__name__} of "
                            f"{numel} elements")
        return _key_part(item())
    raise TypeError(f"hash_uniform: key elements must be ints, floats, strings, bools or None (or numpy/torch "
                    f"scalars of them), got {type(x).__name__}")


def hash_uniform(*key: object) -> float:
    """A float in [0, 1) that depends only on ``key`` (BLAKE2b of its repr; stable across processes and runs).

    Key elements are normalised to plain Python values first (``np.int64(5)`` and ``torch.tensor(5)`` give the
    draw of ``5``; ``np.float32(0.5)`` that of ``0.5``), so the result depends on values, not on their types.
    """
    digest = hashlib.blake2b(repr(tuple(_key_part(k) for k in key)).encode("utf-8"), digest_size=8).digest()
    (value,) = struct.unpack("<Q", digest)
    return (value >> 11) * 2.0**-53


def video_id(path: str) -> int:
    """A stable non-negative 63-bit id of a source video (BLAKE2b of its path): clips with equal ids come from one
    video, which the ``cross_video`` negatives exclude (the same in every process and run)."""
    digest = hashlib.blake2b(str(path).encode("utf-8"), digest_size=8, person=b"avssl-vid").digest()
    return struct.unpack("<Q", digest)[0] >> 1


def _check_span(available_start: float, available_end: float, spec: ClipSpec) -> float:
    if not (math.isfinite(available_start) and math.isfinite(available_end)):
        raise ValueError(f"clip span must be finite, got [{available_start}, {available_end})")
    room = (available_end - available_start) - spec.clip_duration
    if room < -_EPS:
        raise ValueError(
            f"span [{available_start:.3f}, {available_end:.3f}) s lasts {available_end - available_start:.3f} s, "
            f"shorter than one clip of {spec.clip_duration:.3f} s "
            f"({spec.num_segments} x {spec.segment_duration} s, gap {spec.segment_gap} s)"
        )
    return max(room, 0.0)


def clip_start(
    available_start: float,
    available_end: float,
    spec: ClipSpec,
    mode: Literal["random", "uniform", "center"] = "random",
    seed: int = 0,
    epoch: int = 0,
    index: int = 0,
    num_clips: int = 1,
    clip_idx: int = 0,
) -> float:
    """Start time (seconds) of a clip that fits in ``[available_start, available_end)``.

    - ``random``: uniform over the room, drawn from a hash of ``(seed, epoch, index)``;
    - ``uniform``: clip ``clip_idx`` of ``num_clips`` evenly spaced clips, the first at the span's start and the
      last ending at its end (one clip: centred);
    - ``center``: the clip centred in the span.

    Raises ValueError when the span is shorter than ``spec.clip_duration``.
    """
    room = _check_span(available_start, available_end, spec)
    if mode == "random":
        return available_start + room * hash_uniform("clip", seed, epoch, index)
    if mode == "center":
        return available_start + room / 2
    if mode == "uniform":
        if num_clips < 1 or not 0 <= clip_idx < num_clips:
            raise ValueError(f"uniform clip_idx={clip_idx} must lie in [0, num_clips={num_clips})")
        if num_clips == 1:
            return available_start + room / 2
        return available_start + room * clip_idx / (num_clips - 1)
    raise ValueError(f"clip_start mode must be 'random', 'uniform' or 'center', got {mode!r}")


def segment_starts(clip_start: float, spec: ClipSpec) -> list[float]:
    """Start time of each of the S segments of a clip starting at ``clip_start`` (``ClipSpec.starts``)."""
    return spec.starts(clip_start)


def audio_offsets(spec: ClipSpec, seed: int = 0, epoch: int = 0, index: int = 0) -> list[float]:
    """Per-segment audio shift in ``[-audio_jitter, audio_jitter]`` seconds (all zeros when jitter is 0).

    The audio of segment ``i`` is read from ``segment_starts[i] + offsets[i]``; its video is not moved.
    """
    if spec.audio_jitter == 0:
        return [0.0] * spec.num_segments
    return [
        spec.audio_jitter * (2.0 * hash_uniform("jitter", seed, epoch, index, i) - 1.0)
        for i in range(spec.num_segments)
    ]


def uniform_clip_starts(
    span_start: float, span_end: float, spec: ClipSpec, hop: float | None = None, allow_empty: bool = False
) -> list[float]:
    """Starts of the clips on a grid ``span_start + k * hop`` that fit in the span (validation, extraction).

    ``hop`` defaults to ``spec.clip_duration`` (back-to-back clips). A span shorter than one clip raises
    ValueError, or gives ``[]`` with ``allow_empty=True``.
    """
    hop = spec.clip_duration if hop is None else hop
    if not hop > 0:
        raise ValueError(f"uniform_clip_starts: hop must be > 0, got {hop}")
    try:
        room = _check_span(span_start, span_end, spec)
    except ValueError:
        if allow_empty:
            return []
        raise
    count = math.floor(room / hop + 1e-9) + 1
    return [span_start + k * hop for k in range(count)]
