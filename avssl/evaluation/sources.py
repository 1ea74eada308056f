"""Which media to evaluate or extract: a folder (labels by first sub-folder), a manifest, or the demo data."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from avssl.data.manifest import ManifestRow
from avssl.data.sources import get_source, source_rows


@dataclass
class EvalItem:
    """One span ``[start, end)`` of one file, with its label (or None) and split."""

    path: str
    start: float
    end: float
    label: str | None = None
    split: str = "train"
    orient: str = ""  # fixed picture correction from the manifest's orient column (avssl.data.orient)

    @property
    def duration(self) -> float:
        return self.end - self.start


def item_from_row(row: ManifestRow, label_column: str = "label") -> EvalItem:
    """The evaluation view of a row of any data source (``avssl.data.sources``)."""
    from avssl.data.orient import row_orient

    label = row.get(label_column)
    return EvalItem(row.path, float(row.start), float(row.end), label if label not in (None, "") else None,
                    row.split, str(row_orient(row)))


def items_from_manifest(path: str | os.PathLike[str], label_column: str = "label") -> list[EvalItem]:
    """Rows of an avssl manifest (excluded rows left out)."""
    return [item_from_row(r, label_column) for r in source_rows("manifest", path).rows if not r.exclude]


def items_from_folder(root: str | os.PathLike[str]) -> list[EvalItem]:
    """Every decodable video under ``root`` (whole files), labelled by their first sub-folder name."""
    return [item_from_row(r) for r in source_rows("folder", root).rows]


def apply_labels_csv(items: list[EvalItem], csv_path: str | os.PathLike[str]) -> list[EvalItem]:
    """Set labels (and splits, if the CSV has a ``split`` column) from a CSV with columns ``path,label``.

    ``path`` may be absolute or relative to the CSV's folder; items whose file is not listed keep no label.
    """
    csv_path = Path(csv_path)
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "label"} <= set(reader.fieldnames):
            raise ValueError(
                f"{csv_path}: labels CSV needs the columns 'path' and 'label', got {reader.fieldnames}"
            )
        table = {}
        for row in reader:
            p = Path(row["path"])
            p = p if p.is_absolute() else csv_path.parent / p
            table[os.path.realpath(p)] = (row["label"] or None, row.get("split") or None)
    for it in items:
        label, split = table.get(os.path.realpath(it.path), (None, None))
        it.label = label
        if split:
            it.split = split
    return items


def resolve_items(
    source: str,
    path: str | None = None,
    labels_csv: str | None = None,
    demo_kwargs: dict | None = None,
    max_items: int | None = None,
) -> list[EvalItem]:
    """Items of a registered map-style ``source`` (``avssl.data.sources``: "demo", "folder", "manifest"), optionally relabelled and capped to the first
    ``max_items`` of each split (deterministic)."""
    src = get_source(source)  # the registry: demo | folder | manifest (shards are for training only)
    if src.streaming:
        raise ValueError(f"data.source={source!r} is streamed for training; evaluate a manifest or folder")
    if src.needs_path and not path:
        raise ValueError(f"data.path must be set for data.source={source!r}")
    rows = source_rows(source, path, {"demo": dict(demo_kwargs or {})}).rows
    items = [item_from_row(r) for r in rows if not r.exclude]
    if labels_csv:
        items = apply_labels_csv(items, labels_csv)
    if max_items is not None:  # the first N of each split, so that every split stays represented
        seen: dict[str, int] = {}
        capped = []
        for it in items:
            seen[it.split] = seen.get(it.split, 0) + 1
            if seen[it.split] <= int(max_items):
                capped.append(it)
        items = capped
    if not items:
        raise ValueError(f"no media found (data.source={source}, data.path={path})")
    return items


__all__ = ["EvalItem", "item_from_row", "items_from_manifest", "items_from_folder", "apply_labels_csv", "resolve_items"]
