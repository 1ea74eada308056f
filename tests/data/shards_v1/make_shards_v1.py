"""Made once with avssl at commit 5e1f92d (shard format version 1: MP4 samples, H.264 + AAC), to check that
later readers still read these shards and give the same clips. Run from a checkout of that commit:
``python make_shards_v1.py OUT_DIR``."""

import sys
from pathlib import Path

import torch

from avssl.data.sampling import ClipSpec
from avssl.data.shards import ShardedClipDataset, ShardIndex, ShardWriteConfig, write_shards
from avssl.data_tools.demo import make_demo_dataset

out = Path(sys.argv[1])
manifest = make_demo_dataset(out / "demo", num_videos=1, duration=1.6, size=32, fps=8, val_fraction=0.0)
cfg = ShardWriteConfig(samples_per_shard=2, max_segment_duration=0.8, min_segment_duration=0.5, size=32, fps=8)
write_shards(manifest, out / "shards", cfg)
index = ShardIndex.load(out / "shards", "train")
ds = ShardedClipDataset(index, clip=ClipSpec(2, 0.25), fps=8, frame_size=32, batch_size=1, num_workers=0,
                        even="none", shuffle=False, seed=0)
ds.set_epoch(1)
samples = list(ds)
keep = ("video", "audio", "video_valid", "audio_valid", "segment_starts", "index", "label")
torch.save({"samples": [{k: s[k] for k in keep} | {"key": s["key"]} for s in samples]}, out / "expected.pt")
