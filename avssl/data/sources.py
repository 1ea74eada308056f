"""Data sources as one registry: ``demo``, ``folder``, ``manifest`` (rows of one type, ``ManifestRow``) and
``shards`` (streamed). The DataModule, ``avssl-eval``/``avssl-extract`` and ``avssl-stats`` all resolve
``data.source`` here, so a new source is one function registered with :func:`register_source` (plus its config
keys), and every consumer gets it.

One list of media extensions (:data:`MEDIA_EXTENSIONS`) and one folder walk (:func:`find_media`) serve them all.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avssl.data.manifest import ManifestRow

__all__ = [
    "MEDIA_EXTENSIONS",
    "DataSource",
    "SourceRows",
    "available_sources",
    "find_media",
    "get_source",
    "register_source",
    "source_rows",
]

MEDIA_EXTENSIONS: tuple[str, ...] = (
    ".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".ts", ".mts", ".flv", ".wmv", ".3gp", ".ogv",
)
_IGNORED_DIRS = (".avssl_cache",)


def find_media(root: str | os.PathLike[str], extensions: Iterable[str] = MEDIA_EXTENSIONS) -> list[Path]:
    """Media files under ``root`` (recursive, sorted by path; avssl's own cache folders left out)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts
                  and not any(d in p.parts for d in _IGNORED_DIRS))


@dataclass(frozen=True)
class SourceRows:
    """What a map-style source yields: its rows and, where one exists, the manifest file they came from."""

    rows: list[ManifestRow]
    manifest_path: str | None = None


@dataclass(frozen=True)
class DataSource:
    """A registered source. ``rows(path, options)`` lists its rows (map-style sources); streaming sources
    (``streaming=True``) are read by their own dataset and list no rows."""

    name: str
    rows: Callable[[str | None, Mapping[str, Any]], SourceRows] | None
    streaming: bool = False
    needs_path: bool = True
    doc: str = ""


_SOURCES: dict[str, DataSource] = {}


def register_source(name: str, *, streaming: bool = False, needs_path: bool = True,
                    ) -> Callable[[Callable[[str | None, Mapping[str, Any]], SourceRows]],
                                  Callable[[str | None, Mapping[str, Any]], SourceRows]]:
    """Decorator: register ``fn(path, options) -> SourceRows`` as the source ``name``."""

    def deco(fn: Callable[[str | None, Mapping[str, Any]], SourceRows]
             ) -> Callable[[str | None, Mapping[str, Any]], SourceRows]:
        if name in _SOURCES:
            raise ValueError(f"data source {name!r} is registered twice")
        _SOURCES[name] = DataSource(name, None if streaming else fn, streaming, needs_path,
                                    (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


def available_sources() -> list[str]:
    return sorted(_SOURCES)


def get_source(name: str) -> DataSource:
    try:
        return _SOURCES[name]
    except KeyError:
        raise ValueError(f"data.source must be one of {available_sources()}, got {name!r}") from None


def source_rows(name: str, path: str | os.PathLike[str] | None = None,
                options: Mapping[str, Any] | None = None) -> SourceRows:
    """Rows of source ``name`` at ``path``. ``options``: ``demo`` (kwargs of ``ensure_demo_dataset``, with
    ``cache_dir``), ``val_fraction`` and ``seed`` (folder split), ``extensions`` (folder walk)."""
    src = get_source(name)
    if src.streaming or src.rows is None:
        raise ValueError(f"data.source={name!r} is streamed by its own dataset; it lists no rows")
    if src.needs_path and not path:
        raise ValueError(f"data.path must be set for data.source={name!r}")
    return src.rows(None if path is None else os.fspath(path), dict(options or {}))


# --- the built-in sources --------------------------------------------------------------------------------------


@register_source("demo", needs_path=False)
def _demo(path: str | None, options: Mapping[str, Any]) -> SourceRows:
    """The built-in demo data (generated once and cached; ``avssl.data_tools.demo``)."""
    from avssl.data.manifest import read_manifest
    from avssl.data_tools.demo import ensure_demo_dataset

    params = dict(options.get("demo") or {})
    cache = params.pop("cache_dir", None)
    manifest = str(ensure_demo_dataset(cache, **params))
    return SourceRows(list(read_manifest(manifest)), manifest)


@register_source("manifest")
def _manifest(path: str | None, options: Mapping[str, Any]) -> SourceRows:
    """An avssl manifest (CSV or Parquet), e.g. written by ``avssl-prep``."""
    from avssl.data.manifest import read_manifest

    assert path is not None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.path: manifest {path} not found")
    return SourceRows(list(read_manifest(path)), path)


def folder_split(rows: list[ManifestRow], root: str | os.PathLike[str], val_fraction: float,
                 seed: int) -> list[ManifestRow]:
    """A seeded ``val_fraction`` of the files go to ``val``, keyed by the path relative to ``root`` (so moving
    or copying the dataset folder keeps the split). The path is taken as found under ``root``, not resolved: a
    file that is a symbolic link to a recording stored elsewhere is keyed by its name in the folder."""
    from avssl.data.sampling import hash_uniform

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"data.val_fraction must lie in (0, 1) for a folder source, got {val_fraction}")
    base = os.path.abspath(root)
    out = []
    for r in rows:
        rel = os.path.relpath(os.path.abspath(r.path), base)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ValueError(f"{r.path}: not inside the folder {root}")
        rel = Path(rel).as_posix()
        val = hash_uniform("split", seed, rel) < val_fraction
        out.append(dataclasses.replace(r, split="val" if val else "train"))
    return out


@register_source("folder")
def _folder(path: str | None, options: Mapping[str, Any]) -> SourceRows:
    """Every decodable video under a folder, labelled by its first sub-folder (split by ``val_fraction``)."""
    from avssl.data.datasets import scan_folder

    assert path is not None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"data.path: folder {path} not found")
    rows = list(scan_folder(path, extensions=options.get("extensions") or MEDIA_EXTENSIONS))
    if options.get("val_fraction") is not None:
        rows = folder_split(rows, path, float(options["val_fraction"]), int(options.get("seed", 0)))
    return SourceRows(rows, None)


@register_source("shards", streaming=True)
def _shards(path: str | None, options: Mapping[str, Any]) -> SourceRows:  # pragma: no cover - streaming
    """WebDataset shards written by ``avssl-shards`` (``avssl.data.shards.ShardedClipDataset``)."""
    raise AssertionError("streaming source")
