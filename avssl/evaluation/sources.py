"""Which media to evaluate or extract: a folder (labels by first sub-folder), a manifest, or the demo data."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path


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


def items_from_manifest(path: str | os.PathLike[str], label_column: str = "label") -> list[EvalItem]:
    """Rows of an avssl manifest (excluded rows left out)."""
    from avssl.data.manifest import read_manifest
    from avssl.data.orient import row_orient

    out = []
    for r in read_manifest(path):
        if r.exclude:
            continue
        label = r.get(label_column)
        out.append(
            EvalItem(
                r.path, float(r.start), float(r.end), label if label not in (None, "") else None, r.split,
                str(row_orient(r)),
            )
        )
    return out


def items_from_folder(root: str | os.PathLike[str]) -> list[EvalItem]:
    """Every decodable video under ``root`` (whole files), labelled by their first sub-folder name."""
    from avssl.data.datasets import scan_folder

    return [
        EvalItem(r.path, float(r.start), float(r.end), r.get("label") or None, r.split)
        for r in scan_folder(root)
    ]


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
    """Items of ``source`` ("demo", "folder" or "manifest"), optionally relabelled and capped to the first
    ``max_items`` of each split (deterministic)."""
    if source == "demo":
        from avssl.data.demo import ensure_demo_dataset

        cache = (demo_kwargs or {}).get("cache_dir")
        params = {k: v for k, v in (demo_kwargs or {}).items() if k != "cache_dir"}
        items = items_from_manifest(ensure_demo_dataset(cache, **params))
    elif source == "folder":
        if not path:
            raise ValueError("data.path must name a folder of videos for data.source=folder")
        items = items_from_folder(path)
    elif source == "manifest":
        if not path:
            raise ValueError("data.path must name a manifest file for data.source=manifest")
        items = items_from_manifest(path)
    else:
        raise ValueError(f"data.source must be 'demo', 'folder' or 'manifest', got {source!r}")
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


__all__ = ["EvalItem", "items_from_manifest", "items_from_folder", "apply_labels_csv", "resolve_items"]
