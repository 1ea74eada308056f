"""``avssl-shards MANIFEST --out DIR``: write WebDataset shards of pre-cut, re-encoded A/V segments.

Parallel (``--workers``) and resumable: finished shards are skipped on a re-run. Cluster arrays share one folder
with ``--job-index I --num-jobs N``; the job that finishes the last shard writes ``index.json``. ``--inspect DIR``
prints a shard folder's index summary. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avssl-shards", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", nargs="?", help="manifest (CSV or Parquet) made by avssl-prep")
    p.add_argument("--out", help="output folder for the shards and index.json")
    p.add_argument("--inspect", metavar="DIR_OR_URL", help="print the summary of an existing shard index and exit")
    p.add_argument("--samples-per-shard", type=int, default=64)
    p.add_argument("--max-segment-duration", type=float, default=10.0,
                   help="cut longer manifest rows into pieces of at most this many seconds (<= 0: never cut)")
    p.add_argument("--min-segment-duration", type=float, default=1.0)
    p.add_argument("--size", type=int, default=128, help="short side of the re-encoded video, pixels")
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--gop", type=int, default=8, help="keyframe interval in frames")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--splits", default="train,val", help="comma-separated splits to write")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards in parallel")
    p.add_argument("--job-index", type=int, default=0)
    p.add_argument("--num-jobs", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from avssl.data.errors import MediaError
    from avssl.data.manifest import ManifestError
    from avssl.data.shards import ShardError, ShardIndex
    from avssl.data_tools.shards import ShardWriteConfig, write_shards

    if args.inspect:
        try:
            for split in ("train", "val", "test"):
                try:
                    idx = ShardIndex.load(args.inspect, split)
                except ShardError as e:
                    if "no split" in str(e) or "has no shards" in str(e):
                        continue
                    raise
                print(f"{split}: {len(idx.urls)} shards, {idx.num_samples} samples")
        except ShardError as e:
            print(f"avssl-shards: error: {e}", file=sys.stderr)
            return 1
        return 0
    if not args.manifest or not args.out:
        print("avssl-shards: error: MANIFEST and --out are required (or use --inspect)", file=sys.stderr)
        return 2
    try:
        cfg = ShardWriteConfig(
            samples_per_shard=args.samples_per_shard,
            max_segment_duration=args.max_segment_duration if args.max_segment_duration > 0 else None,
            min_segment_duration=args.min_segment_duration, size=args.size, fps=args.fps, gop=args.gop,
            crf=args.crf, sample_rate=args.sample_rate, splits=tuple(s for s in args.splits.split(",") if s),
        )
        result = write_shards(args.manifest, args.out, cfg, num_workers=args.workers, job_index=args.job_index,
                              num_jobs=args.num_jobs)
    except (ShardError, ManifestError, MediaError, ValueError) as e:
        print(f"avssl-shards: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": result.out_dir, "written": len(result.written), "skipped": len(result.skipped),
                      "complete": result.complete, "samples": result.num_samples,
                      "failed": len(result.failed)}, indent=1))
    for f in result.failed[:20]:
        print(f"failed: {f['source']} @ {f['start']:.3f} s: {f['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
