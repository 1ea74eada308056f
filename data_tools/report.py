"""Summary report of a prepared dataset: Markdown tables plus PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from avssl.data.manifest import ManifestRow
from avssl.data_tools.quality import FLAGS
from avssl.data_tools.util import atomic_write_text

DAYS_PER_MONTH = 30.4375


def summarise(rows: Sequence[ManifestRow], bad_files: Iterable[Any], exclude_on: Iterable[str]) -> dict[str, Any]:
    """Hours per child / age month / split (kept segments), flag counts, exclusions by reason, bad files."""
    kept = [r for r in rows if not r.exclude]
    per_child: dict[str, float] = defaultdict(float)
    per_month: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    per_split: dict[str, float] = defaultdict(float)
    for r in kept:
        h = r.length / 3600.0
        child = r.meta.get("child") or "?"
        per_child[child] += h
        per_split[r.split] += h
        age = r.meta.get("age_days")
        if age:
            per_month[int(int(age) // DAYS_PER_MONTH)][child] += h
    flag_counts = {f: sum(1 for r in rows if r.flags.get(f)) for f in FLAGS}
    excl = set(exclude_on)
    excluded_by = {f: sum(1 for r in rows if r.exclude and r.flags.get(f)) for f in FLAGS if f in excl}
    bad = [(b.rel, b.reason, b.detail) for b in bad_files]
    bad_counts: dict[str, int] = defaultdict(int)
    for _, reason, _ in bad:
        bad_counts[reason] += 1
    return {
        "segments": len(rows), "kept": len(kept), "excluded": len(rows) - len(kept),
        "hours_total": sum(r.length for r in rows) / 3600.0, "hours_kept": sum(r.length for r in kept) / 3600.0,
        "recordings": len({r.path for r in rows}),
        "per_child": dict(sorted(per_child.items())), "per_split": dict(sorted(per_split.items())),
        "per_month": {m: dict(v) for m, v in sorted(per_month.items())},
        "flag_counts": flag_counts, "excluded_by": excluded_by, "bad_files": bad, "bad_counts": dict(bad_counts),
    }


def _plots(s: dict[str, Any], folder: Path) -> list[str]:
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    made = []

    def bar(name: str, labels: list[str], values: list[float], ylabel: str, title: str) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
        ax.bar(labels, values, color="#4477aa")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.tight_layout()
        tmp = folder / f".{name}.tmp.png"
        fig.savefig(tmp, metadata={"Software": None})
        plt.close(fig)
        os.replace(tmp, folder / name)
        made.append(name)

    bar("hours_per_child.png", list(s["per_child"]), list(s["per_child"].values()), "hours", "Kept hours per child")
    bar("hours_per_split.png", list(s["per_split"]), list(s["per_split"].values()), "hours", "Kept hours per split")
    if s["per_month"]:
        months = list(s["per_month"])
        children = sorted({c for v in s["per_month"].values() for c in v})
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
        bottom = [0.0] * len(months)
        for c in children:
            vals = [s["per_month"][m].get(c, 0.0) for m in months]
            ax.bar([str(m) for m in months], vals, bottom=bottom, label=c)
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xlabel("age (months)")
        ax.set_ylabel("hours")
        ax.set_title("Kept hours per age month")
        ax.legend(title="child")
        fig.tight_layout()
        tmp = folder / ".hours_per_age_month.tmp.png"
        fig.savefig(tmp, metadata={"Software": None})
        plt.close(fig)
        os.replace(tmp, folder / "hours_per_age_month.png")
        made.append("hours_per_age_month.png")
    bar("flags.png", list(s["flag_counts"]), list(s["flag_counts"].values()), "segments", "Segments per flag")
    return made


def write_report(folder: str | os.PathLike[str], rows: Sequence[ManifestRow], bad_files: Iterable[Any],
                 exclude_on: Iterable[str], title: str = "avssl-prep report") -> Path:
    """Write ``report.md`` and its PNG plots into ``folder``; returns the Markdown path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = summarise(rows, bad_files, exclude_on)
    plots = _plots(s, folder)
    h = "{:.3f}".format
    lines = [f"# {title}", "",
             f"{s['recordings']} recordings, {s['segments']} segments ({h(s['hours_total'])} h); "
             f"kept {s['kept']} ({h(s['hours_kept'])} h), excluded {s['excluded']}; bad files: {len(s['bad_files'])}.",
             "", "## Hours per child (kept)", "", "| child | hours |", "| --- | --- |"]
    lines += [f"| {c} | {h(v)} |" for c, v in s["per_child"].items()]
    lines += ["", "## Hours per split (kept)", "", "| split | hours |", "| --- | --- |"]
    lines += [f"| {k} | {h(v)} |" for k, v in s["per_split"].items()]
    if s["per_month"]:
        children = sorted({c for v in s["per_month"].values() for c in v})
        lines += ["", "## Hours per age month (kept)", "", "| month | " + " | ".join(children) + " |",
                  "| --- |" + " --- |" * len(children)]
        lines += [f"| {m} | " + " | ".join(h(v.get(c, 0.0)) for c in children) + " |" for m, v in s["per_month"].items()]
    lines += ["", "## Quality flags", "", "| flag | segments | excluded because of it |", "| --- | --- | --- |"]
    lines += [f"| {f} | {n} | {s['excluded_by'].get(f, '-')} |" for f, n in s["flag_counts"].items()]
    lines += ["", "## Bad files", ""]
    if s["bad_files"]:
        lines += ["| file | reason | detail |", "| --- | --- | --- |"]
        lines += [f"| {rel} | {reason} | {detail.replace('|', '/')} |" for rel, reason, detail in s["bad_files"]]
    else:
        lines.append("None.")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return atomic_write_text(folder / "report.md", "\n".join(lines))
