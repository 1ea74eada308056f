"""Versioned manifest: one row per usable segment of a media file (see docs/manifest.md).

CSV files start with the comment line ``# avssl-manifest v1`` followed by a header; Parquet files (chosen by the
``.parquet`` extension, needs pyarrow) carry the version in the schema metadata key ``avssl_manifest_version``.
Relative paths in a manifest are resolved against the manifest's own folder when read.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_VERSION = 1
MAGIC = "avssl-manifest"
PARQUET_VERSION_KEY = b"avssl_manifest_version"
SPLITS = ("train", "val", "test")

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "start", "end", "split")
# optional typed columns -> type ("float", "int", "bool", "str")
MEDIA_COLUMNS: dict[str, str] = {
    "duration": "float",
    "has_audio": "bool",
    "has_video": "bool",
    "fps": "float",
    "width": "int",
    "height": "int",
    "sample_rate": "int",
    "channels": "int",
    "rotation": "int",
    "codec_video": "str",
    "codec_audio": "str",
}
FLAG_PREFIX = "flag_"
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


class ManifestError(ValueError):
    """A manifest cannot be read or written; the message names the file, and the line and column where known."""

    def __init__(self, path: str | os.PathLike[str], problem: str, *, line: int | None = None,
                 column: str | None = None):
        self.path, self.problem, self.line, self.column = os.fspath(path), problem, line, column
        where = self.path + (f", line {line}" if line is not None else "") + (
            f", column '{column}'" if column is not None else "")
        super().__init__(f"{where}: {problem}")


class ManifestVersionError(ManifestError):
    """The manifest was written by a newer schema version than this avssl understands."""


@dataclass
class ManifestRow:
    """One segment ``[start, end)`` (seconds, file clock) of the file at ``path``.

    ``flags`` holds the ``flag_*`` columns without the prefix; ``meta`` the free string columns (child, session,
    label, ...). Media facts are ``None`` where unknown.
    """

    path: str
    start: float
    end: float
    split: str = "train"
    duration: float | None = None
    has_audio: bool | None = None
    has_video: bool | None = None
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    sample_rate: int | None = None
    channels: int | None = None
    rotation: int | None = None
    codec_video: str | None = None
    codec_audio: str | None = None
    flags: dict[str, bool] = field(default_factory=dict)
    exclude: bool = False
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def length(self) -> float:
        return self.end - self.start

    def get(self, column: str, default: Any = None) -> Any:
        """Value of a manifest column by its name (``flag_x`` and metadata columns included)."""
        if column in REQUIRED_COLUMNS or column in MEDIA_COLUMNS or column == "exclude":
            return getattr(self, column)
        if column.startswith(FLAG_PREFIX):
            return self.flags.get(column[len(FLAG_PREFIX):], default)
        return self.meta.get(column, default)

    def to_record(self) -> dict[str, Any]:
        """Flat column -> value mapping as written to a file."""
        rec: dict[str, Any] = {c: getattr(self, c) for c in REQUIRED_COLUMNS}
        rec.update({c: getattr(self, c) for c in MEDIA_COLUMNS})
        rec.update({FLAG_PREFIX + k: v for k, v in self.flags.items()})
        rec["exclude"] = self.exclude
        rec.update(self.meta)
        return rec

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> ManifestRow:
        """Build a row from a flat mapping (values already typed or strings); raises ``ValueError`` on bad ones."""
        return _parse_record(rec, "<record>", None)


def _parse_value(kind: str, value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and value == ""):
        return None
    if kind == "str":
        return str(value)
    if kind == "bool":
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false/1/0), got {value!r}")
    if kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        f = float(value)
        if not f.is_integer():
            raise ValueError(f"expected an integer, got {value!r}")
        return int(f)
    f = float(value)
    if not math.isfinite(f):
        raise ValueError(f"expected a finite number, got {value!r}")
    return f


def _parse_record(rec: Mapping[str, Any], path: str | os.PathLike[str], line: int | None) -> ManifestRow:
    def parse(column: str, kind: str) -> Any:
        try:
            return _parse_value(kind, rec.get(column))
        except (TypeError, ValueError) as e:
            raise ManifestError(path, str(e), line=line, column=column) from None

    for c in REQUIRED_COLUMNS:
        if parse(c, "str") is None:
            raise ManifestError(path, "required value is empty", line=line, column=c)
    start, end = parse("start", "float"), parse("end", "float")
    if start < 0:
        raise ManifestError(path, f"start must be >= 0, got {start}", line=line, column="start")
    if end <= start:
        raise ManifestError(path, f"end ({end}) must be greater than start ({start})", line=line, column="end")
    split = str(rec["split"]).strip()
    if split not in SPLITS:
        raise ManifestError(path, f"split must be one of {SPLITS}, got {split!r}", line=line, column="split")
    media = {c: parse(c, kind) for c, kind in MEDIA_COLUMNS.items()}
    flags: dict[str, bool] = {}
    meta: dict[str, str] = {}
    for c in rec:
        if c.startswith(FLAG_PREFIX):
            v = parse(c, "bool")
            flags[c[len(FLAG_PREFIX):]] = bool(v)
        elif c not in REQUIRED_COLUMNS and c not in MEDIA_COLUMNS and c != "exclude":
            v = parse(c, "str")
            meta[c] = "" if v is None else v
    return ManifestRow(path=str(rec["path"]), start=start, end=end, split=split, flags=flags,
                       exclude=bool(parse("exclude", "bool")), meta=meta, **media)


class Manifest(Sequence[ManifestRow]):
    """Rows of a manifest plus its column order; ``source`` is the file it came from (if any)."""

    def __init__(self, rows: Iterable[ManifestRow], columns: Sequence[str] | None = None,
                 source: str | None = None, version: int = MANIFEST_VERSION):
        self.rows = list(rows)
        self.columns = list(columns) if columns is not None else _columns_of(self.rows)
        self.source = source
        self.version = version

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return Manifest(self.rows[i], self.columns, self.source, self.version)
        return self.rows[i]

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def filter(self, split: str | Sequence[str] | None = None, *, include_excluded: bool = False,
               **equals: str) -> Manifest:
        """Rows of the given split(s), without ``exclude`` rows unless asked, whose metadata equal ``equals``."""
        splits = {split} if isinstance(split, str) else None if split is None else set(split)
        if splits is not None and not splits <= set(SPLITS):
            raise ValueError(f"unknown split(s) {sorted(splits - set(SPLITS))}; expected {SPLITS}")
        keep = [
            r for r in self.rows
            if (splits is None or r.split in splits) and (include_excluded or not r.exclude)
            and all(str(r.get(k)) == str(v) for k, v in equals.items())
        ]
        return Manifest(keep, self.columns, self.source, self.version)

    def values(self, column: str) -> list[Any]:
        return [r.get(column) for r in self.rows]

    def __repr__(self) -> str:
        return f"Manifest({len(self.rows)} rows, source={self.source!r})"


def _columns_of(rows: Sequence[ManifestRow], extra_columns: Sequence[str] | None = None) -> list[str]:
    cols = list(REQUIRED_COLUMNS)
    cols += [c for c in MEDIA_COLUMNS if any(getattr(r, c) is not None for r in rows)]
    flags = sorted({FLAG_PREFIX + k for r in rows for k in r.flags})
    cols += flags + ["exclude"]
    meta: list[str] = []
    for r in rows:
        meta += [k for k in r.meta if k not in meta]
    for c in extra_columns or ():
        if c not in cols and c not in meta:
            meta.append(c)
    for c in meta:
        if c in REQUIRED_COLUMNS or c in MEDIA_COLUMNS or c == "exclude" or c.startswith(FLAG_PREFIX):
            raise ValueError(f"metadata column {c!r} clashes with a schema column")
    return cols + meta


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_manifest(path: str | os.PathLike[str], rows: Iterable[ManifestRow | Mapping[str, Any]], *,
                   extra_columns: Sequence[str] | None = None) -> Path:
    """Validate ``rows`` and write them atomically (temp file + rename) as CSV, or Parquet for ``.parquet``.

    ``rows`` may be ``ManifestRow``s or flat mappings; ``extra_columns`` adds (possibly empty) metadata columns.
    """
    path = Path(path)
    parsed: list[ManifestRow] = []
    for i, r in enumerate(rows):
        if isinstance(r, ManifestRow):
            r = r.to_record()
        parsed.append(_parse_record(r, path, i + 1))  # re-validates; "line" = row number here
    try:
        columns = _columns_of(parsed, extra_columns)
    except ValueError as e:
        raise ManifestError(path, str(e)) from None
    records = [{c: rec.get(c) for c in columns} for rec in (r.to_record() for r in parsed)]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if path.suffix.lower() == ".parquet":
            os.close(fd)
            _write_parquet(tmp, records, columns)
        else:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
                f.write(f"# {MAGIC} v{MANIFEST_VERSION}\n")
                w = csv.writer(f, lineterminator="\n")
                w.writerow(columns)
                for rec in records:
                    w.writerow([_fmt(rec[c]) for c in columns])
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _arrow_type(column: str):  # noqa: ANN202 - pyarrow type
    import pyarrow as pa

    kind = MEDIA_COLUMNS.get(column, "str")
    if column in ("start", "end"):
        kind = "float"
    elif column == "exclude" or column.startswith(FLAG_PREFIX):
        kind = "bool"
    return {"float": pa.float64(), "int": pa.int64(), "bool": pa.bool_(), "str": pa.string()}[kind]


def _write_parquet(tmp: str, records: list[dict[str, Any]], columns: list[str]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dev dependency
        raise ManifestError(tmp, "writing Parquet manifests needs pyarrow (pip install avssl[parquet])") from e
    arrays = [pa.array([rec[c] for rec in records], type=_arrow_type(c)) for c in columns]
    schema = pa.schema([pa.field(c, a.type) for c, a in zip(columns, arrays)],
                       metadata={PARQUET_VERSION_KEY: str(MANIFEST_VERSION).encode()})
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), tmp)


def _check_version(path: Path, version: int) -> None:
    if version > MANIFEST_VERSION:
        raise ManifestVersionError(
            path, f"manifest schema version {version} is newer than this avssl supports ({MANIFEST_VERSION}); "
            "upgrade avssl to read it", line=1 if path.suffix.lower() != ".parquet" else None)
    if version < 1:
        raise ManifestError(path, f"invalid manifest schema version {version}", line=1)


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]], int]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ManifestError(path, "manifest file not found") from None
    except UnicodeDecodeError as e:
        raise ManifestError(path, f"not a UTF-8 text file ({e.reason})") from None
    lines = text.splitlines(keepends=True)
    version, first = 1, 0  # a CSV without the version line is read as version 1
    if lines and lines[0].startswith("#"):
        words = lines[0].lstrip("#").split()
        if len(words) >= 2 and words[0] == MAGIC and words[1].startswith("v"):
            try:
                version = int(words[1][1:])
            except ValueError:
                raise ManifestError(path, f"bad version tag {words[1]!r}", line=1) from None
        first = 1
    _check_version(path, version)
    reader = csv.reader(io.StringIO("".join(lines[first:])))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError(path, "no header line", line=first + 1) from None
    header = [h.strip() for h in header]
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise ManifestError(path, f"duplicate column(s) {dup}", line=first + 1)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(path, f"missing required column(s) {missing}; header is {header}", line=first + 1)
    records: list[tuple[int, dict[str, Any]]] = []
    for values in reader:
        line = first + reader.line_num
        if not values or (len(values) == 1 and not values[0].strip()) or values[0].startswith("#"):
            continue
        if len(values) != len(header):
            raise ManifestError(path, f"expected {len(header)} fields, found {len(values)}", line=line)
        records.append((line, dict(zip(header, values))))
    return header, records, version


def _read_parquet(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]], int]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover
        raise ManifestError(path, "reading Parquet manifests needs pyarrow (pip install avssl[parquet])") from e
    if not path.is_file():
        raise ManifestError(path, "manifest file not found")
    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types
        raise ManifestError(path, f"not a readable Parquet file ({e})") from None
    meta = table.schema.metadata or {}
    raw = meta.get(PARQUET_VERSION_KEY, b"1")
    try:
        version = int(raw)
    except ValueError:
        raise ManifestError(path, f"bad schema version {raw!r}") from None
    _check_version(path, version)
    header = list(table.column_names)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ManifestError(path, f"missing required column(s) {missing}; columns are {header}")
    # "line" for Parquet is the 1-based row number
    return header, [(i + 1, rec) for i, rec in enumerate(table.to_pylist())], version


def read_manifest(path: str | os.PathLike[str], *, resolve_paths: bool = True) -> Manifest:
    """Read and validate a CSV or Parquet manifest. Relative media paths are made absolute against the
    manifest's folder unless ``resolve_paths=False``. Errors are ``ManifestError`` naming file, line and column."""
    path = Path(path)
    header, records, version = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)
    rows = [_parse_record(rec, path, line) for line, rec in records]
    if resolve_paths:
        base = path.resolve().parent
        for r in rows:
            if not os.path.isabs(r.path):
                r.path = os.fspath(base / r.path)
    return Manifest(rows, header, source=os.fspath(path), version=version)


__all__ = [
    "MANIFEST_VERSION",
    "MEDIA_COLUMNS",
    "REQUIRED_COLUMNS",
    "SPLITS",
    "Manifest",
    "ManifestError",
    "ManifestRow",
    "ManifestVersionError",
    "read_manifest",
    "write_manifest",
]
