"""``avssl-stats``: dataset mean/std of the (un-normalised) log-mel, for ``FbankConfig.mean`` / ``std``.

Windows are placed deterministically (a hash of seed, file and window number), only spectrogram frames fully
covered by real audio are counted, and the moments are merged with Chan's parallel update in float64, so the
result is exact for what was read and memory stays O(1) in the dataset size.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from avssl.data.features import FbankConfig, log_mel, valid_frames
from avssl.data.sampling import hash_uniform
from avssl.data.sources import MEDIA_EXTENSIONS, find_media  # re-exported: the one list and folder walk

__all__ = ["MEDIA_EXTENSIONS", "RunningMoments", "compute_stats", "find_media", "read_rows"]


# reader(path, start, duration, sample_rate) -> (audio float32 [S], audio_valid bool [S])
AudioReader = Callable[[str, float, float, int], tuple[torch.Tensor, torch.Tensor]]


class RunningMoments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.) in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, values: torch.Tensor) -> None:
        v = values.detach().reshape(-1).to(torch.float64)
        n_b = int(v.numel())
        if n_b == 0:
            return
        mean_b = float(v.mean())
        m2_b = float(((v - mean_b) ** 2).sum())
        self.merge(n_b, mean_b, m2_b)

    def merge(self, n_b: int, mean_b: float, m2_b: float) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.count = n

    @property
    def std(self) -> float:
        """Population standard deviation (NaN when empty)."""
        return math.sqrt(self.m2 / self.count) if self.count else float("nan")


def _default_reader(
    path: str, start: float, duration: float, sample_rate: int
) -> tuple[torch.Tensor, torch.Tensor]:
    from avssl.data.media import read_av_window

    # read_av_window always decodes video; ask for a single tiny frame so the cost is mostly the audio
    win = read_av_window(
        path,
        start,
        duration,
        fps=1.0 / duration,
        size=16,
        sample_rate=sample_rate,
        mono=True,
        allow_missing_audio=True,
    )
    audio = win.audio if win.audio.dim() == 1 else win.audio.mean(dim=0)
    return audio, win.audio_valid


def _media_span(path: str) -> tuple[float, float]:
    from avssl.data.media import probe

    info = probe(path)
    if info.duration is None or not info.duration > 0:
        raise ValueError(f"{path}: duration unknown or zero, cannot place windows")
    return 0.0, float(info.duration)


def read_rows(manifest: str | os.PathLike[str], split: str | None = None) -> list[tuple[str, float, float]]:
    """``(path, start, end)`` rows of a manifest (excluded rows and rows without audio dropped)."""
    try:
        from avssl.data.manifest import read_manifest
    except ImportError:
        read_manifest = None  # type: ignore[assignment]
    rows: list[tuple[str, float, float]] = []
    if read_manifest is not None:
        for r in read_manifest(manifest):
            if r.exclude or r.has_audio is False or (split is not None and r.split != split):
                continue
            rows.append((r.path, float(r.start), float(r.end)))
        return rows
    base = Path(manifest).parent
    with open(manifest, newline="") as fh:
        lines = [ln for ln in fh if not ln.startswith("#")]
    for i, rec in enumerate(csv.DictReader(lines)):
        try:
            if split is not None and rec.get("split") != split:
                continue
            p = rec["path"] if os.path.isabs(rec["path"]) else str(base / rec["path"])
            rows.append((p, float(rec["start"]), float(rec["end"])))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{manifest}: row {i + 1}: need columns path,start,end ({exc})") from exc
    return rows


def _window_starts(
    key: object, span: tuple[float, float], n: int, duration: float, seed: int
) -> list[tuple[float, float]]:
    a, b = span
    if b - a <= duration:
        return [(a, b - a)]
    room = b - a - duration
    return [(a + room * hash_uniform("stats", seed, key, k), duration) for k in range(n)]


def compute_stats(
    sources: Iterable[Any],
    cfg: FbankConfig | None = None,
    *,
    windows_per_file: int = 8,
    window_duration: float = 2.0,
    seed: int = 0,
    reader: AudioReader | None = None,
    strict: bool = False,
    min_valid_fraction: float = 1.0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Mean / std of the log-mel over ``sources``.

    Each source is one of: a waveform tensor ``[S]`` (used whole, all valid); a pair ``(waveform, valid_mask)``;
    a media path (span = the whole file, via ``probe``); a ``(path, start, end)`` tuple, a mapping with those keys
    or a manifest row. For media, ``windows_per_file`` windows of ``window_duration`` s are placed
    deterministically in the span (the whole span when shorter). Only frames valid per ``valid_frames`` count.
    Unreadable files raise with ``strict=True``, else they are listed under ``"skipped"``.
    """
    cfg = cfg or FbankConfig()
    if windows_per_file < 1 or not window_duration > 0:
        raise ValueError(
            f"need windows_per_file >= 1 and window_duration > 0, got {windows_per_file}, {window_duration}"
        )
    read = reader or _default_reader
    moments = RunningMoments()
    frames_total = files = windows = 0
    skipped: list[dict[str, str]] = []

    def add(audio: torch.Tensor, valid: torch.Tensor) -> int:
        if audio.shape[-1] != valid.shape[-1]:
            raise ValueError(f"audio has {audio.shape[-1]} samples but its mask {valid.shape[-1]}")
        if audio.shape[-1] == 0 or not bool(valid.any()):
            return 0
        try:
            spec = log_mel(audio, cfg)
        except ValueError:  # shorter than one frame
            return 0
        keep = valid_frames(valid, cfg, min_valid_fraction)
        moments.update(spec[keep])
        return int(keep.sum())

    for item in sources:
        if isinstance(item, torch.Tensor):
            frames_total += add(item, torch.ones(item.shape[-1], dtype=torch.bool))
            files += 1
            windows += 1
            continue
        if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], torch.Tensor):
            frames_total += add(item[0], item[1])
            files += 1
            windows += 1
            continue
        if isinstance(item, (str, os.PathLike)):
            path, span = os.fspath(item), None
        elif isinstance(item, Mapping):
            path, span = str(item["path"]), (float(item["start"]), float(item["end"]))
        elif isinstance(item, tuple) and len(item) == 3:
            path, span = str(item[0]), (float(item[1]), float(item[2]))
        elif hasattr(item, "path") and hasattr(item, "start") and hasattr(item, "end"):
            path, span = str(item.path), (float(item.start), float(item.end))
        else:
            raise TypeError(f"compute_stats: cannot use source {item!r}")
        try:
            if span is None:
                span = _media_span(path)
            for start, dur in _window_starts((path, span[0]), span, windows_per_file, window_duration, seed):
                audio, valid = read(path, start, dur, cfg.sample_rate)
                frames_total += add(audio, valid)
                windows += 1
            files += 1
        except Exception as exc:  # a bad file must not end a long run unless asked to
            if strict:
                raise
            skipped.append({"path": path, "error": f"{type(exc).__name__}: {exc}"})
            if log is not None:
                log(f"skipped {path}: {exc}")
    return {
        "mean": moments.mean if moments.count else None,
        "std": moments.std if moments.count else None,
        "num_frames": frames_total,
        "num_values": moments.count,
        "num_files": files,
        "num_windows": windows,
        "windows_per_file": windows_per_file,
        "window_duration": window_duration,
        "seed": seed,
        "skipped": skipped,
        "config": dataclasses.asdict(cfg),
    }


