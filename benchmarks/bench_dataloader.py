"""DataLoader throughput of AVClipDataset on the demo data (0, 1, 2 workers).

    PYTHONPATH=. python benchmarks/bench_dataloader.py --workers 0 1 2 --batches 12

Prints a Markdown table (clips/s, segments/s and ms per clip); the first batch of each run (worker start-up,
caches) is timed separately and left out of the rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from avssl.data.datasets import AVClipDataset
from avssl.data.sampling import ClipSpec
from avssl.data_tools.demo import make_demo_dataset


def run(manifest: str, workers: int, batches: int, batch_size: int, frame_size: int, fps: float) -> dict:
    clip = ClipSpec(num_segments=4, segment_duration=0.5, audio_jitter=0.05)
    ds = AVClipDataset(manifest, clip=clip, fps=fps, frame_size=frame_size, mode="random", split="train")
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(0), drop_last=True)
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    n = 0
    t1 = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:  # start another epoch
            ds.set_epoch(ds.epoch + 1)
            it = iter(loader)
            batch = next(it)
        n += int(batch["video"].shape[0])
    dt = time.perf_counter() - t1
    return {"workers": workers, "clips": n, "seconds": dt, "clips_per_s": n / dt, "first_batch_s": first,
            "segments_per_s": n * clip.num_segments / dt, "ms_per_clip": 1000 * dt / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--frame-size", type=int, default=64)
    ap.add_argument("--fps", type=float, default=8.0)
    ap.add_argument("--num-videos", type=int, default=40)
    ap.add_argument("--manifest", default=None, help="an existing manifest instead of fresh demo data")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.manifest
        if manifest is None:
            t = time.perf_counter()
            manifest = os.fspath(make_demo_dataset(tmp, num_videos=args.num_videos, duration=8.0, seed=0))
            print(f"demo data: {args.num_videos} videos in {time.perf_counter() - t:.1f} s")
        results = [run(manifest, w, args.batches, args.batch_size, args.frame_size, args.fps) for w in args.workers]
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"batch {args.batch_size} clips x 4 segments x 0.5 s, {args.fps:g} fps, {args.frame_size} px, 16 kHz fbank\n")
    print("| workers | clips/s | segments/s | ms/clip | first batch (s) |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['workers']} | {r['clips_per_s']:.1f} | {r['segments_per_s']:.1f} | {r['ms_per_clip']:.1f} "
              f"| {r['first_batch_s']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
