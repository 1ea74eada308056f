"""Aligned audio/video reading: ``probe``, ``read_av_window`` and the reusable ``MediaReader``.

One clock: seconds from the start of the file (the container's start time, the origin ``ffmpeg -ss`` uses).
Frames are selected by their presentation timestamps, audio samples are placed on the window's own grid by their
timestamps after resampling. Parts a stream does not cover are filled and reported in ``frames_valid`` /
``audio_valid``. See docs/time.md and docs/decoders.md.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from avssl.data import _pyav
from avssl.data.errors import DecodeError, InvalidWindow, MediaError, MediaNotFound, MissingStreamError
from avssl.data.orient import Orientation, parse_orient
from avssl.data.types import AVWindow, MediaInfo

BACKENDS = ("pyav", "decord")
Size = int | tuple[int, int] | None

__all__ = ["BACKENDS", "MediaReader", "probe", "read_av_window", "select_frames"]


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Container and stream facts of ``path`` (times on the file clock). Raises MediaNotFound / DecodeError."""
    with MediaReader(path) as reader:
        return reader.info


def select_frames(
    times: Sequence[float],
    start: float,
    duration: float,
    fps: float | None,
    *,
    at_stream_start: bool = True,
    at_stream_end: bool = False,
    frame_step: float = 0.04,
    targets: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Which of the decoded frames (sorted ``times``) a window shows.

    Returns ``(index, frame_times, source_times, valid)``: with ``fps=None`` every frame with
    ``start <= t < start + duration``; otherwise for each target ``start + k / fps`` the latest frame with
    ``t <= target``, filled with the nearest frame (and marked invalid) before the stream's first frame or after
    its last frame's display interval (known only when ``at_stream_end``). Explicit ``targets`` (sorted instants)
    replace the ``start + k / fps`` grid.
    """
    t = np.asarray(times, np.float64)
    end = start + duration
    if fps is None and targets is None:
        idx = np.flatnonzero((t >= start - _pyav._EPS) & (t < end - _pyav._EPS))
        return idx, t[idx], t[idx], np.ones(len(idx), bool)
    if targets is None:
        assert fps is not None
        targets = start + np.arange(int(round(duration * fps)), dtype=np.float64) / fps
    targets = np.asarray(targets, np.float64)
    if len(t) == 0:
        raise ValueError("no frames to select from")
    idx = np.searchsorted(t, targets + _pyav._EPS, side="right") - 1
    valid = idx >= 0
    if not at_stream_start:
        valid[:] = True  # frames before the decoded ones exist; callers decode the one on screen at start
    idx = np.clip(idx, 0, len(t) - 1)
    if at_stream_end:
        last_end = t[-1] + frame_step
        valid &= targets < last_end - _pyav._EPS
    return idx, targets, t[idx], valid


def _no_video() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The video fields of a window read without its video (``modalities=("audio",)``)."""
    empty = torch.zeros(0, dtype=torch.float64)
    return torch.zeros((0, 1, 1, 3), dtype=torch.uint8), empty, empty.clone(), torch.zeros(0, dtype=torch.bool)


_INHERITED: list[Any] = []  # decoders inherited from a parent process through fork: kept, never freed


class MediaReader:
    """An open media file for repeated window reads. Opens lazily (per process, so it is safe to create in the
    main process and use in DataLoader workers) and keeps the container open between reads.

    >>> with MediaReader("clip.mp4") as r:
    ...     w = r.read(1.0, 2.0, fps=8, size=224)
    """

    def __init__(self, path: str | os.PathLike[str], *, backend: str = "pyav", threads: int | None = None,
                 info: MediaInfo | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
        self.path = os.fspath(path)
        self.backend = backend
        self.threads = threads
        self._container: Any = None
        self._pid: int | None = None
        # ``info``: this file's probe result from an earlier reader (e.g. a dataset reopening a file), not probed again
        if info is not None and info.path != self.path:
            raise ValueError(f"MediaReader({self.path!r}): info= describes another file ({info.path!r})")
        self._info: MediaInfo | None = info
        self._decord: Any = None
        self._origin_frac: Fraction | None = None
        self._reformatter: Any = None  # one swscale context per reader (per process)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def _open(self) -> Any:
        if self._container is None or self._pid != os.getpid():
            self._release_inherited()
            self._container = _pyav.open_container(self.path, self.threads)
            self._origin_frac = _pyav.container_origin(self._container)
            self._reformatter = _pyav.VideoReformatter()
            self._pid = os.getpid()
        return self._container

    def _release_inherited(self) -> None:
        # A container opened by another process (inherited through fork, e.g. a DataLoader worker) shares FFmpeg
        # state and file offsets with its parent: never close or free it here, just stop using it.
        if self._pid is not None and self._pid != os.getpid():
            _INHERITED.extend(x for x in (self._container, self._decord, self._reformatter) if x is not None)
            self._container = None
            self._decord = None
            self._reformatter = None
            self._pid = None

    def close(self) -> None:
        self._release_inherited()
        if self._container is not None:
            self._container.close()
        self._container = None
        self._decord = None
        self._reformatter = None
        self._pid = None

    def __enter__(self) -> MediaReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_container=None, _pid=None, _decord=None, _reformatter=None, _origin_frac=None)
        return state

    # -- facts -----------------------------------------------------------------------------------------------
    @property
    def info(self) -> MediaInfo:
        """``probe`` result (computed once)."""
        if self._info is None:
            container = self._open()
            try:
                self._info = _pyav.probe_container(self.path, container)
            except MediaError:
                raise
            except Exception as e:  # FFmpeg errors surface as many types; name the file
                raise DecodeError(self.path, f"cannot probe: {e}") from e
        return self._info

    def _origin(self) -> Fraction:
        self._open()
        assert self._origin_frac is not None
        return self._origin_frac

    # -- reading ---------------------------------------------------------------------------------------------
    def read(
        self,
        start: float,
        duration: float,
        *,
        fps: float | None = None,
        sample_rate: int = 16000,
        mono: bool = True,
        size: Size = None,
        allow_missing_audio: bool = False,
        orient: str | Orientation | None = None,
        frame_times: Sequence[float] | np.ndarray | None = None,
        modalities: Sequence[str] = ("video", "audio"),
    ) -> AVWindow:
        """Frames and audio of ``[start, start + duration)``; see ``read_av_window``. A modality left out of
        ``modalities`` is not decoded at all (its fields are empty: no frames, or silent invalid audio)."""
        start, duration = float(start), float(duration)
        targets = None
        if frame_times is not None:
            if fps is not None:
                raise ValueError("give fps= or frame_times=, not both")
            targets = np.asarray(frame_times, np.float64).reshape(-1)
            if targets.size == 0 or not np.isfinite(targets).all() or bool((np.diff(targets) < 0).any()):
                raise InvalidWindow(self.path, "frame_times must be a non-empty, finite, non-decreasing sequence")
            if targets[0] < start - 1e-9 or targets[-1] >= start + duration:
                raise InvalidWindow(self.path, f"frame_times [{targets[0]:.4f}, {targets[-1]:.4f}] s lie outside "
                                    f"the window [{start:.4f}, {start + duration:.4f}) s")
        if not (math.isfinite(start) and math.isfinite(duration)) or duration <= 0:
            raise InvalidWindow(self.path, f"bad window start={start} duration={duration}")
        if fps is not None and (not math.isfinite(fps) or fps <= 0 or round(duration * fps) < 1):
            raise InvalidWindow(self.path, f"bad fps={fps} for a {duration} s window")
        if sample_rate <= 0 or round(duration * sample_rate) < 1:
            raise InvalidWindow(self.path, f"bad sample_rate={sample_rate}")
        if size is not None and not (
            (isinstance(size, int) and size > 0)
            or (isinstance(size, (tuple, list)) and len(size) == 2 and all(int(v) > 0 for v in size))
        ):
            raise ValueError(f"size must be None, a positive int or (H, W); got {size!r}")
        size = size if size is None or isinstance(size, int) else (int(size[0]), int(size[1]))
        fix = parse_orient(orient)
        if fix.swaps_axes and isinstance(size, tuple):
            size = (size[1], size[0])  # decode at the transposed size; the correction turns it back
        info = self.info
        if info.video is None:
            raise MissingStreamError(self.path, "no video stream")
        if info.audio is None and not allow_missing_audio and "audio" in modalities:
            raise MissingStreamError(self.path, "no audio stream (pass allow_missing_audio=True for silence)")
        end = start + duration
        if end <= 0 or (info.duration is not None and start >= info.duration):
            raise InvalidWindow(
                self.path,
                f"window [{start:.3f}, {end:.3f}) s lies outside the file (duration {info.duration} s)",
            )
        unknown = sorted(set(modalities) - {"video", "audio"})
        if unknown or not modalities:
            raise ValueError(f"modalities must be a non-empty subset of ('video', 'audio'), got {tuple(modalities)}")
        try:
            if "video" not in modalities:
                video = _no_video()
            elif self.backend == "pyav":
                video = self._read_video_pyav(start, duration, fps, size, targets)
            else:
                video = self._read_video_decord(start, duration, fps, size, targets)
            if "audio" in modalities:
                audio, audio_valid = self._read_audio(start, duration, sample_rate, mono)
            else:
                n = int(round(duration * sample_rate))
                audio = torch.zeros((n,) if mono else (1, n), dtype=torch.float32)
                audio_valid = torch.zeros(n, dtype=torch.bool)
        except MediaError:
            raise
        except Exception as e:  # a decoder failure of any kind: name the file
            raise DecodeError(self.path, f"decoding failed: {type(e).__name__}: {e}") from e
        frames, shown_times, source_times, frames_valid = video
        frames = fix.apply(frames)
        if not bool(frames_valid.any()) and not bool(audio_valid.any()):
            raise DecodeError(
                self.path,
                f"no decodable data in [{start:.3f}, {end:.3f}) s although the header says the file "
                f"lasts {info.duration} s (truncated or corrupt?)",
            )
        return AVWindow(
            path=self.path,
            start=start,
            duration=duration,
            frames=frames,
            frame_times=shown_times,
            source_frame_times=source_times,
            frames_valid=frames_valid,
            audio=audio,
            audio_start=start,
            sample_rate=int(sample_rate),
            audio_valid=audio_valid,
            fps=None if fps is None else float(fps),
        )

    def _assemble(
        self,
        times: list[float],
        get_rgb: Callable[[list[int]], torch.Tensor],
        start: float,
        duration: float,
        fps: float | None,
        out_hw: tuple[int, int],
        at_start: bool,
        at_end: bool,
        step: float,
        targets: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if (fps is not None or targets is not None) and not times:
            raise DecodeError(self.path, f"no video frames could be decoded near {start:.3f} s")
        idx, ft, st, valid = select_frames(
            times, start, duration, fps, at_stream_start=at_start, at_stream_end=at_end, frame_step=step,
            targets=targets,
        )
        uniq, inverse = np.unique(idx, return_inverse=True)
        if len(uniq):
            rgb = get_rgb([int(i) for i in uniq])  # each frame shown converted once
            frames = rgb if len(uniq) == len(idx) else rgb[torch.from_numpy(inverse.reshape(-1))]
        else:
            frames = torch.zeros((0, out_hw[0], out_hw[1], 3), dtype=torch.uint8)
        return (
            frames,
            torch.from_numpy(np.asarray(ft, np.float64)),
            torch.from_numpy(np.asarray(st, np.float64)),
            torch.from_numpy(valid),
        )

    def _read_video_pyav(self, start: float, duration: float, fps: float | None, size: Size,
                         targets: np.ndarray | None = None) -> tuple:
        container = self._open()
        info = self.info
        vinfo = info.video
        assert vinfo is not None
        stream = container.streams[vinfo.index]
        end = start + duration
        if targets is not None:  # decode only the span the targets need
            start, stop = float(targets[0]), float(targets[-1])
            shown = targets
        elif fps is not None:
            stop = start + (round(duration * fps) - 1) / fps
            shown = start + np.arange(round(duration * fps), dtype=np.float64) / fps
        else:
            stop, shown = end, None
        span = _pyav.decode_video_span(
            self.path, container, stream, self._origin(), start, stop,
            keep_before=fps is not None or targets is not None, targets=shown,
        )
        rotation = vinfo.rotation
        if span.frames:
            w0, h0 = span.frames[0].width, span.frames[0].height
        else:
            w0, h0 = vinfo.width or 0, vinfo.height or 0
        dec_w, dec_h, out_w, out_h = _pyav.output_size(w0, h0, rotation, size)

        reformatter = self._reformatter

        def get_rgb(indices: list[int]) -> torch.Tensor:
            out = torch.empty((len(indices), out_h, out_w, 3), dtype=torch.uint8)
            view = out.numpy()
            for j, i in enumerate(indices):
                view[j] = _pyav.frame_to_rgb(span.frames[i], dec_w, dec_h, rotation, reformatter)
            return out

        return self._assemble(
            span.times,
            get_rgb,
            start,
            duration,
            fps,
            (out_h, out_w),
            span.at_stream_start,
            span.at_stream_end,
            span.frame_step,
            targets,
        )

    def _read_video_decord(self, start: float, duration: float, fps: float | None, size: Size,
                           targets: np.ndarray | None = None) -> tuple:
        from avssl.data import _decord

        info = self.info
        if self._decord is None or self._decord.size != size:
            self._decord = _decord.DecordVideo(self.path, info, size, threads=self.threads)
        dv = self._decord
        end = start + duration
        times = dv.times
        if targets is not None:
            start, end = float(targets[0]), float(targets[-1]) + 1e-6
        if fps is None and targets is None:
            sel = [i for i, t in enumerate(times) if start - _pyav._EPS <= t < end - _pyav._EPS]
            local = [times[i] for i in sel]
            at_start, at_end = True, False
        else:
            lo = max(int(np.searchsorted(times, start + _pyav._EPS, side="right")) - 1, 0)
            hi = int(np.searchsorted(times, end, side="left"))
            sel = list(range(lo, max(hi, lo + 1)))
            local = [times[i] for i in sel]
            at_start, at_end = lo == 0, hi >= len(times)

        def get_rgb(indices: list[int]) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(dv.get([sel[i] for i in indices])))

        return self._assemble(
            local, get_rgb, start, duration, fps, dv.out_hw, at_start, at_end, dv.frame_step, targets
        )

    def _read_audio(self, start: float, duration: float, sample_rate: int, mono: bool) -> tuple:
        info = self.info
        n = int(round(duration * sample_rate))
        if info.audio is None:
            shape = (n,) if mono else (1, n)
            return torch.zeros(shape, dtype=torch.float32), torch.zeros(n, dtype=torch.bool)
        container = self._open()
        stream = container.streams[info.audio.index]
        span = _pyav.decode_audio_window(
            self.path, container, stream, self._origin(), start, duration, sample_rate, mono
        )
        audio = torch.from_numpy(span.audio[0] if mono else span.audio)
        return audio, torch.from_numpy(span.valid)


def read_av_window(
    path: str | os.PathLike[str],
    start: float,
    duration: float,
    *,
    fps: float | None = None,
    sample_rate: int = 16000,
    mono: bool = True,
    size: Size = None,
    backend: str = "pyav",
    allow_missing_audio: bool = False,
    orient: str | Orientation | None = None,
    frame_times: Sequence[float] | np.ndarray | None = None,
) -> AVWindow:
    """Video frames and audio of ``[start, start + duration)`` seconds (file clock) of one file.

    - ``fps=None``: every frame whose pts lies in the window; else ``round(duration * fps)`` frames, each the one on
      screen at ``start + k / fps`` (right for variable frame rate). ``frame_times`` (instead of ``fps``): the
      frames on screen at these sorted instants inside the window (what ``avssl.data.preprocess`` asks for, so
      that only the frames a model sees are converted).
    - ``size``: None keeps the decoded size; an int sets the short side (aspect kept); (H, W) is exact.
      The display rotation of the stream is applied, then ``orient`` (a fixed correction such as ``"180"``, see
      ``avssl.data.orient``; a given (H, W) is the size after it).
    - audio: float32 [S] (``mono``) or [C, S], ``S = round(duration * sample_rate)``, sample k at
      ``start + k / sample_rate``; uncovered samples are zero and False in ``audio_valid``.
    - Raises MediaNotFound, DecodeError, MissingStreamError (no video; no audio unless ``allow_missing_audio``)
      or InvalidWindow, each naming the file. ``backend``: "pyav" (default) or "decord" (video only; audio
      always comes from PyAV).
    """
    if not os.path.exists(os.fspath(path)):
        raise MediaNotFound(path, "no such file")
    with MediaReader(path, backend=backend) as reader:
        return reader.read(
            start,
            duration,
            fps=fps,
            sample_rate=sample_rate,
            mono=mono,
            size=size,
            allow_missing_audio=allow_missing_audio,
            orient=orient,
            frame_times=frame_times,
        )
