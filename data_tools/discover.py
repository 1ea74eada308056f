"""Find media files under a source tree and probe them (in parallel, with a cache keyed by size and mtime)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avssl.data.errors import MediaError
from avssl.data.media import probe
from avssl.data.types import MediaInfo
from avssl.data_tools.util import atomic_write_text


def discover(src: str | os.PathLike[str], extensions: Sequence[str] | None = None,
             exclude: Sequence[str] = ()) -> list[str]:
    """Relative paths (POSIX, sorted) of the files under ``src`` whose extension is in ``extensions``
    (case-insensitive; ``None`` = every file, so anything PyAV opens can be used) and that match no ``exclude`` glob.
    Hidden files and folders are skipped."""
    root = Path(src)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: source folder does not exist")
    exts = None if extensions is None else {e.lower().lstrip(".") for e in extensions}
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            rel = Path(dirpath, name).relative_to(root).as_posix()
            if exts is not None and Path(name).suffix.lower().lstrip(".") not in exts:
                continue
            if any(fnmatch.fnmatch(rel, g) for g in exclude):
                continue
            found.append(rel)
    return sorted(found)


def fingerprint(path: str | os.PathLike[str]) -> dict[str, int]:
    """Cheap identity of a file's content for cache checks: size and modification time (ns)."""
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


@dataclass
class ProbeRecord:
    """The probe of one source file, or the reason it could not be probed."""

    rel: str
    fingerprint: dict[str, int]
    info: MediaInfo | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rel": self.rel, "fingerprint": self.fingerprint,
                "info": None if self.info is None else self.info.to_dict(), "error": self.error}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeRecord:
        info = None if d["info"] is None else MediaInfo.from_dict(d["info"])
        return cls(rel=d["rel"], fingerprint=d["fingerprint"], info=info, error=d["error"])


def _cache_file(cache_dir: Path, rel: str) -> Path:
    return cache_dir / (hashlib.sha1(rel.encode()).hexdigest()[:20] + ".json")


def probe_one(src: str, rel: str, cache_dir: str) -> ProbeRecord:
    """Probe ``src/rel``, reusing ``cache_dir``'s result when the file is unchanged; failures are recorded."""
    path = Path(src, rel)
    fp = fingerprint(path)
    cf = _cache_file(Path(cache_dir), rel)
    if cf.is_file():
        try:
            rec = ProbeRecord.from_dict(json.loads(cf.read_text()))
            if rec.rel == rel and rec.fingerprint == fp:
                return rec
        except (ValueError, KeyError, TypeError):
            pass  # unreadable cache entry: probe again
    try:
        info = probe(path)
        rec = ProbeRecord(rel, fp, info, None)
        if info.video is None:
            rec = ProbeRecord(rel, fp, info, "no video stream")
    except MediaError as e:
        rec = ProbeRecord(rel, fp, None, e.problem)
    except Exception as e:  # noqa: BLE001 - a bad file never stops the run
        rec = ProbeRecord(rel, fp, None, f"{type(e).__name__}: {e}")
    atomic_write_text(cf, json.dumps(rec.to_dict(), sort_keys=True))
    return rec


def probe_all(src: str | os.PathLike[str], rels: Sequence[str], cache_dir: str | os.PathLike[str],
              workers: int = 0, progress: Callable[[int], Any] | None = None) -> dict[str, ProbeRecord]:
    """Probe every file (``workers`` > 1: a process pool) and return ``rel -> ProbeRecord`` in input order."""
    src, cache = os.fspath(src), os.fspath(cache_dir)
    Path(cache).mkdir(parents=True, exist_ok=True)
    out: dict[str, ProbeRecord] = {}
    if workers > 1 and len(rels) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            for rec in ex.map(probe_one, [src] * len(rels), rels, [cache] * len(rels), chunksize=4):
                out[rec.rel] = rec
                if progress:
                    progress(1)
    else:
        for rel in rels:
            out[rel] = probe_one(src, rel, cache)
            if progress:
                progress(1)
    return {r: out[r] for r in rels}
