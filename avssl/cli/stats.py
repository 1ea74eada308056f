"""``avssl-stats``: dataset mean/std of the log-mel over a folder of media or a manifest
(:mod:`avssl.data_tools.stats`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from avssl.data.atomic import atomic_open
from avssl.data.features import FbankConfig
from avssl.data.sources import find_media
from avssl.data_tools.stats import compute_stats, read_rows


def _write_json(path: str, data: dict[str, Any]) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="avssl-stats",
        description="Dataset mean/std of the log-mel over a folder of media or a manifest.",
    )
    parser.add_argument(
        "source", help="folder of media files (searched recursively) or a manifest (.csv/.parquet)"
    )
    parser.add_argument("-o", "--output", help="write the JSON result here (atomically)")
    parser.add_argument("--split", help="manifest rows of this split only (e.g. train)")
    parser.add_argument("--windows-per-file", type=int, default=8)
    parser.add_argument("--window-duration", type=float, default=2.0, help="seconds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kind", choices=("kaldi", "melspec"), default="kaldi")
    parser.add_argument("--sample-rate", type=int, default=16000)
    parser.add_argument("--num-mel-bins", type=int, default=128)
    parser.add_argument("--limit", type=int, help="use only the first N files / rows")
    parser.add_argument("--strict", action="store_true", help="stop at the first unreadable file")
    args = parser.parse_args(argv)

    cfg = FbankConfig(kind=args.kind, sample_rate=args.sample_rate, num_mel_bins=args.num_mel_bins)
    src = Path(args.source)
    try:
        if src.is_dir():
            sources: list[Any] = [str(p) for p in find_media(src)]
        elif src.is_file():
            sources = list(read_rows(src, args.split))
        else:
            raise FileNotFoundError(f"{src}: no such file or folder")
    except (OSError, ValueError) as exc:
        print(f"avssl-stats: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        sources = sources[: args.limit]
    if not sources:
        print(f"avssl-stats: {src}: nothing to read", file=sys.stderr)
        return 2
    result = compute_stats(
        sources,
        cfg,
        windows_per_file=args.windows_per_file,
        window_duration=args.window_duration,
        seed=args.seed,
        strict=args.strict,
        log=lambda m: print(f"avssl-stats: {m}", file=sys.stderr),
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        _write_json(args.output, result)
    if result["num_values"] == 0:
        print("avssl-stats: no valid audio frames were read", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
