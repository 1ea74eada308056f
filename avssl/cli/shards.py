"""``avssl-shards MANIFEST --out DIR``: write WebDataset shards of pre-cut A/V segments, stored at the training fps
and size (representations: jpeg | h264 | h264_intra video, pcm | flac audio, optional log-mel).

Defaults come from the training config (``data=shards``: ``data.fps``, ``data.frame_size``, ``data.fbank`` and
``data.shards.write`` in conf/data/shards.yaml), so shards match what training reads; every flag overrides one.
Parallel (``--workers``) and resumable: finished shards are skipped on a re-run. Cluster arrays share one folder
with ``--job-index I --num-jobs N``; the job that finishes the last shard writes ``index.json``. ``--inspect DIR``
prints a shard folder's index summary. See docs/scaling.md and docs/data_tools.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def config_defaults(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The writer's defaults from the composed training config (``data=shards`` plus ``overrides``)."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        with initialize_config_module("avssl.conf", version_base="1.3"):
            cfg = compose("train", overrides=["data=shards", *overrides])
    except (HydraException, OmegaConfBaseException) as e:
        raise ValueError(f"--config {list(overrides)}: {e}") from e
    data = OmegaConf.to_container(cfg.data, resolve=False)
    assert isinstance(data, dict)
    fbank = dict(data["fbank"])
    return {**data["shards"]["write"], "fps": float(data["fps"]), "size": int(data["frame_size"]),
            "sample_rate": int(fbank.get("sample_rate", 16000)), "fbank": fbank}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="avssl-shards", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", nargs="?", help="manifest (CSV or Parquet) made by avssl-prep")
    p.add_argument("--out", help="output folder for the shards and index.json")
    p.add_argument("--inspect", metavar="DIR_OR_URL", help="print the summary of an existing shard index and exit")
    p.add_argument("--config", metavar="KEY=VALUE", action="append", default=[],
                   help="a training-config override the defaults are read with (e.g. data.fps=16); repeatable")
    p.add_argument("--format", choices=("jpeg", "h264", "h264_intra"), help="video representation")
    p.add_argument("--audio", choices=("pcm", "flac"), help="audio representation (int16 mono)")
    p.add_argument("--logmel", action=argparse.BooleanOptionalAction, default=None,
                   help="also store each sample's log-mel (computed with data.fbank)")
    p.add_argument("--jpeg-quality", type=int)
    p.add_argument("--samples-per-shard", type=int)
    p.add_argument("--max-segment-duration", type=float,
                   help="cut longer manifest rows into pieces of at most this many seconds (<= 0: never cut)")
    p.add_argument("--min-segment-duration", type=float)
    p.add_argument("--size", type=int, help="short side of the stored frames, pixels (default data.frame_size)")
    p.add_argument("--fps", type=float, help="frames per second stored (default data.fps)")
    p.add_argument("--gop", type=int, help="keyframe interval in frames (format h264)")
    p.add_argument("--crf", type=int, help="x264 quality (formats h264, h264_intra)")
    p.add_argument("--sample-rate", type=int, help="audio sample rate (default data.fbank.sample_rate)")
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
                fmt = idx.config.get("format", "h264 (format version 1)")
                print(f"{split}: {len(idx.urls)} shards, {idx.num_samples} samples, {fmt}")
        except ShardError as e:
            print(f"avssl-shards: error: {e}", file=sys.stderr)
            return 1
        return 0
    if not args.manifest or not args.out:
        print("avssl-shards: error: MANIFEST and --out are required (or use --inspect)", file=sys.stderr)
        return 2
    try:
        d = config_defaults(args.config)
        given = {k: getattr(args, k) for k in ("format", "audio", "logmel", "jpeg_quality", "samples_per_shard",
                                               "max_segment_duration", "min_segment_duration", "size", "fps", "gop",
                                               "crf", "sample_rate")}
        d.update({k: v for k, v in given.items() if v is not None})
        if d["max_segment_duration"] is not None and d["max_segment_duration"] <= 0:
            d["max_segment_duration"] = None
        d["fbank"] = {k: v for k, v in d["fbank"].items() if k != "sample_rate"} if d["logmel"] else None
        cfg = ShardWriteConfig(**d, splits=tuple(s for s in args.splits.split(",") if s))
        result = write_shards(args.manifest, args.out, cfg, num_workers=args.workers, job_index=args.job_index,
                              num_jobs=args.num_jobs)
    except (ShardError, ManifestError, MediaError, ValueError, TypeError) as e:
        print(f"avssl-shards: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": result.out_dir, "written": len(result.written), "skipped": len(result.skipped),
                      "complete": result.complete, "samples": result.num_samples, "format": cfg.format,
                      "audio": cfg.audio, "fps": cfg.fps, "size": cfg.size, "failed": len(result.failed)}, indent=1))
    for f in result.failed[:20]:
        print(f"failed: {f['source']} @ {f['start']:.3f} s: {f['error']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
