"""Training throughput: samples/s, step time split into data wait and compute, peak memory, and (on CUDA) model
FLOPs utilisation against the device's dense bf16 peak.

Examples (results go to docs/benchmarks.md):

    # CPU, the demo's tiny CNN pair, real decoding from the demo files, 0/1/2 DataLoader workers, a plot:
    python benchmarks/train_throughput.py --workers 0 1 2 --steps 20 --plot docs/throughput_vs_workers.png
    # one GPU, ViT-B video + ViT-B audio in bf16 on synthetic batches (compute only) and on shards:
    python benchmarks/train_throughput.py --preset vitb --device cuda --batch 32 --synthetic --steps 30
    python benchmarks/train_throughput.py --preset vitb --device cuda --batch 32 --data shards --shards DIR

It drives ``avssl.objectives.build.build_pretrain_model`` with a plain optimiser loop (the same model Lightning
trains), so the numbers isolate data loading and model compute; benchmarks/lightning_overhead.py measures what
Lightning adds on top.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from avssl.lit.datamodule import AVDataModule, preprocessing_from_data
from avssl.objectives.build import build_pretrain_model

# Dense bf16 peak (no sparsity), TFLOP/s, by substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

PRESETS = {
    # the demo's default pair (conf/model/cnn.yaml) at the demo's data settings
    "tiny": [],
    # ViT-B pair at anchor-like sizes: 16 frames at 224 px (VideoMAE), 1 s segments of 128-bin log-mel
    "vitb": ["model=vit", "model.video.name=vit_video_base", "model.audio.name=vit_audio_base",
             "data.frame_size=224", "data.fps=16", "data.segment_duration=1.0", "data.num_segments=2",
             "data.fbank.num_mel_bins=128"],
}


def compose_cfg(preset: str, extra: list[str]) -> dict[str, Any]:
    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=PRESETS[preset] + extra)
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


def synthetic_batch(pre: dict[str, Any], batch: int, segments: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.randn(batch, segments, *pre["video_input_shape"], generator=g),
        "audio": torch.randn(batch, segments, *pre["audio_input_shape"], generator=g),
    }


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: Any) -> int:
    """FLOPs of one forward + backward (torch's FLOP counter: matmuls and convolutions)."""
    counter = FlopCounterMode(display=False)
    with counter, autocast:
        out = model(batch)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def run(cfg: dict[str, Any], *, steps: int, warmup: int, workers: int, device: torch.device, synthetic: bool,
        bf16: bool) -> dict[str, Any]:
    data = dict(cfg["data"])
    data["num_workers"] = workers
    data["persistent_workers"] = workers > 0
    pre = preprocessing_from_data(data)
    model = build_pretrain_model(cfg["model"], cfg["objective"], pre, gather_distributed=False).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    batch_size, segments = int(data["batch_size"]), int(data["num_segments"])
    if synthetic:
        fixed = synthetic_batch(pre, batch_size, segments)
        batches: Any = iter(lambda: fixed, None)
    else:
        dm = AVDataModule(data, seed=int(cfg["seed"]))
        dm.prepare_data()
        dm.setup("fit")
        loader: DataLoader = dm.train_dataloader()

        def forever() -> Any:
            while True:
                yield from loader

        batches = forever()
    first = next(batches)
    first = {k: v.to(device) for k, v in first.items() if k in ("video", "audio")}
    flops = step_flops(model, first, autocast)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waits, computes = [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = next(batches)
        b = {k: v.to(device, non_blocking=True) for k, v in b.items() if k in ("video", "audio")}
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        with autocast:
            out = model(b)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 = time.perf_counter()
        if i >= warmup:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
    step = statistics.median([w + c for w, c in zip(waits, computes)])
    total = sum(waits) + sum(computes)
    res: dict[str, Any] = {
        "workers": workers,
        "batch_clips": batch_size,
        "segments_per_clip": segments,
        "samples_per_s": batch_size * steps / total,
        "segments_per_s": batch_size * segments * steps / total,
        "step_s_median": step,
        "data_wait_fraction": sum(waits) / total,
        "gflop_per_step": flops / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device.type == "cuda":
        res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        peak = peak_tflops(device)
        achieved = flops * steps / sum(computes) / 1e12
        res["tflops_achieved"] = achieved
        res["mfu"] = achieved / peak if peak else None
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--batch", type=int, default=None, help="clips per batch (default: the config's)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--synthetic", action="store_true", help="random tensors instead of decoded clips")
    ap.add_argument("--data", default=None, help="data config group, e.g. shards")
    ap.add_argument("--shards", default=None, help="shard folder for --data shards")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    ap.add_argument("--plot", default=None, help="PNG: samples/s versus DataLoader workers")
    ap.add_argument("--json", default=None)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    extra = list(args.overrides)
    if args.batch:
        extra.append(f"data.batch_size={args.batch}")
    if args.data:
        extra.append(f"data={args.data}")
    if args.shards:
        extra.append(f"data.path={args.shards}")
    cfg = compose_cfg(args.preset, extra)
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    results = []
    for w in args.workers:
        r = run(cfg, steps=args.steps, warmup=args.warmup, workers=w, device=device, synthetic=args.synthetic,
                bf16=bf16)
        results.append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    meta = {"preset": args.preset, "device": args.device, "torch": torch.__version__, "threads":
            torch.get_num_threads(), "cpu": platform.processor() or platform.machine(), "synthetic": args.synthetic}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(meta))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        ax.plot([r["workers"] for r in results], [r["samples_per_s"] for r in results], marker="o")
        ax.set_xlabel("DataLoader workers")
        ax.set_ylabel("clips / s")
        ax.set_title(f"avssl-train throughput ({args.preset}, {args.device})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
