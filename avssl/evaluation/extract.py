"""Embeddings of every window of every video in a folder or manifest, written next to their timestamps.

One output file per input video, written atomically, so a re-run skips finished files: ``<out>/<path relative to
the root>.npz`` (or ``.parquet``) for a file under the root (the input folder, or the manifest's folder), and
``<out>/_outside_root/<name>.<hash>.npz`` for a file elsewhere (``hash``: 12 hex digits of the SHA-256 of its
resolved path), so that every input has its own output. Two inputs that would share an output, or an existing
output written for another input, are errors, never skips. NumPy files hold ``start``, ``end`` (seconds, file clock) and ``video``, ``audio`` ([W, D]
float32, L2-normalised); Parquet files hold one row per window with the same columns (embeddings as lists).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avssl.evaluation.embed import EncoderPair, embed_windows, window_starts
from avssl.evaluation.sources import EvalItem, items_from_folder, items_from_manifest

log = logging.getLogger("avssl.extract")
FORMATS = ("npz", "parquet")
OUTSIDE_ROOT = "_outside_root"  # output sub-folder of the files outside the root


@dataclass
class ExtractReport:
    """What a run did: files written, skipped (already done) and failed (with the reason), and the output file of
    every input (``outputs``: input path -> output path)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)


def _spans(input_path: Path) -> tuple[dict[str, list[tuple[float, float]]], Path, dict[str, str]]:
    """Spans to cover per file, the root that output names are relative to, and each file's picture correction
    (a manifest's ``orient`` column)."""
    if input_path.is_dir():
        items: list[EvalItem] = items_from_folder(input_path)
        root = input_path
    elif input_path.is_file():
        items = items_from_manifest(input_path)
        root = input_path.parent
    else:
        raise FileNotFoundError(f"{input_path}: no such folder or manifest")
    spans: dict[str, list[tuple[float, float]]] = defaultdict(list)
    orients: dict[str, str] = {}
    for it in items:
        spans[it.path].append((it.start, it.end))
        if orients.setdefault(it.path, it.orient) != it.orient:
            raise ValueError(f"{input_path}: rows of {it.path} disagree on the orient column "
                             f"({orients[it.path]!r} vs {it.orient!r})")
    return dict(spans), root, orients


def output_path(media: str, root: Path, out_dir: Path, fmt: str) -> Path:
    """Where the embeddings of ``media`` go under ``out_dir``: its resolved path relative to ``root``, or, outside
    ``root``, ``_outside_root/<name>.<first 12 hex digits of the SHA-256 of the resolved path>``; ``.<fmt>`` added.

    Distinct resolved paths give distinct outputs, and the same path always gives the same output."""
    p = Path(os.path.realpath(media))
    try:
        rel = p.relative_to(os.path.realpath(root))
    except ValueError:
        digest = hashlib.sha256(os.fsencode(p)).hexdigest()[:12]
        rel = Path(OUTSIDE_ROOT) / f"{p.name}.{digest}"
    return out_dir / rel.with_name(rel.name + f".{fmt}")


def _recorded_source(path: Path) -> str:
    """The input path an existing output file was written for (its ``meta``), reading only the metadata."""
    try:
        if path.suffix == ".npz":
            with np.load(path) as z:
                meta = json.loads(str(z["meta"]))
        else:
            import pyarrow.parquet as pq

            meta = json.loads((pq.read_schema(path).metadata or {}).get(b"avssl", b"{}"))
        source = meta.get("source_realpath") or meta["path"]
    except Exception as e:  # noqa: BLE001 - any unreadable file at an output name is refused, whatever the cause
        raise ValueError(
            f"{path}: exists but is not a readable avssl-extract output ({type(e).__name__}: {e}); refusing to "
            "skip or overwrite it (remove it, or choose another --out)"
        ) from e
    return str(source)


def plan_outputs(media: list[str], root: Path, out_dir: Path, fmt: str) -> tuple[dict[str, Path], list[str]]:
    """The output of every input and the inputs already done. Raises ``ValueError`` naming the files when two
    inputs map to one output, or an existing output was written for another input; nothing is written."""
    targets: dict[str, Path] = {}
    by_target: dict[Path, str] = {}
    for m in media:
        t = output_path(m, root, out_dir, fmt)
        if t in by_target:
            raise ValueError(
                f"{by_target[t]} and {m} map to the same output {t} (one file listed under two names, e.g. "
                "through a symbolic link?); list each file once"
            )
        by_target[t] = m
        targets[m] = t
    done = []
    for m, t in targets.items():
        if not (t.exists() or t.is_symlink()):
            continue
        recorded = _recorded_source(t)
        if os.path.realpath(recorded) != os.path.realpath(m):
            raise ValueError(
                f"{t}: already holds the embeddings of {recorded}, not of {m}; refusing to skip or overwrite it "
                "(choose another --out, or remove the file)"
            )
        done.append(m)
    return targets, done


def _write(path: Path, data: dict[str, np.ndarray], meta: dict[str, Any], fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if fmt == "npz":
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **data)  # type: ignore[arg-type]
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "start": data["start"],
                "end": data["end"],
                "video": list(data["video"]),
                "audio": list(data["audio"]),
            }
        )
        table = table.replace_schema_metadata({"avssl": json.dumps(meta)})
        pq.write_table(table, tmp)
    os.replace(tmp, path)


def read_embeddings(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an output file back: ``start``, ``end``, ``video``, ``audio`` arrays and ``meta``."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: z[k] for k in ("start", "end", "video", "audio")} | {
                "meta": json.loads(str(z["meta"]))
            }
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    meta = json.loads((t.schema.metadata or {}).get(b"avssl", b"{}"))
    return {
        "start": t["start"].to_numpy(),
        "end": t["end"].to_numpy(),
        "video": np.stack(t["video"].to_numpy(zero_copy_only=False)).astype(np.float32),
        "audio": np.stack(t["audio"].to_numpy(zero_copy_only=False)).astype(np.float32),
        "meta": meta,
    }


def extract(
    checkpoint: str | os.PathLike[str],
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    window: float | None = None,
    hop: float | None = None,
    fmt: str = "npz",
    device: str = "cpu",
    chunk: float = 30.0,
    progress: bool = True,
) -> ExtractReport:
    """Embed every ``window`` (default: one model segment) every ``hop`` (default: ``window``) seconds of each video.

    Files that fail to decode are reported in ``failed`` and the run goes on; existing outputs of the same inputs
    are skipped. Output names: see :func:`output_path`; collisions raise ``ValueError`` before anything is written.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    from tqdm.auto import tqdm

    from avssl.data.errors import MediaError

    pair = EncoderPair.load(checkpoint, device)
    window = float(window or pair.segment_duration)
    hop = float(hop or window)
    if window + 1e-9 < pair.segment_duration:
        raise ValueError(f"window {window} s is shorter than the model's segment ({pair.segment_duration} s)")
    spans, root, orients = _spans(Path(input_path))
    out = Path(out_dir)
    report = ExtractReport()
    meta_common = {
        "checkpoint": os.path.abspath(checkpoint),
        "window": window,
        "hop": hop,
        "segment_duration": pair.segment_duration,
    }
    targets, done = plan_outputs(sorted(spans), root, out, fmt)
    report.outputs = {m: str(t) for m, t in targets.items()}
    report.skipped.extend(done)
    for media in tqdm(sorted(set(spans) - set(done)), desc="extract", disable=not progress):
        target = targets[media]
        starts = sorted({t for a, b in spans[media] for t in window_starts(a, b, window, hop)})
        try:
            if starts:
                v, a = embed_windows(pair, media, starts, window, chunk=chunk, orient=orients[media])
            else:
                v = a = torch.empty(0, pair.video.embed_dim)
        except MediaError as e:
            log.warning("extract: skipping %s: %s", media, e.problem)
            report.failed[media] = str(e)
            continue
        data = {
            "start": np.asarray(starts, dtype=np.float64),
            "end": np.asarray(starts, dtype=np.float64) + window,
            "video": v.float().numpy(),
            "audio": a.float().numpy(),
        }
        _write(target, data, {**meta_common, "path": media, "source_realpath": os.path.realpath(media)}, fmt)
        report.written.append(media)
    return report


__all__ = ["FORMATS", "OUTSIDE_ROOT", "ExtractReport", "output_path", "plan_outputs", "read_embeddings", "extract"]
