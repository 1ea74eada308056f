"""``avssl-extract``: embeddings for every window of every video in a folder or manifest.

Writes one file per video under ``--out`` (NumPy ``.npz`` or Parquet) with each window's start and end
(seconds, file clock) and its L2-normalised video and audio embeddings: ``OUT/<path relative to the input folder or
the manifest's folder>.npz``, or ``OUT/_outside_root/<name>.<hash of the resolved path>.npz`` for files elsewhere.
A re-run skips files already written for the same input; two inputs sharing an output, or an output written for
another input, stop the run with an error before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avssl-extract", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="export bundle folder (avssl-export) or training checkpoint (.ckpt)")
    p.add_argument(
        "input", help="folder of videos (searched recursively) or an avssl manifest (.csv/.parquet)"
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--window", type=float, default=None, help="window length in seconds (default: one segment)"
    )
    p.add_argument(
        "--hop", type=float, default=None, help="hop between windows in seconds (default: the window)"
    )
    p.add_argument("--format", choices=["npz", "parquet"], default="npz", help="output format (default npz)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--chunk", type=float, default=30.0, help="seconds decoded per read (default 30)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from avssl.evaluation.extract import extract
    from avssl.export import ExportError

    try:
        rep = extract(
            args.checkpoint,
            args.input,
            args.out,
            window=args.window,
            hop=args.hop,
            fmt=args.format,
            device=args.device,
            chunk=args.chunk,
            progress=not args.no_progress,
        )
    except (ExportError, ValueError, FileNotFoundError) as e:
        print(f"avssl-extract: error: {e}", file=sys.stderr)
        return 1
    print(f"written {len(rep.written)}, skipped (already done) {len(rep.skipped)}, failed {len(rep.failed)}")
    for path, why in rep.failed.items():
        print(f"  failed: {path}: {why}", file=sys.stderr)
    return 0 if not rep.failed else 2


if __name__ == "__main__":
    sys.exit(main())
