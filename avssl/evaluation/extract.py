"""Embeddings of every window of every video in a folder or manifest, written next to their timestamps.

One output file per input video (``<out>/<relative path>.npz`` or ``.parquet``), written atomically, so a re-run
skips finished files. NumPy files hold ``start``, ``end`` (seconds, file clock) and ``video``, ``audio`` ([W, D]
float32, L2-normalised); Parquet files hold one row per window with the same columns (embeddings as lists).
"""

from __future__ import annotations

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


@dataclass
class ExtractReport:
    """What a run did: files written, skipped (already done) and failed (with the reason)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


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
    """Where the embeddings of ``media`` go: its path relative to ``root`` (else its name) under ``out_dir``."""
    p = Path(os.path.realpath(media))
    try:
        rel = p.relative_to(os.path.realpath(root))
    except ValueError:
        rel = Path(p.name)
    return out_dir / rel.with_name(rel.name + f".{fmt}")


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

    Files that fail to decode are reported in ``failed`` and the run goes on; existing outputs are skipped.
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
    for media in tqdm(sorted(spans), desc="extract", disable=not progress):
        target = output_path(media, root, out, fmt)
        if target.exists():
            report.skipped.append(media)
            continue
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
        _write(target, data, {**meta_common, "path": media}, fmt)
        report.written.append(media)
    return report


__all__ = ["FORMATS", "ExtractReport", "output_path", "read_embeddings", "extract"]
