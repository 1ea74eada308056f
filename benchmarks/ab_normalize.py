"""A/B of ``VideoTransform.normalize`` inside the shard reader, in one process: the float reader
(``ShardedClipDataset._decode`` on JPEG + PCM shard samples in memory, the config's full crop; ``--malloc retain``:
what DataLoader workers do, ``default``: glibc as it comes, as in a ``num_workers=0`` main process) with the normalisation as it was before 2026-12-02 (one mixed-dtype ``torch.mul`` from the strided uint8
view, then ``add_``) and as it is now (the strided uint8 -> float copy, then the affine in place), alternating
round by round on the same samples (each made and dropped), after checking that both give the same clips. Prints
one JSON line; page faults per clip beside the rates.

    python benchmarks/ab_normalize.py [--rounds 7] [--malloc retain|default] [--save]

Media and shards are bench_shard_reader.py's (same cache).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_shard_reader as bsr  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def normalize_before(self: Any, frames: torch.Tensor) -> torch.Tensor:
    """``VideoTransform.normalize`` before 2026-12-02 (kept here only as the A side)."""
    lead = frames.shape[:-4]
    x = frames.reshape(-1, *frames.shape[-4:])
    scale, shift = self._affine(x.device)
    xv = x.permute(0, 4, 1, 2, 3)
    out = torch.empty(xv.shape, dtype=torch.float32, device=x.device)
    torch.mul(xv, scale, out=out)
    return out.add_(shift).reshape(*lead, *out.shape[1:])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from avssl.data._malloc import retain_freed_memory
    from avssl.data.shards import iter_shard_samples
    from avssl.data.transforms import VideoTransform

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("AVSSL_CACHE", "~/.cache/avssl")).expanduser()
                   / "bench_shard_reader")
    p.add_argument("--malloc", choices=["default", "retain"], default="retain")
    p.add_argument("--save", action="store_true", help="also write the JSON under benchmarks/results/")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.malloc == "retain":
        retain_freed_memory()
    now = VideoTransform.normalize
    load_before = list(os.getloadavg())
    cases = []
    try:
        for size in args.sizes:
            ds = bsr.make_dataset(bsr.ensure_shards(args.cache, 8, 6.0, size, False), size, "full")
            raws = list(iter_shard_samples(ds.index.urls))
            ds._decode(raws[0])  # warm-up
            rates: dict[str, list[float]] = {"before": [], "now": []}
            faults: dict[str, list[float]] = {"before": [], "now": []}
            for fn in (normalize_before, now):  # the same clips either way (checked once, before timing)
                VideoTransform.normalize = fn  # type: ignore[method-assign]
                ds.set_epoch(0)
                first = [ds._decode(raw)["video"] for raw in raws[:8]]
                if fn is normalize_before:
                    ref = first
            if not all(torch.equal(a, b) for a, b in zip(ref, first)):
                raise AssertionError(f"{size} px: the two normalisations differ")
            del ref, first
            for r in range(args.rounds):  # timed: each sample made and dropped, as a reader feeding collate does
                ds.set_epoch(r)
                for side, fn in (("before", normalize_before), ("now", now)):
                    VideoTransform.normalize = fn  # type: ignore[method-assign]
                    f0, t = bsr._faults(), time.thread_time()
                    for raw in raws:
                        ds._decode(raw)
                    rates[side].append(len(raws) / (time.thread_time() - t))
                    faults[side].append((bsr._faults() - f0) / len(raws))
            med = {k: statistics.median(v) for k, v in rates.items()}
            cases.append({"size": size, "samples": len(raws), "before_clips_per_cpu_s": med["before"],
                          "now_clips_per_cpu_s": med["now"], "now_over_before": med["now"] / med["before"],
                          "before_faults_per_clip": statistics.median(faults["before"]),
                          "now_faults_per_clip": statistics.median(faults["now"]), "rounds": rates})
    finally:
        VideoTransform.normalize = now  # type: ignore[method-assign]
    doc = {"bench": "ab_normalize", "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "malloc": args.malloc,
           "machine": {"cpu_count": os.cpu_count(), "load_before": load_before, "load_after": list(os.getloadavg())},
           "versions": bsr.versions(), "argv": list(argv if argv is not None else sys.argv[1:]), "cases": cases}
    print(json.dumps(doc))
    if args.save:
        out = RESULTS / f"ab_normalize_{args.malloc}_{doc['date'].replace('-', '').replace(':', '')}.json"
        out.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {out}", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
