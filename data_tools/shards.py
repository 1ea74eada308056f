"""Writing WebDataset shards of pre-cut, re-encoded A/V segments from a manifest (``avssl-shards``): a data tool.
The format and the reader are in :mod:`avssl.data.shards`, which documents the layout."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avssl.data.atomic import write_json_atomic
from avssl.data.errors import MediaError
from avssl.data.features import FbankConfig, frame_geometry
from avssl.data.manifest import ManifestRow, read_manifest
from avssl.data.media import MediaReader
from avssl.data.orient import ORIENT_COLUMN, row_orient
from avssl.data.shard_formats import (
    AUDIO_CODECS,
    AUDIO_MEMBER,
    LOGMEL_MEMBER,
    VIDEO_FORMATS,
    VIDEO_MEMBER,
    compute_logmel,
    encode_audio,
    encode_frames,
    logmel_settings,
    quantize_audio,
    runs,
)
from avssl.data.shards import INDEX_NAME, SHARD_FORMAT_VERSION, ShardError

log = logging.getLogger("avssl.data.shards")


@dataclass(frozen=True)
class ShardWriteConfig:
    """How segments are re-encoded and grouped into shards (representations: ``avssl.data.shard_formats``)."""

    samples_per_shard: int = 64
    max_segment_duration: float | None = 10.0  # longer manifest rows are cut into pieces; None: one sample per row
    min_segment_duration: float = 1.0  # shorter rows / leftover pieces are left out
    size: int = 112  # short side in pixels (rounded to even sizes for yuv420p)
    fps: float = 8.0
    gop: int = 8  # keyframe interval in frames (format h264)
    crf: int = 23
    sample_rate: int = 16000
    audio_bitrate: int = 48000  # (format version 1 only: AAC)
    splits: tuple[str, ...] = ("train", "val")
    allow_missing_audio: bool = True
    format: str = "jpeg"  # h264 | h264_intra | jpeg (avssl.data.shard_formats.VIDEO_FORMATS)
    audio: str = "pcm"  # pcm | flac: int16 mono at sample_rate
    jpeg_quality: int = 90
    logmel: bool = False  # also store the raw log-mel of each sample's audio (computed with ``fbank``)
    fbank: dict[str, Any] | None = None  # FbankConfig fields of the stored log-mel (sample_rate is ours)

    def __post_init__(self) -> None:
        if self.samples_per_shard < 1 or self.size < 8 or not self.fps > 0 or self.gop < 1 or self.sample_rate < 1:
            raise ValueError(f"ShardWriteConfig: bad settings {self}")
        if self.max_segment_duration is not None and self.max_segment_duration < self.min_segment_duration:
            raise ValueError("ShardWriteConfig: max_segment_duration must be >= min_segment_duration")
        if self.format not in VIDEO_FORMATS:
            raise ValueError(f"ShardWriteConfig: format must be one of {VIDEO_FORMATS}, got {self.format!r}")
        if self.audio not in AUDIO_CODECS:
            raise ValueError(f"ShardWriteConfig: audio must be one of {AUDIO_CODECS}, got {self.audio!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"ShardWriteConfig: jpeg_quality must lie in [1, 100], got {self.jpeg_quality}")
        self.logmel_fbank()  # bad fbank settings fail here

    def logmel_fbank(self) -> FbankConfig:
        """The fbank settings of the stored log-mel (``fbank`` with this config's sample rate)."""
        fields = {f.name for f in dataclasses.fields(FbankConfig)}
        given = dict(self.fbank or {})
        unknown = sorted(set(given) - fields)
        if unknown:
            raise ValueError(f"ShardWriteConfig.fbank: unknown key(s) {unknown}; FbankConfig fields: {sorted(fields)}")
        given["sample_rate"] = self.sample_rate
        return FbankConfig(**given)


@dataclass(frozen=True)
class SegmentJob:
    """One sample to write: ``[start, end)`` seconds of ``path`` (file clock); ``ordinal`` numbers it in its split."""

    ordinal: int
    path: str
    start: float
    end: float
    split: str
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.split}-{self.ordinal:09d}"


def plan_segments(rows: Iterable[ManifestRow], cfg: ShardWriteConfig) -> dict[str, list[SegmentJob]]:
    """Samples per split, in manifest order: each row (not excluded, of a wanted split) cut into pieces of at most
    ``max_segment_duration`` seconds (equal pieces), pieces shorter than ``min_segment_duration`` dropped."""
    out: dict[str, list[SegmentJob]] = {s: [] for s in cfg.splits}
    for r in rows:
        if r.exclude or r.split not in out or r.length + 1e-9 < cfg.min_segment_duration:
            continue
        n = 1 if cfg.max_segment_duration is None else max(1, math.ceil(r.length / cfg.max_segment_duration - 1e-9))
        step = r.length / n
        jobs = out[r.split]
        for k in range(n):
            jobs.append(SegmentJob(len(jobs), r.path, r.start + k * step, r.start + (k + 1) * step, r.split,
                                   dict(r.meta)))
    return out


def _even(x: float) -> int:
    return max(2, int(round(x / 2)) * 2)


FRAME_TIME_TOLERANCE = 1e-3  # s: slot k holds the frame on screen just after start + k / fps (Matroska rounds
# frame times to whole milliseconds, so a frame due exactly on the grid may carry a time up to 0.5 ms after it)


def _aligned_start(t: float, sample_rate: int) -> float:
    """``t`` moved to the nearest instant of the file's sample grid, so stored audio sample ``i`` is file sample
    ``round(t * sr) + i`` exactly (the reader cuts audio by file sample index)."""
    return round(t * sample_rate) / sample_rate


def encode_segment(reader: MediaReader, job: SegmentJob, cfg: ShardWriteConfig
                   ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Decode ``job``'s window and store it in ``cfg.format`` / ``cfg.audio`` (format version 2); returns the
    sample's members (extension -> bytes, json included) and its metadata. Raises MediaError."""
    info = reader.info
    v = info.video
    if v is None or not v.width or not v.height:
        raise MediaError(job.path, "no video stream with a known size")
    fix = row_orient(job)  # a fixed correction from the manifest (data/orient.py), baked into the shard
    disp_w, disp_h = (v.height, v.width) if v.rotation in (90, 270) else (v.width, v.height)
    if fix.swaps_axes:
        disp_w, disp_h = disp_h, disp_w
    scale = cfg.size / min(disp_w, disp_h)
    if cfg.format == "jpeg":  # any size
        out_w, out_h = max(1, round(disp_w * scale)), max(1, round(disp_h * scale))
    else:  # yuv420p H.264: even sizes
        out_w, out_h = _even(disp_w * scale), _even(disp_h * scale)
    start = _aligned_start(job.start, cfg.sample_rate)
    dur = job.end - start
    slots_n = max(1, round(dur * cfg.fps))
    grid = start + np.arange(slots_n, dtype=np.float64) / cfg.fps + FRAME_TIME_TOLERANCE
    win = reader.read(start, dur, frame_times=grid, sample_rate=cfg.sample_rate, mono=True, size=(out_h, out_w),
                      allow_missing_audio=cfg.allow_missing_audio, orient=fix)
    fvalid = win.frames_valid.numpy()
    avalid = win.audio_valid.numpy()
    slots = np.flatnonzero(fvalid)  # frames the source does not show are left out (read back as invalid)
    if len(slots) == 0:
        raise MediaError(job.path, f"no video frame in [{start:.3f}, {job.end:.3f}) s")
    data, vdesc = encode_frames(win.frames.numpy()[slots], cfg.format, cfg.fps, gop=cfg.gop, crf=cfg.crf,
                                jpeg_quality=cfg.jpeg_quality)
    members = {VIDEO_MEMBER[cfg.format]: data}
    has_audio = info.has_audio and bool(avalid.any())
    adesc: dict[str, Any] | None = None
    mdesc: dict[str, Any] | None = None
    if has_audio:
        pcm = quantize_audio(win.audio.numpy() * avalid)  # uncovered samples are silence (and invalid)
        members[AUDIO_MEMBER[cfg.audio]] = encode_audio(pcm, cfg.audio, cfg.sample_rate)
        adesc = {"codec": cfg.audio, "start": start, "num_samples": len(pcm), "valid": runs(avalid)}
        fb = cfg.logmel_fbank()
        if cfg.logmel and len(pcm) >= num_samples_for_frames(1, fb):
            mel = compute_logmel(pcm.astype(np.float32) / 32768.0, fb)
            members[LOGMEL_MEMBER] = np.ascontiguousarray(mel, dtype="<f4").tobytes()
            mdesc = {"frames": int(mel.shape[0]), "mels": int(mel.shape[1]), "fbank": logmel_settings(fb)}
    vdesc.update(slots=int(len(fvalid)), index=[int(k) for k in slots], width=out_w, height=out_h)
    meta = {
        "version": SHARD_FORMAT_VERSION, "key": job.key, "ordinal": job.ordinal, "split": job.split,
        "source": job.path, "start": start, "end": job.end, "duration": dur, "fps": float(cfg.fps),
        "sample_rate": cfg.sample_rate, "width": out_w, "height": out_h, "has_audio": has_audio,
        "video_valid_fraction": float(fvalid.mean()) if len(fvalid) else 0.0,
        "audio_valid_fraction": float(avalid.mean()) if len(avalid) else 0.0,
        "meta": {k: val for k, val in job.meta.items() if k != ORIENT_COLUMN}, "orient_applied": str(fix),
        "video": vdesc, "audio": adesc, "logmel": mdesc,
    }
    members["json"] = json.dumps(meta, sort_keys=True).encode()
    return members, meta


def num_samples_for_frames(frames: int, fbank: FbankConfig) -> int:
    """Samples a Kaldi log-mel needs for ``frames`` frames."""
    g = frame_geometry(fbank)
    return g.length + (frames - 1) * g.step


def shard_name(split: str, shard: int) -> str:
    return f"{split}-{shard:06d}.tar"


def _write_shard(out_dir: str, name: str, jobs: list[SegmentJob], cfg: ShardWriteConfig) -> dict[str, Any]:
    """Write one shard atomically (temp file + rename) with its sidecar ``<name>.json``; return the sidecar."""
    import webdataset as wds

    target = Path(out_dir) / name
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out_dir)
    failed: list[dict[str, Any]] = []
    keys: list[str] = []
    readers: dict[str, MediaReader] = {}
    try:
        with os.fdopen(fd, "wb") as f, wds.TarWriter(f, mtime=0.0) as tw:
            for job in jobs:
                reader = readers.get(job.path)
                if reader is None:
                    for r in readers.values():
                        r.close()
                    readers = {job.path: (reader := MediaReader(job.path))}
                try:
                    members, _ = encode_segment(reader, job, cfg)
                except MediaError as e:
                    log.warning("shards: skipping %s [%.3f, %.3f): %s", job.path, job.start, job.end, e)
                    failed.append({"key": job.key, "source": job.path, "start": job.start, "error": str(e)})
                    continue
                tw.write({"__key__": job.key, **members})
                keys.append(job.key)
        sidecar = {"name": name, "num_samples": len(keys), "keys": keys, "failed": failed}
        _write_json_atomic(target.with_name(name + ".json"), sidecar)
        os.replace(tmp, target)  # the tar appears last: a shard with its tar present is finished
        return sidecar
    finally:
        for r in readers.values():
            r.close()
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json_atomic(path: Path, obj: Any) -> None:
    write_json_atomic(path, obj, indent=1, sort_keys=True)


def _fingerprint(cfg: ShardWriteConfig, plan: dict[str, list[SegmentJob]]) -> str:
    h = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode())
    for split in sorted(plan):
        for j in plan[split]:
            h.update(f"{j.key}|{j.path}|{j.start!r}|{j.end!r}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class ShardWriteResult:
    out_dir: str
    written: list[str]  # shards written by this call
    skipped: list[str]  # shards already finished by an earlier run
    num_samples: dict[str, int]  # per split, in the finished shards
    failed: list[dict[str, Any]]  # segments that could not be decoded (named, with the error)
    complete: bool  # every shard of the plan is finished and index.json is written


def write_shards(
    manifest: str | os.PathLike[str] | Iterable[ManifestRow],
    out_dir: str | os.PathLike[str],
    cfg: ShardWriteConfig | None = None,
    *,
    num_workers: int = 1,
    job_index: int = 0,
    num_jobs: int = 1,
) -> ShardWriteResult:
    """Write the manifest's segments as WebDataset shards under ``out_dir`` (see the module docstring).

    ``num_workers`` processes write shards in parallel; ``job_index`` / ``num_jobs`` pick every ``num_jobs``-th
    shard, so independent cluster jobs can share the work (the last one to finish writes ``index.json``; a run with
    ``num_jobs=1`` over a finished folder only rewrites it). A folder holding shards written with other settings or
    another manifest raises ``ShardError``.
    """
    cfg = cfg or ShardWriteConfig()
    if not 0 <= job_index < num_jobs:
        raise ValueError(f"write_shards: job_index={job_index} must lie in [0, num_jobs={num_jobs})")
    rows = read_manifest(manifest) if isinstance(manifest, (str, os.PathLike)) else list(manifest)
    plan = plan_segments(rows, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(cfg, plan)
    stamp = out / ".avssl_shards.json"
    if stamp.is_file():
        old = json.loads(stamp.read_text()).get("fingerprint")
        if old != fp:
            raise ShardError(f"{out}: holds shards written with other settings or another manifest "
                             f"(fingerprint {old} != {fp}); write to a new folder")
    else:
        _write_json_atomic(stamp, {"fingerprint": fp, "config": asdict(cfg)})
    tasks: list[tuple[str, list[SegmentJob]]] = []
    for split, jobs in plan.items():
        n = cfg.samples_per_shard
        tasks += [(shard_name(split, i // n), jobs[i : i + n]) for i in range(0, len(jobs), n)]
    mine = [t for k, t in enumerate(tasks) if k % num_jobs == job_index]
    todo = [t for t in mine if not (out / t[0]).is_file()]
    skipped = [t[0] for t in mine if (out / t[0]).is_file()]
    if skipped:
        log.info("shards: %d of %d shard(s) already finished in %s", len(skipped), len(mine), out)
    if num_workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(num_workers, len(todo))) as pool:
            list(pool.map(_write_shard, [str(out)] * len(todo), [t[0] for t in todo], [t[1] for t in todo],
                          [cfg] * len(todo)))
    else:
        for name, jobs in todo:
            _write_shard(str(out), name, jobs, cfg)
    complete = all((out / name).is_file() for name, _ in tasks)
    num_samples: dict[str, int] = {}
    failed: list[dict[str, Any]] = []
    if complete:
        index = _build_index(out, plan, tasks, cfg, fp, rows)
        num_samples = {s: sum(sh["num_samples"] for sh in v["shards"]) for s, v in index["splits"].items()}
        failed = index["failed"]
    return ShardWriteResult(str(out), [t[0] for t in todo], skipped, num_samples, failed, complete)


def _build_index(out: Path, plan: dict[str, list[SegmentJob]], tasks: list[tuple[str, list[SegmentJob]]],
                 cfg: ShardWriteConfig, fp: str, rows: Sequence[ManifestRow]) -> dict[str, Any]:
    splits: dict[str, Any] = {s: {"shards": []} for s in plan}
    failed: list[dict[str, Any]] = []
    for name, jobs in tasks:
        side = json.loads((out / (name + ".json")).read_text())
        splits[jobs[0].split]["shards"].append({"name": name, "num_samples": side["num_samples"]})
        failed += side["failed"]
    labels = sorted({r.meta.get("label", "") for r in rows if r.meta.get("label")})
    index = {"format": "avssl-shards", "version": SHARD_FORMAT_VERSION, "fingerprint": fp, "config": asdict(cfg),
             "splits": splits, "classes": {"label": labels}, "failed": failed}
    _write_json_atomic(out / INDEX_NAME, index)
    return index


# ---------------------------------------------------------------------------------------------------- index




__all__ = ["SegmentJob", "ShardWriteConfig", "ShardWriteResult", "encode_segment", "plan_segments", "shard_name", "write_shards"]
