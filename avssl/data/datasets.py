"""Map-style datasets of S-segment audio-visual clips cut from one decoded window (see docs/manifest.md).

A sample is the dict of docs/architecture.md plus ``num_skipped`` (int64 scalar): how many broken items were
passed over to produce it, ``bad_files`` (str): the newline-separated paths of the files newly found broken while
producing it (usually empty; ``AVSSLModule`` counts each file once, across workers and ranks, as
``data/bad_files``), and ``video_id`` (int64 scalar): a stable id of its source file (``sampling.video_id``), which
the ``cross_video`` negatives use. Summing ``batch["num_skipped"]`` counts skip events across DataLoader
workers; each process also keeps ``bad_items`` (index -> reason) and raises ``TooManyBadFiles`` when more than
``max_bad_fraction`` of the items it has tried are broken.
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from avssl.data.atomic import write_json_atomic
from avssl.data.errors import MediaError
from avssl.data.features import FbankConfig
from avssl.data.manifest import Manifest, ManifestRow, read_manifest
from avssl.data.media import MediaReader, probe
from avssl.data.orient import row_orient
from avssl.data.preprocess import (
    PreprocessSpec,
    SegmentCut,
    audio_window,
    cut_audio,
    cut_video,
    video_entries,
)
from avssl.data.preprocess import decode_size as auto_decode_size
from avssl.data.sampling import (
    ClipSpec,
    audio_offsets,
    clip_start,
    hash_uniform,
    uniform_clip_starts,
    video_id,
)
from avssl.data.sources import MEDIA_EXTENSIONS, find_media
from avssl.data.transforms import CropParams, SpecAugment, VideoTransform
from avssl.data.types import AVWindow, MediaInfo

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = MEDIA_EXTENSIONS  # the one list (avssl.data.sources); this name is kept as an alias
_MIN_TRIED = 20  # the bad fraction is judged over at least this many items (or all of them if fewer)
MAX_PROBE_RESULTS = 4096  # probe results kept per process (a few KB each), most recently used

Mode = Literal["random", "uniform", "center"]


class TooManyBadFiles(RuntimeError):
    """More than ``max_bad_fraction`` of the items tried could not be decoded."""


def _as_rows(source: str | os.PathLike[str] | Manifest | Iterable[ManifestRow]) -> list[ManifestRow]:
    if isinstance(source, (str, os.PathLike)):
        return list(read_manifest(source))
    return list(source)


class AVClipDataset(Dataset[dict[str, Any]]):
    """Clips of ``clip.num_segments`` segments from the rows of a manifest.

    Each sample reads ONE window covering the clip (plus the audio-jitter margin) and cuts every segment from it
    by time: frames by their timestamps, audio by sample index on the window's grid, so both modalities are cut at
    the same instants. Modes: ``random`` (one item per row, random clip start that changes with ``set_epoch``),
    ``center`` (one centred clip per row), ``uniform`` (items are (row, clip) pairs: ``clips_per_row`` evenly
    spaced clips, or with ``clips_per_row=None`` back-to-back clips on a grid). Rows shorter than a clip are
    dropped (logged). ``video_transform`` maps uint8 [S, T, H, W, 3] to float [S, C, T, h, w]; the default
    ``VideoTransform(frame_size, train=mode == "random")`` uses one crop/flip for the whole clip.
    ``audio_transform`` (e.g. ``SpecAugment``) gets the normalised log-mel [S, 1, F, M]. ``VideoTransform`` and
    ``SpecAugment`` draw from a generator seeded by (seed, epoch, index). Labels index the sorted distinct values
    of ``label_column`` (over all rows given, before the split filter), or ``classes`` when passed.
    ``decode_size``: the short side frames are scaled to inside the decoder, before RGB (None: full size; an int;
    ``"auto"``: the smallest size the video transform's resize/crop policy loses nothing at, per file, from
    ``avssl.data.preprocess.decode_size``; the DataModule passes ``data.decode_size``).
    """

    def __init__(
        self,
        rows_or_manifest: str | os.PathLike[str] | Manifest | Iterable[ManifestRow],
        *,
        clip: ClipSpec,
        fps: float = 8.0,
        frame_size: int = 64,
        sample_rate: int = 16000,
        fbank: FbankConfig | None = None,
        video_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        audio_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mode: Mode = "random",
        clips_per_row: int | None = None,
        seed: int = 0,
        split: str | Sequence[str] | None = None,
        label_column: str | None = "label",
        classes: Sequence[str] | None = None,
        allow_missing_audio: bool = True,
        max_bad_fraction: float = 0.1,
        max_open_files: int = 8,
        decode_size: int | str | None = None,
        modalities: Sequence[str] = ("video", "audio"),
    ) -> None:
        if mode not in ("random", "uniform", "center"):
            raise ValueError(f"AVClipDataset: mode must be 'random', 'uniform' or 'center', got {mode!r}")
        if not fps > 0 or frame_size < 1 or sample_rate < 1:
            raise ValueError(f"AVClipDataset: bad fps={fps}, frame_size={frame_size}, sample_rate={sample_rate}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"AVClipDataset: max_bad_fraction must lie in [0, 1], got {max_bad_fraction}")
        if clips_per_row is not None and clips_per_row < 1:
            raise ValueError(f"AVClipDataset: clips_per_row must be >= 1, got {clips_per_row}")
        if not (decode_size is None or decode_size == "auto"
                or (isinstance(decode_size, int) and not isinstance(decode_size, bool) and decode_size > 0)):
            raise ValueError(f"AVClipDataset: decode_size must be 'auto', None or a positive short side, got "
                             f"{decode_size!r}")
        self.fbank = fbank if fbank is not None else FbankConfig(sample_rate=sample_rate)
        if self.fbank.sample_rate != sample_rate:
            raise ValueError(
                f"AVClipDataset: fbank.sample_rate={self.fbank.sample_rate} differs from sample_rate={sample_rate}"
            )
        all_rows = _as_rows(rows_or_manifest)
        if classes is None and label_column:
            classes = sorted({v for r in all_rows if (v := r.get(label_column)) not in (None, "")})
        self.classes: list[str] = list(classes or [])
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        selected = Manifest(all_rows).filter(split) if split is not None else [r for r in all_rows if not r.exclude]
        self.clip, self.fps, self.frame_size, self.sample_rate = clip, float(fps), frame_size, sample_rate
        # the one preprocessing path (avssl.data.preprocess): the rule every consumer cuts segments by
        self.spec = PreprocessSpec(segment_duration=clip.segment_duration, fps=float(fps),
                                   frame_size=(frame_size, frame_size), sample_rate=sample_rate, fbank=self.fbank,
                                   segment_gap=clip.segment_gap, num_segments=clip.num_segments)
        self.mode: Mode = mode
        self.clips_per_row, self.seed, self.epoch = clips_per_row, seed, 0
        self.label_column, self.allow_missing_audio = label_column, allow_missing_audio
        self.max_bad_fraction = max_bad_fraction
        # Open containers kept per process (hour-long files cost ~80 ms to open; docs/benchmarks.md), LRU-bounded;
        # probe results kept for the last MAX_PROBE_RESULTS files, so a file reopened after eviction is not probed
        # again.
        # ``decode_size`` scales the short side inside the decoder (swscale, before RGB), ahead of the video
        # transform: an int, None (full size) or "auto" (``avssl.data.preprocess.decode_size`` of the transform,
        # per file).
        self.max_open_files, self.decode_size = max(0, max_open_files), decode_size
        self._readers: OrderedDict[str, MediaReader] = OrderedDict()
        self._infos: dict[str, MediaInfo] = {}
        self.modalities = tuple(m for m in ("video", "audio") if m in modalities)  # only these are decoded
        if not self.modalities or set(modalities) - {"video", "audio"}:
            raise ValueError(f"AVClipDataset: modalities must be a non-empty subset of (video, audio), got "
                             f"{tuple(modalities)}")
        self.video_transform = video_transform or VideoTransform(frame_size, train=mode == "random")
        self.audio_transform = audio_transform
        self.rows: list[ManifestRow] = []
        self.num_short_rows = 0
        for r in selected:
            if r.end - r.start + 1e-9 < clip.clip_duration:
                self.num_short_rows += 1
            else:
                self.rows.append(r)
        self._orient = [row_orient(r) for r in self.rows]  # a fixed picture correction per row (data/orient.py)
        if self.num_short_rows:
            log.warning("AVClipDataset: dropped %d row(s) shorter than one clip (%.3f s)",
                        self.num_short_rows, clip.clip_duration)
        self._items: list[tuple[int, float | None]] = []  # (row index, fixed clip start or None = per epoch)
        for i, r in enumerate(self.rows):
            if mode == "uniform":
                if clips_per_row is None:
                    self._items += [(i, s) for s in uniform_clip_starts(r.start, r.end, clip)]
                else:
                    self._items += [
                        (i, clip_start(r.start, r.end, clip, "uniform", num_clips=clips_per_row, clip_idx=k))
                        for k in range(clips_per_row)
                    ]
            elif mode == "center":
                self._items.append((i, clip_start(r.start, r.end, clip, "center")))
            else:
                self._items.append((i, None))
        self.bad_items: dict[int, str] = {}  # per process: item index -> reason
        self._tried: set[int] = set()

    # ------------------------------------------------------------------ public API
    def __len__(self) -> int:
        return len(self._items)

    def set_epoch(self, epoch: int) -> None:
        """Pick new random clip starts / jitter for ``epoch``; a pure function of (seed, epoch, index)."""
        self.epoch = int(epoch)

    def label_of(self, row: ManifestRow) -> int:
        if not self.label_column:
            return -1
        return self._class_index.get(str(row.get(self.label_column) or ""), -1)

    def clip_times(self, index: int) -> tuple[list[float], list[float]]:
        """Video segment starts and audio segment starts (seconds, file clock) of item ``index``."""
        row_i, fixed = self._items[index]
        row = self.rows[row_i]
        start = fixed if fixed is not None else clip_start(
            row.start, row.end, self.clip, "random", seed=self.seed, epoch=self.epoch, index=index)
        video = self.spec.segment_starts(start)
        if self.mode == "random":
            offs = audio_offsets(self.clip, seed=self.seed, epoch=self.epoch, index=index)
        else:
            offs = [0.0] * self.clip.num_segments
        return video, [v + o for v, o in zip(video, offs)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self._items)
        if not 0 <= index < n:
            raise IndexError(f"AVClipDataset index {index} out of range [0, {n})")
        found: dict[str, None] = {}  # files newly found broken by this call (ordered, distinct)
        for skipped in range(n):
            j = (index + skipped) % n
            if j in self.bad_items:
                continue
            self._tried.add(j)
            try:
                sample = self._load(j)
            except MediaError as e:
                found[self._mark_bad(j, e)] = None
                continue
            sample["num_skipped"] = torch.tensor(skipped, dtype=torch.int64)
            sample["bad_files"] = "\n".join(found)
            sample["video_id"] = torch.tensor(video_id(sample["path"]), dtype=torch.int64)
            return sample
        raise TooManyBadFiles(f"AVClipDataset: all {n} items failed to decode; first: {self._first_bad()}")

    # ------------------------------------------------------------------ internals
    def _first_bad(self) -> str:
        return next(iter(self.bad_items.values()), "none")

    def _mark_bad(self, j: int, err: Exception) -> str:
        """Record item ``j`` as broken (never retried by this process); returns its file's path."""
        path = self.rows[self._items[j][0]].path
        reason = str(err) if path in str(err) else f"{path}: {err}"
        self.bad_items[j] = reason  # never retried by this process, so logged once
        log.warning("skipping undecodable item %d (%s)", j, reason)
        tried = max(len(self._tried), min(_MIN_TRIED, len(self._items)))
        if len(self.bad_items) > self.max_bad_fraction * tried:
            raise TooManyBadFiles(
                f"{len(self.bad_items)} of {len(self._tried)} items tried could not be decoded (more than "
                f"max_bad_fraction={self.max_bad_fraction}); e.g. {reason}"
            )
        return path

    def _generator(self, what: str, index: int) -> torch.Generator:
        key = int(hash_uniform(what, self.seed, self.epoch, index) * 2.0**53)
        return torch.Generator().manual_seed(key)

    def _reader(self, path: str) -> MediaReader:
        reader = self._readers.pop(path, None) or MediaReader(path, info=self._infos.get(path))
        if self.max_open_files:
            self._readers[path] = reader  # most recently used last
            while len(self._readers) > self.max_open_files:
                self._readers.popitem(last=False)[1].close()
        return reader

    def __getstate__(self) -> dict[str, Any]:  # workers start with no open containers
        state = self.__dict__.copy()
        state["_readers"] = OrderedDict()
        return state

    def _display_hw(self, info: MediaInfo | None, row_index: int) -> tuple[int, int] | None:
        """(H, W) of this row's full-size pictures as the video transform receives them (displayed, corrected)."""
        v = info.video if info is not None else None
        if v is None or not v.width or not v.height:
            return None
        h, w = (v.width, v.height) if v.rotation in (90, 270) else (v.height, v.width)
        return (w, h) if self._orient[row_index].swaps_axes else (h, w)

    def _decode_size(self, reader: MediaReader, row_index: int) -> int | None:
        """The short side frames of this row are decoded at (``decode_size``, resolved for ``auto``)."""
        if self.decode_size != "auto":
            return self.decode_size  # type: ignore[return-value]
        hw = self._display_hw(reader.info, row_index)
        return None if hw is None else auto_decode_size(self.video_transform, *hw)

    def _view(self, transform: VideoTransform, frames: torch.Tensor, full_hw: tuple[int, int] | None,
              gen: torch.Generator) -> CropParams:
        """The clip's crop/flip, drawn for the full-size picture and mapped onto the decoded one: the same view
        (within rounding) and the same random draws whatever ``decode_size`` is."""
        h, w = int(frames.shape[-3]), int(frames.shape[-2])
        fh, fw = full_hw if full_hw is not None else (h, w)
        p = transform.sample_params(fh, fw, gen)
        if (fh, fw) == (h, w):
            return p
        sy, sx = h / fh, w / fw
        ph, pw = min(h, max(1, round(p.height * sy))), min(w, max(1, round(p.width * sx)))
        top, left = min(round(p.top * sy), h - ph), min(round(p.left * sx), w - pw)
        return CropParams(top, left, ph, pw, p.flip)

    def read_window(self, index: int) -> tuple[AVWindow, list[float], list[float]]:
        """Decode the one window item ``index`` needs; also returns its video and audio segment starts.

        The window starts on the file's sample grid and holds exactly the frames on screen at the segments'
        frame instants (``PreprocessSpec.frame_targets``), so nothing decoded is converted in vain. Raises
        ``MediaError`` for a broken file (no skipping here)."""
        row_index = self._items[index][0]
        row = self.rows[row_index]
        v_starts, a_starts = self.clip_times(index)
        w0, wdur = audio_window(self.spec, v_starts, a_starts)
        reader = self._reader(row.path)
        try:
            size = self._decode_size(reader, row_index) if "video" in self.modalities else None
            # (np.unique: overlapping segments, segment_gap < 0, share instants)
            win = reader.read(w0, wdur, frame_times=np.unique(self.spec.frame_targets(v_starts)),
                              sample_rate=self.sample_rate, mono=True, size=size,
                              allow_missing_audio=self.allow_missing_audio, orient=self._orient[row_index],
                              modalities=self.modalities)
        except MediaError:
            self._readers.pop(row.path, None)
            self._infos.pop(row.path, None)
            reader.close()
            raise
        self._infos.pop(row.path, None)
        self._infos[row.path] = reader.info  # most recently used last
        if len(self._infos) > MAX_PROBE_RESULTS:
            del self._infos[next(iter(self._infos))]
        if self.max_open_files == 0:
            reader.close()
        return win, v_starts, a_starts

    def read_clip(self, index: int) -> tuple[SegmentCut, list[float], list[float]]:
        """Decode item ``index`` and cut its raw segments (``avssl.data.preprocess``); also returns the video and
        audio segment starts. Raises ``MediaError`` for a broken file (no skipping here)."""
        win, v_starts, a_starts = self.read_window(index)
        if "video" not in self.modalities:
            s, t = len(v_starts), self.spec.frames_per_segment
            frames, frames_valid = torch.zeros((s, t, 1, 1, 3), dtype=torch.uint8), torch.zeros(s, t, dtype=torch.bool)
        else:
            frames, frames_valid = cut_video(self.spec, win.frames, win.frame_times, v_starts,
                                             valid=win.frames_valid)
        wave, mask = cut_audio(self.spec, win.audio, win.audio_start, a_starts, valid=win.audio_valid)
        return SegmentCut(frames, frames_valid, wave, mask), v_starts, a_starts

    def _load(self, index: int) -> dict[str, Any]:
        row_index = self._items[index][0]
        row = self.rows[row_index]
        cut, v_starts, _ = self.read_clip(index)
        gen = self._generator("view", index)
        sample: dict[str, Any] = {}
        if "video" in self.modalities:
            if isinstance(self.video_transform, VideoTransform):  # one crop/flip shared by all S segments
                full_hw = self._display_hw(self._infos.get(row.path), row_index)
                view = self._view(self.video_transform, cut.frames, full_hw, gen)
                video = self.video_transform(cut.frames, params=view)
            else:
                video = self.video_transform(cut.frames)
            sample.update(video_entries(video, cut.frames_valid))
        if "audio" in self.modalities:
            spec, audio_valid = self.spec.audio_features(cut.audio, cut.audio_valid)  # [S, 1, F, M], [S, F]
            if isinstance(self.audio_transform, SpecAugment):
                spec = self.audio_transform(spec, generator=gen)
            elif self.audio_transform is not None:
                spec = self.audio_transform(spec)
            sample["audio"], sample["audio_valid"] = spec.float(), audio_valid
        sample.update({
            "segment_starts": torch.tensor(v_starts, dtype=torch.float64),
            "label": torch.tensor(self.label_of(row), dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "path": row.path,
        })
        return sample


# ---------------------------------------------------------------------- folders


def _probe_cache_path(root: Path) -> Path:
    return root / ".avssl_cache" / "probe.json"


def scan_folder(
    root: str | os.PathLike[str],
    *,
    extensions: Sequence[str] = VIDEO_EXTENSIONS,
    cache_file: str | os.PathLike[str] | None = None,
    split: str = "train",
) -> Manifest:
    """Rows spanning every decodable video file under ``root`` (recursive, sorted), labelled by first sub-folder.

    Probe results are cached in ``cache_file`` (default ``root/.avssl_cache/probe.json``) keyed by
    (relative path, size, mtime); files that fail to probe or have no video stream are skipped and logged.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"scan_folder: {root} is not a directory")
    cache_path = Path(cache_file) if cache_file is not None else _probe_cache_path(root)
    try:
        cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    except (OSError, ValueError):
        log.warning("scan_folder: ignoring unreadable probe cache %s", cache_path)
        cache = {}
    new_cache: dict[str, Any] = {}
    rows: list[ManifestRow] = []
    files = find_media(root, extensions)
    for p in files:
        rel = p.relative_to(root).as_posix()
        st = p.stat()
        key = f"{rel}|{st.st_size}|{st.st_mtime_ns}"
        entry = cache.get(key)
        if entry is None:
            try:
                info = probe(p)
                entry = {"info": info.to_dict()}
            except MediaError as e:
                entry = {"error": e.problem}
        new_cache[key] = entry
        if "error" in entry:
            log.warning("scan_folder: skipping %s (%s)", p, entry["error"])
            continue
        info = entry["info"]
        video = next((s for s in info["streams"] if s["kind"] == "video"), None)
        audio = next((s for s in info["streams"] if s["kind"] == "audio"), None)
        if video is None or not info.get("duration"):
            log.warning("scan_folder: skipping %s (%s)", p, "no video stream" if video is None else "no duration")
            continue
        parts = Path(rel).parts
        rows.append(ManifestRow(
            path=os.fspath(p), start=0.0, end=float(info["duration"]), split=split, duration=float(info["duration"]),
            has_audio=audio is not None, has_video=True, fps=video.get("avg_fps"), width=video.get("width"),
            height=video.get("height"), sample_rate=audio.get("sample_rate") if audio else None,
            channels=audio.get("channels") if audio else None, rotation=video.get("rotation"),
            codec_video=video.get("codec"), codec_audio=audio.get("codec") if audio else None,
            meta={"label": parts[0] if len(parts) > 1 else ""},
        ))
    if new_cache != cache:
        _write_json_atomic(cache_path, new_cache)
    return Manifest(rows)


def _write_json_atomic(path: Path, obj: Any) -> None:
    try:
        write_json_atomic(path, obj)
    except OSError as e:  # a read-only dataset folder: work without the cache
        log.warning("could not write probe cache %s (%s)", path, e)


class FolderDataset(AVClipDataset):
    """``AVClipDataset`` over every video file under ``root``; labels are the sorted first sub-folder names."""

    def __init__(self, root: str | os.PathLike[str], *, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 cache_file: str | os.PathLike[str] | None = None, **kwargs: Any) -> None:
        self.root = Path(root)
        rows = scan_folder(root, extensions=extensions, cache_file=cache_file)
        kwargs.setdefault("label_column", "label")
        super().__init__(rows, **kwargs)


def from_folder(root: str | os.PathLike[str], **kwargs: Any) -> FolderDataset:
    """Shorthand for ``FolderDataset(root, **kwargs)``."""
    return FolderDataset(root, **kwargs)


__all__ = [
    "AVClipDataset",
    "FolderDataset",
    "TooManyBadFiles",
    "VIDEO_EXTENSIONS",
    "from_folder",
    "scan_folder",
]
