"""Milliseconds per clip of ``AVClipDataset`` on the demo data (one thread, no workers): decode + cut + log-mel.

    python benchmarks/bench_clip_loading.py MANIFEST [--clips 40]

Run it against another commit by putting that commit's source first on the path (``PYTHONPATH=<worktree>``);
docs/benchmarks.md records the numbers.
"""

from __future__ import annotations

import argparse
import time

import torch

from avssl.data.datasets import AVClipDataset
from avssl.data.features import FbankConfig
from avssl.data.sampling import ClipSpec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("manifest")
    p.add_argument("--clips", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    ds = AVClipDataset(args.manifest, clip=ClipSpec(4, 0.5), fps=8, frame_size=64,
                       fbank=FbankConfig(num_mel_bins=64), mode="random", split="train")
    for i in range(3):  # warm-up: open the files
        ds[i]
    t = time.perf_counter()
    for i in range(args.clips):
        ds[i % len(ds)]
    print(f"{(time.perf_counter() - t) / args.clips * 1000:.1f} ms/clip over {args.clips} clips")


if __name__ == "__main__":
    main()
