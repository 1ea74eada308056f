"""Deterministic segment grid over a normalised recording and quality flags per segment.

Flags are computed from the statistics the normaliser kept (per output frame: luma mean/std/change; per 10 ms of
audio: energy, peak, clipped and real samples), so no second decoding pass is needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from avssl.data_tools.normalise import AUDIO_BLOCKS_PER_S

FLAGS: tuple[str, ...] = (
    "dark", "blank", "frozen", "silence", "clipping", "no_audio", "too_short",
    "start_mismatch", "duration_mismatch", "undecodable",
)
"""Every quality flag (manifest column ``flag_<name>``). Files that cannot be read at all get no rows; they are
listed in the report's bad files with reason ``undecodable``."""


@dataclass(frozen=True)
class QualityOptions:
    """Thresholds (``prep.quality`` in the config). Luma is 0-255; audio levels are dBFS."""

    dark_luma: float = 20.0  # frame mean below this is dark
    dark_fraction: float = 0.5  # ... segment is dark when this fraction of its frames are
    blank_std: float = 4.0  # frame luma std below this (and not dark) is blank (uniform picture)
    blank_fraction: float = 0.5
    frozen_diff: float = 0.5  # mean |luma change| to the previous source frame below this is static
    frozen_fraction: float = 0.9
    silence_db: float = -60.0  # 10 ms block RMS below this is silent
    silence_fraction: float = 0.9  # ... fraction of the real audio
    clip_fraction: float = 0.001  # fraction of real samples at the clip level
    no_audio_min_s: float = 0.1  # a stretch without source audio at least this long flags the segment
    start_tolerance_s: float = 0.1  # video vs audio start difference above this: start_mismatch
    duration_tolerance_s: float = 0.5  # video vs audio (or vs declared) end difference above this


def segment_grid(duration: float, length: float, fps: float, sample_rate: int) -> list[tuple[float, float]]:
    """``[k*length, (k+1)*length)`` windows covering ``[0, duration)``; the last one may be shorter.

    ``length`` must hold a whole number of frames and samples, so segments meet exactly at frame and sample
    boundaries (no frame lost or duplicated, audio continuous to the sample).
    """
    nf, ns = length * fps, length * sample_rate
    if length <= 0 or abs(nf - round(nf)) > 1e-6 or abs(ns - round(ns)) > 1e-6:
        raise ValueError(f"segment length {length} s must be a positive whole number of frames at {fps} fps "
                         f"and of samples at {sample_rate} Hz")
    n_frames_total = int(round(duration * fps))
    step = int(round(nf))
    out = []
    for a in range(0, n_frames_total, step):
        b = min(a + step, n_frames_total)
        out.append((a / fps, b / fps))
    return out


def _overlap(spans: list[list[float]], a: float, b: float) -> float:
    """Longest single overlap of ``spans`` with ``[a, b)``."""
    return max((min(e, b) - max(s, a) for s, e in spans), default=0.0)


def recording_flags(facts: dict[str, Any], q: QualityOptions) -> dict[str, bool]:
    """Flags that concern the whole recording (stream start / end mismatches)."""
    flags = {"start_mismatch": False, "duration_mismatch": False}
    if facts.get("audio_start") is not None:
        flags["start_mismatch"] = abs(facts["video_start"] - facts["audio_start"]) > q.start_tolerance_s
        flags["duration_mismatch"] = abs(facts["video_end"] - facts["audio_end"]) > q.duration_tolerance_s
    declared = facts.get("declared_duration")
    if declared is not None and declared - facts["video_end"] > q.duration_tolerance_s:
        flags["duration_mismatch"] = True  # the container promises more than could be decoded (truncated?)
    return flags


def segment_flags(stats: dict[str, np.ndarray], facts: dict[str, Any], a: float, b: float, seg_length: float,
                  min_length: float, q: QualityOptions) -> tuple[dict[str, bool], dict[str, float]]:
    """Flags of segment ``[a, b)`` and a few measured values (``audio_valid_fraction``, ``luma_mean``)."""
    fps = float(stats["fps"])
    fa, fb = int(round(a * fps)), int(round(b * fps))
    mean = stats["luma_mean"][fa:fb]
    std = stats["luma_std"][fa:fb]
    diff = stats["luma_diff"][fa:fb]
    n = max(1, mean.shape[0])
    dark = mean < q.dark_luma
    blank = (std < q.blank_std) & ~dark
    # frozen: static among frames that are neither dark nor blank (those have their own reasons)
    lively = ~(dark | blank)
    frozen = bool(lively.sum() >= q.frozen_fraction * n and (diff[lively] < q.frozen_diff).mean() >= q.frozen_fraction)

    ba, bb = int(round(a * AUDIO_BLOCKS_PER_S)), int(round(b * AUDIO_BLOCKS_PER_S))
    nvalid = stats["audio_valid"][ba:bb].astype(np.int64)
    sumsq = stats["audio_sumsq"][ba:bb].astype(np.float64)
    clipped = stats["audio_clipped"][ba:bb].astype(np.int64)
    block = int(stats["sample_rate"]) // AUDIO_BLOCKS_PER_S
    total_valid = int(nvalid.sum())
    has = nvalid > 0
    silence = False
    clipping = False
    if total_valid > 0:
        rms_db = 10 * np.log10(np.maximum(sumsq[has] / nvalid[has], 1e-20))
        silence = bool((rms_db < q.silence_db).mean() >= q.silence_fraction)
        clipping = clipped.sum() / total_valid >= q.clip_fraction
    expected = max(1, (bb - ba) * block)
    no_audio = (_overlap(facts.get("no_audio", []), a, b) >= min(q.no_audio_min_s, b - a - 1e-9)
                or total_valid == 0)
    err_times = facts.get("decode_error_times", [])
    flags = {
        "dark": bool(dark.mean() >= q.dark_fraction) if mean.size else True,
        "blank": bool(blank.mean() >= q.blank_fraction) if mean.size else False,
        "frozen": frozen,
        "silence": silence,
        "clipping": bool(clipping),
        "no_audio": bool(no_audio),
        "too_short": (b - a) < min_length - 1e-9,
        "undecodable": any(a <= t < b for t in err_times),
    }
    values = {"audio_valid_fraction": min(1.0, total_valid / expected),
              "luma_mean": float(mean.mean()) if mean.size else math.nan}
    return flags, values
