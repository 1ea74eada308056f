"""Plain data containers of the data layer (no decoding logic here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class StreamInfo:
    """Facts about one stream. Times are seconds on the file clock (see docs/time.md)."""

    index: int
    kind: str  # "video" | "audio" | other codec_type
    codec: str
    start_time: float | None  # seconds from the start of the file (file clock)
    duration: float | None  # seconds
    time_base: float | None
    # video only
    width: int | None = None
    height: int | None = None
    avg_fps: float | None = None
    is_vfr: bool | None = None
    frame_count: int | None = None
    rotation: int = 0  # degrees, counter-clockwise display rotation to apply (0, 90, 180, 270)
    # audio only
    sample_rate: int | None = None
    channels: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class MediaInfo:
    """What ``probe`` reports about a file.

    ``start_time`` is the container's origin in the streams' own timestamps (seconds), i.e. the earliest
    start of any stream; every other time in avssl is measured from it (the file clock, origin 0).
    ``duration`` is the span of the file on that clock.
    """

    path: str
    format: str
    start_time: float
    duration: float | None
    streams: tuple[StreamInfo, ...] = field(default_factory=tuple)

    @property
    def video(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == "video"), None)

    @property
    def audio(self) -> StreamInfo | None:
        return next((s for s in self.streams if s.kind == "audio"), None)

    @property
    def has_video(self) -> bool:
        return self.video is not None

    @property
    def has_audio(self) -> bool:
        return self.audio is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "start_time": self.start_time,
            "duration": self.duration,
            "streams": [s.to_dict() for s in self.streams],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MediaInfo:
        return cls(
            path=d["path"],
            format=d["format"],
            start_time=d["start_time"],
            duration=d["duration"],
            streams=tuple(StreamInfo(**s) for s in d["streams"]),
        )


@dataclass
class AVWindow:
    """Video frames and audio cut from one file over the same window ``[start, start + duration)``.

    - ``frames``: uint8 [T, H, W, 3]; ``frame_times``: float64 [T] seconds (file clock). With ``fps`` given,
      ``frame_times`` are the target times ``start + k / fps`` and ``source_frame_times`` the pts of the frames
      shown at those instants; otherwise both are the decoded pts.
    - ``frames_valid``: bool [T], False where the frame was filled (no frame on screen at that time).
    - ``audio``: float32 in [-1, 1], [S] (mono) or [C, S]; sample k sits at time ``audio_start + k / sample_rate``,
      and ``audio_start == start`` exactly. ``audio_valid``: bool [S], False where the stream had no data.
    """

    path: str
    start: float
    duration: float
    frames: torch.Tensor
    frame_times: torch.Tensor
    source_frame_times: torch.Tensor
    frames_valid: torch.Tensor
    audio: torch.Tensor
    audio_start: float
    sample_rate: int
    audio_valid: torch.Tensor
    fps: float | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.audio.shape[-1])
