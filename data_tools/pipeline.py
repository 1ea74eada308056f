"""The ``avssl-prep`` pipeline: discover -> probe -> normalise -> segment + flag -> split -> manifest -> report.

Every output is written under a temporary name and renamed, and each recording's normalised media carries a
marker (``<id>.json``) with the source fingerprint and the options it was made with, so a re-run skips finished
work and redoes only what is missing or stale. A bad file is recorded with its reason and never stops the run.
With ``shard=i/N`` a job probes and normalises only its deterministic part; ``merge=true`` then builds the
manifest and the report from all parts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from avssl.data.manifest import ManifestRow, write_manifest
from avssl.data.orient import ORIENT_COLUMN, Orientation
from avssl.data_tools.discover import ProbeRecord, discover, probe_all
from avssl.data_tools.metadata import load_birthdates, load_transcripts, recording_metadata, utterances_json
from avssl.data_tools.normalise import NormaliseOptions, load_stats, normalise_recording
from avssl.data_tools.quality import FLAGS, QualityOptions, recording_flags, segment_flags, segment_grid
from avssl.data_tools.splits import assign_split
from avssl.data_tools.util import atomic_write_text

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("discover", "probe", "normalise", "segment", "manifest", "report")
PIPELINE_VERSION = 3  # 2: normaliser works in YUV (statistics v2); 3: deterministic x264 (mbtree=0). Older outputs are redone


class InjectedFault(RuntimeError):
    """Raised by ``fault.after=<stage>`` (tests of resumability)."""


@dataclass
class BadFile:
    rel: str
    reason: str  # one of the flag names or "undecodable"
    detail: str


@dataclass
class PrepResult:
    """What a run did; ``manifest`` is None for shard jobs (they do not merge)."""

    out: Path
    recordings: list[str]
    processed: list[str] = field(default_factory=list)  # normalised in this run
    skipped: list[str] = field(default_factory=list)  # already done
    bad_files: list[BadFile] = field(default_factory=list)
    rows: list[ManifestRow] = field(default_factory=list)
    manifest: Path | None = None
    report: Path | None = None


def parse_shard(shard: str | None) -> tuple[int, int]:
    """``"i/N"`` -> (i, N) with 0 <= i < N; None -> (0, 1)."""
    if shard in (None, "", "null"):
        return 0, 1
    try:
        i, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"shard must look like 'i/N' (e.g. 0/8), got {shard!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard {shard!r}: need 0 <= i < N")
    return i, n


def recording_id(rel: str) -> str:
    """Output name of a source file: its relative path without the extension."""
    return Path(rel).with_suffix("").as_posix()


def _progress(cfg: dict[str, Any], total: float, desc: str, unit: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not cfg.get("progress", True), dynamic_ncols=True)


def _workers(cfg: dict[str, Any]) -> int:
    w = cfg.get("workers", "auto")
    return max(1, os.cpu_count() or 1) if w in (None, "auto") else int(w)


def _fault(cfg: dict[str, Any], stage: str) -> None:
    if (cfg.get("fault") or {}).get("after") == stage:
        raise InjectedFault(f"fault injected after stage {stage!r}")


def _media_paths(out: Path, rid: str, encode: bool = True) -> tuple[Path, Path, Path, Path]:
    """(media, statistics, marker, error record) of a recording. Without encoding (``normalise.enabled=false``)
    only the statistics are made, under ``stats/``, and ``media`` is just the name they derive from."""
    if not encode:
        base = out / "stats" / rid
        return (base, base.with_name(base.name + ".stats.npz"),
                base.with_name(base.name + ".json"), base.with_name(base.name + ".error.json"))
    base = out / "media" / rid
    return (base.with_name(base.name + ".mp4"), base.with_name(base.name + ".mp4.stats.npz"),
            base.with_name(base.name + ".json"), base.with_name(base.name + ".error.json"))


def _outputs_ready(media: Path, stats: Path, encode: bool) -> bool:
    return stats.is_file() and (not encode or media.is_file())


def _normalise_task(src: str, rel: str, info: dict[str, Any], out: str, opts: dict[str, Any],
                    key: dict[str, Any], encode: bool = True) -> dict[str, Any]:
    """Normalise one recording, or only measure it (``encode=False``; runs in a worker); writes its marker or its
    error record."""
    from avssl.data.types import MediaInfo

    media, _, marker, error = _media_paths(Path(out), recording_id(rel), encode)
    try:
        res = normalise_recording(Path(src, rel), media, MediaInfo.from_dict(info), NormaliseOptions(**opts),
                                  encode=encode)
    except Exception as e:  # noqa: BLE001 - a bad file never stops the run
        problem = getattr(e, "problem", None) or f"{type(e).__name__}: {e}"
        atomic_write_text(error, json.dumps({"key": key, "rel": rel, "error": problem}, sort_keys=True))
        if marker.exists():
            marker.unlink()
        return {"rel": rel, "error": problem}
    facts = asdict(res)
    atomic_write_text(marker, json.dumps({"key": key, "rel": rel, "facts": facts}, sort_keys=True, indent=1))
    if error.exists():
        error.unlink()
    return {"rel": rel, "facts": facts}


def _norm_options(cfg: dict[str, Any]) -> NormaliseOptions:
    n = dict(cfg["normalise"])
    n.pop("enabled", None)
    n["debug_sleep_per_frame_s"] = float((cfg.get("fault") or {}).get("sleep_per_frame_s", 0.0) or 0.0)
    return NormaliseOptions(**n)


# options that only change the encoded media, not the statistics a measuring pass makes
_ENCODE_ONLY_OPTIONS = ("rotate", "hflip", "vflip", "gop_s", "crf", "preset", "audio_bitrate")


def normalise_enabled(cfg: dict[str, Any]) -> bool:
    """``normalise.enabled`` (default true): false keeps the source files and only measures them."""
    value = (cfg.get("normalise") or {}).get("enabled", True)
    if not isinstance(value, bool):
        raise ValueError(f"normalise.enabled must be true or false, got {value!r}")
    return value


def _task_key(probe: ProbeRecord, opts: NormaliseOptions, encode: bool = True) -> dict[str, Any]:
    if encode:
        return {"version": PIPELINE_VERSION, "source": probe.fingerprint, "options": opts.key()}
    options = {k: v for k, v in opts.key().items() if k not in _ENCODE_ONLY_OPTIONS}
    return {"version": PIPELINE_VERSION, "source": probe.fingerprint, "mode": "measure", "options": options}


def _done(out: Path, rel: str, key: dict[str, Any], retry_failed: bool, encode: bool = True) -> bool:
    media, stats, marker, error = _media_paths(out, recording_id(rel), encode)
    for f in (marker,) if retry_failed else (marker, error):
        if f.is_file():
            try:
                rec = json.loads(f.read_text())
            except ValueError:
                continue
            if rec.get("key") == key and (f is error or _outputs_ready(media, stats, encode)):
                return True
    return False


def source_orientation(stream_rotation: int, opts: NormaliseOptions) -> Orientation:
    """The read-time correction that shows a source file as normalising it would (``normalise.enabled=false``).

    Readers always apply the stream's display rotation; normalising applies ``rotate`` *instead of* it (``auto``:
    the stream's own), then the flips. So the extra rotation is the configured one minus the stream's.
    """
    if str(opts.rotate) == "auto":
        return Orientation(0, bool(opts.hflip), bool(opts.vflip))
    try:
        deg = int(opts.rotate)
    except (TypeError, ValueError):
        deg = 1  # not a number: refused below
    if deg % 90:
        raise ValueError(f"normalise.rotate must be auto or a multiple of 90 degrees, got {opts.rotate!r}")
    return Orientation((deg - int(stream_rotation)) % 360, bool(opts.hflip), bool(opts.vflip))


@contextmanager
def _pool(workers: int) -> Iterator[ProcessPoolExecutor | None]:
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as ex:
        yield ex


def run_prep(cfg: dict[str, Any], echo: Callable[[str], Any] = print) -> PrepResult:
    """Run the pipeline described by ``cfg`` (the composed ``prep`` config as a plain dict)."""
    src, out = Path(cfg["src"]).expanduser(), Path(cfg["out"]).expanduser()
    ds = cfg["dataset"]
    si, sn = parse_shard(cfg.get("shard"))
    merge_only = bool(cfg.get("merge", False))
    encode = normalise_enabled(cfg)
    source_orientation(0, _norm_options(cfg))  # a bad rotate fails here, not as a bad file per recording

    # 1. discover
    rels = discover(src, ds.get("extensions"), ds.get("exclude") or ())
    clashes: dict[str, str] = {}
    seen: dict[str, str] = {}
    for rel in rels:
        rid = recording_id(rel)
        if rid in seen:
            clashes[rel] = seen[rid]
        else:
            seen[rid] = rel
    mine = [r for i, r in enumerate(rels) if i % sn == si and r not in clashes]
    result = PrepResult(out=out, recordings=rels)
    if cfg.get("dry_run", False):
        opts = _norm_options(cfg)
        echo(f"[dry run] {len(rels)} media files under {src}; this job (shard {si}/{sn}) handles {len(mine)}")
        for rel in mine:
            media, stats, *_ = _media_paths(out, recording_id(rel), encode)
            target = media if encode else stats
            state = "exists" if target.exists() else "to do"
            echo(f"  {rel} -> {target.relative_to(out)} ({state})")
        if encode:
            echo(f"  normalise: {opts.key()}")
        else:
            echo("  normalise: off (normalise.enabled=false): the manifest points at the source files; one decode "
                 f"pass measures the quality statistics; orientation applied when read: rotate={opts.rotate}, "
                 f"hflip={opts.hflip}, vflip={opts.vflip}")
        echo(f"  segments of {cfg['segment']['length_s']} s; manifest {out / cfg['manifest_name']}")
        return result
    _fault(cfg, "discover")

    # 2. probe (cached)
    workers = _workers(cfg)
    todo_probe = rels if merge_only else mine
    with _progress(cfg, len(todo_probe), "probe", "file") as bar:
        probes = probe_all(src, todo_probe, out / "cache" / "probe", workers=workers, progress=bar.update)
    _fault(cfg, "probe")

    # 3. normalise
    opts = _norm_options(cfg)
    if not merge_only:
        tasks = []
        for rel in mine:
            p = probes[rel]
            if p.info is None or p.error:
                continue
            key = _task_key(p, opts, encode)
            if _done(out, rel, key, bool(cfg.get("retry_failed", False)), encode):
                result.skipped.append(rel)
            else:
                tasks.append((rel, p, key))
        total_s = sum(float(p.info.duration or 0.0) for _, p, _ in tasks if p.info is not None)
        with _progress(cfg, round(total_s, 1), "normalise" if encode else "measure", "s") as bar, \
                _pool(workers) as ex:
            args = [(os.fspath(src), rel, p.info.to_dict(), os.fspath(out), asdict(opts), key, encode)
                    for rel, p, key in tasks if p.info is not None]
            dur = {rel: float(p.info.duration or 0.0) for rel, p, _ in tasks if p.info is not None}
            if ex is None:
                done_iter: Any = (_normalise_task(*a) for a in args)
            else:
                done_iter = (f.result() for f in as_completed([ex.submit(_normalise_task, *a) for a in args]))
            for r in done_iter:
                result.processed.append(r["rel"])
                bar.update(round(dur[r["rel"]], 1))
        _fault(cfg, "normalise")
        if sn > 1:
            echo(f"shard {si}/{sn}: normalised {len(result.processed)}, skipped {len(result.skipped)}; "
                 f"run again with merge=true once every shard is done")
            return result

    # 4-7. segment, flag, split, manifest, report
    _finalise(cfg, src, out, rels, clashes, probes, opts, result)
    echo(f"manifest: {result.manifest} ({len(result.rows)} segments, "
         f"{sum(1 for r in result.rows if r.exclude)} excluded); report: {result.report}; "
         f"bad files: {len(result.bad_files)}")
    return result


def _normalised_columns(media: Path, root: Path, facts: dict[str, Any]) -> dict[str, Any]:
    """Manifest media columns of a normalised recording."""
    has_a = bool(facts["has_source_audio"])
    return dict(path=os.path.relpath(media, root), fps=facts["fps"], width=facts["width"], height=facts["height"],
                sample_rate=facts["sample_rate"] if has_a else None, channels=1 if has_a else None, rotation=0,
                codec_video="h264", codec_audio="aac" if has_a else None)


def _source_columns(path: Path, root: Path, info: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """Manifest media columns of an untouched source file, as ``docs/manifest.md`` defines them (stored size, the
    stream's rotation)."""
    v, au = info.video, info.audio
    a = au if (au is not None and facts["has_source_audio"]) else None
    return {"path": os.path.relpath(path, root), "fps": v.avg_fps, "width": v.width, "height": v.height,
            "sample_rate": a.sample_rate if a else None, "channels": a.channels if a else None,
            "rotation": v.rotation, "codec_video": v.codec, "codec_audio": a.codec if a else None}


def _finalise(cfg: dict[str, Any], src: Path, out: Path, rels: list[str], clashes: dict[str, str],
              probes: dict[str, ProbeRecord], opts: NormaliseOptions, result: PrepResult) -> None:
    encode = normalise_enabled(cfg)
    ds, seg, q_cfg, sp = cfg["dataset"], cfg["segment"], cfg["quality"], cfg["split"]
    q = QualityOptions(**{k: v for k, v in q_cfg.items() if k != "exclude"})
    exclude_on = set(q_cfg.get("exclude") or ())
    unknown = exclude_on - set(FLAGS)
    if unknown:
        raise ValueError(f"quality.exclude names unknown flag(s) {sorted(unknown)}; known: {list(FLAGS)}")
    birth = load_birthdates(ds["birthdates"]) if ds.get("birthdates") else {}
    transcripts = load_transcripts(ds["transcripts"], ds.get("transcript_columns")) if ds.get("transcripts") else {}
    manifest_path = out / cfg["manifest_name"]
    rows: list[ManifestRow] = []
    missing: list[str] = []
    for rel in rels:
        if rel in clashes:
            result.bad_files.append(BadFile(rel, "undecodable", f"output name clashes with {clashes[rel]}"))
            continue
        p = probes[rel]
        if p.info is None or p.error:
            result.bad_files.append(BadFile(rel, "undecodable", p.error or "cannot be probed"))
            continue
        media, stats_path, marker, error = _media_paths(out, recording_id(rel), encode)
        key = _task_key(p, opts, encode)
        if (marker.is_file() and json.loads(marker.read_text()).get("key") == key
                and _outputs_ready(media, stats_path, encode)):
            facts = json.loads(marker.read_text())["facts"]
        elif error.is_file() and json.loads(error.read_text()).get("key") == key:
            result.bad_files.append(BadFile(rel, "undecodable", json.loads(error.read_text())["error"]))
            continue
        else:
            missing.append(rel)
            continue
        stats = load_stats(stats_path)
        rflags = recording_flags(facts, q)
        if facts.get("declared_duration") and facts["declared_duration"] - facts["video_end"] > q.duration_tolerance_s:
            result.bad_files.append(BadFile(rel, "duration_mismatch", (
                f"truncated? decoded {facts['video_end']:.2f} s of {facts['declared_duration']:.2f} s declared")))
        if facts.get("decode_errors"):
            result.bad_files.append(BadFile(rel, "undecodable", f"{facts['decode_errors']} undecodable packet(s)"))
        meta = recording_metadata(rel, ds, birth)
        meta["recording"] = recording_id(rel)
        meta["source"] = rel
        if encode:
            media_cols = _normalised_columns(media, manifest_path.parent, facts)
        else:  # rows over the untouched source file, corrected when read (normalise.enabled=false)
            assert p.info is not None and p.info.video is not None
            media_cols = _source_columns(src / rel, manifest_path.parent, p.info, facts)
            meta[ORIENT_COLUMN] = str(source_orientation(p.info.video.rotation, opts))
        split = assign_split(meta["session_id"], sp["fractions"], sp.get("seed", 0), meta.get(ds.get("child_field") or "child"),
                             sp.get("heldout_children") or (), sp.get("heldout_split", "test"))
        utts = transcripts.get(Path(rel).stem, [])
        for a, b in segment_grid(facts["duration"], float(seg["length_s"]), facts["fps"], facts["sample_rate"]):
            flags, values = segment_flags(stats, facts, a, b, float(seg["length_s"]), float(seg["min_length_s"]), q)
            flags.update(rflags)
            row_meta = dict(meta)
            row_meta["segment"] = str(int(round(a / float(seg["length_s"]))))
            row_meta["audio_valid_fraction"] = f"{values['audio_valid_fraction']:.4f}"
            if transcripts:
                row_meta["utterances"] = utterances_json(utts, a, b)
            rows.append(ManifestRow(
                start=a, end=b, split=split, duration=facts["duration"], has_audio=facts["has_source_audio"],
                has_video=True, flags={f: bool(flags.get(f, False)) for f in FLAGS},
                exclude=any(flags.get(f, False) for f in exclude_on), meta=row_meta, **media_cols))
    if missing:
        done = "normalised" if encode else "measured"
        raise RuntimeError(f"{len(missing)} recording(s) have not been {done} with the current settings "
                           f"(e.g. {missing[:3]}); run the shard jobs (or a run without shard=) first")
    _fault(cfg, "segment")
    extra = ["child", "recording_date", "age_days"] + (["utterances"] if transcripts else []) + (
        [] if encode else [ORIENT_COLUMN])
    result.manifest = write_manifest(manifest_path, rows, extra_columns=extra)
    result.rows = rows
    _fault(cfg, "manifest")
    from avssl.data_tools.report import write_report

    result.report = write_report(out / "report", rows, result.bad_files, exclude_on, title=cfg.get("title", "avssl-prep report"))
    atomic_write_text(out / "bad_files.json", json.dumps([asdict(b) for b in result.bad_files], indent=1))
    _fault(cfg, "report")
