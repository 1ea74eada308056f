"""Recording metadata: fields from file names (configurable regex), ages from a birth-date table, utterances
from transcripts (SAYCam layout: Time / Speaker / Utterance / Video Name)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Utterance:
    time: float  # seconds on the recording's clock
    speaker: str
    text: str


def parse_filename(rel: str, pattern: str | None) -> dict[str, str]:
    """Named groups of ``pattern`` matched against the file's stem (``{}`` if no pattern or no match)."""
    if not pattern:
        return {}
    m = re.fullmatch(pattern, Path(rel).stem)
    return {k: v for k, v in m.groupdict().items() if v is not None} if m else {}


def parse_date(value: str, fmt: str | None = None) -> date:
    """A date from ``fmt`` (strptime) or, without one, ISO ``YYYY-MM-DD`` / ``YYYYMMDD``."""
    value = value.strip()
    if fmt:
        return datetime.strptime(value, fmt).date()
    for f in ("%Y-%m-%d", "%Y%m%d", "%Y/%m/%d"):
        try:
            return datetime.strptime(value, f).date()
        except ValueError:
            continue
    raise ValueError(f"unrecognised date {value!r} (expected YYYY-MM-DD or YYYYMMDD)")


def load_birthdates(path: str | os.PathLike[str], child_column: str = "child",
                    date_column: str = "birth_date") -> dict[str, date]:
    """``child -> birth date`` from a CSV table; errors name the file and line."""
    out: dict[str, date] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        for col in (child_column, date_column):
            if col not in (reader.fieldnames or []):
                raise ValueError(f"{path}: birth-date table lacks column {col!r} (has {reader.fieldnames})")
        for i, row in enumerate(reader, start=2):
            try:
                out[row[child_column].strip()] = parse_date(row[date_column])
            except ValueError as e:
                raise ValueError(f"{path}, line {i}: {e}") from None
    return out


def parse_clock(value: str) -> float:
    """Seconds from ``HH:MM:SS[.f]``, ``MM:SS[.f]`` or a plain number of seconds."""
    parts = value.strip().split(":")
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"unrecognised time {value!r}")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"unrecognised time {value!r}") from None
    secs = 0.0
    for n in nums:
        secs = secs * 60 + n
    return secs


def load_transcripts(path: str | os.PathLike[str], columns: dict[str, str] | None = None) -> dict[str, list[Utterance]]:
    """``video stem -> utterances sorted by time`` from a CSV transcript table.

    ``columns`` maps the roles ``time``, ``speaker``, ``utterance``, ``video`` to the table's column names
    (SAYCam's: Time, Speaker, Utterance, Video Name). Video names are matched on their stem (extension dropped).
    """
    cols = {"time": "Time", "speaker": "Speaker", "utterance": "Utterance", "video": "Video Name"}
    cols.update(columns or {})
    out: dict[str, list[Utterance]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in cols.values() if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: transcript table lacks column(s) {missing} (has {reader.fieldnames})")
        for i, row in enumerate(reader, start=2):
            try:
                t = parse_clock(row[cols["time"]])
            except ValueError as e:
                raise ValueError(f"{path}, line {i}: {e}") from None
            stem = Path(row[cols["video"]].strip()).stem
            out.setdefault(stem, []).append(Utterance(t, row[cols["speaker"]].strip(), row[cols["utterance"]].strip()))
    for v in out.values():
        v.sort(key=lambda u: u.time)
    return out


def utterances_json(utts: list[Utterance], start: float, end: float) -> str:
    """Utterances with ``start <= time < end`` as JSON, times relative to ``start`` (the segment's own clock)."""
    sel = [{"t": round(u.time - start, 3), "speaker": u.speaker, "text": u.text} for u in utts if start <= u.time < end]
    return json.dumps(sel, ensure_ascii=False, separators=(",", ":")) if sel else ""


def recording_metadata(rel: str, cfg: dict[str, Any], birthdates: dict[str, date]) -> dict[str, str]:
    """String metadata columns of one recording: filename fields, ``session_id``, ``recording_date``, ``age_days``.

    ``cfg`` keys: ``pattern`` (regex with named groups), ``date_field``/``date_format``, ``child_field``,
    ``session_format`` (str.format over the fields; default: the file's path without extension).
    """
    fields = parse_filename(rel, cfg.get("pattern"))
    meta = dict(fields)
    rec_date: date | None = None
    df = cfg.get("date_field")
    if df and df in fields:
        try:
            rec_date = parse_date(fields[df], cfg.get("date_format"))
            meta["recording_date"] = rec_date.isoformat()
        except ValueError:
            rec_date = None
    fmt = cfg.get("session_format")
    try:
        meta["session_id"] = fmt.format(**fields) if fmt else str(Path(rel).with_suffix(""))
    except (KeyError, IndexError):
        meta["session_id"] = str(Path(rel).with_suffix(""))  # name did not match the pattern
    child = fields.get(cfg.get("child_field") or "child")
    if child is not None and rec_date is not None and child in birthdates:
        meta["age_days"] = str((rec_date - birthdates[child]).days)
    return meta
