"""Training throughput: samples/s, step time split into data wait and compute, peak memory, and (on CUDA) model
FLOPs utilisation against the device's dense bf16 peak.

Every run writes its JSON (machine, load average before and after, versions, date, the exact command and every
figure) to benchmarks/results/train_throughput_<UTC time>.json (or ``--json PATH``); benchmarks/report.py makes
the table of docs/benchmarks.md from the newest one.

Examples:

    # CPU, the demo's tiny CNN pair: compute alone on a fixed synthetic batch, then real decoding from the demo
    # files with 0/1/2 DataLoader workers (the docs/benchmarks.md table), and a plot:
    python benchmarks/train_throughput.py --also-synthetic --workers 0 1 2 --steps 10 --warmup 2 \
        --plot docs/throughput_vs_workers.png
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
import os
import resource
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from avssl.lit.datamodule import AVDataModule, preprocessing_from_data
from avssl.objectives.build import build_pretrain_model

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_data import RESULTS_DIR, command_line, load_average, machine_facts, versions  # noqa: E402
from gpu_check import PRESETS as GPU_PRESETS  # noqa: E402  (one copy of each, shared with the device check)
from gpu_check import peak_tflops, step_flops, synthetic_batch  # noqa: E402

PRESETS = {
    # the demo's default pair (conf/model/cnn.yaml) at the demo's data settings
    "tiny": [],
    # ViT-B pair at anchor-like sizes (benchmarks/gpu_check.py's preset): 16 frames at 224 px, 128-bin log-mel
    "vitb": GPU_PRESETS["vitb"],
}


def compose_cfg(preset: str, extra: list[str]) -> dict[str, Any]:
    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=PRESETS[preset] + extra)
    out = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(out, dict)
    return out  # type: ignore[return-value]


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
    dm: AVDataModule | None = None
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
    keys = ("video", "video_uint8", "audio")  # video_uint8: data.normalise_video=device, normalised on the device

    def to_device(b: dict[str, Any]) -> dict[str, Any]:
        b = {k: v.to(device, non_blocking=True) for k, v in b.items() if k in keys}
        return dm.on_after_batch_transfer(b, 0) if dm is not None else b

    first = to_device(next(batches))
    flops = step_flops(model, first, autocast)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    waits, computes, cpus = [], [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = next(batches)
        b = to_device(b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1, c1 = time.perf_counter(), time.process_time()
        with autocast:
            out = model(b)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2, c2 = time.perf_counter(), time.process_time()
        if i >= warmup:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
            cpus.append(c2 - c1)
    step = statistics.median([w + c for w, c in zip(waits, computes)])
    total = sum(waits) + sum(computes)
    res: dict[str, Any] = {
        "synthetic": synthetic,
        "workers": workers,
        "steps": steps,
        "warmup": warmup,
        "wait_s": sum(waits),
        "compute_s": sum(computes),
        "compute_cpu_s": sum(cpus),  # CPU time of this process's threads during compute (all of them)
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
    ap.add_argument("--also-synthetic", action="store_true",
                    help="first a compute-only run on a synthetic batch, then the decoded runs (--workers)")
    ap.add_argument("--data", default=None, help="data config group, e.g. shards")
    ap.add_argument("--shards", default=None, help="shard folder for --data shards")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    ap.add_argument("--plot", default=None, help="PNG: samples/s versus DataLoader workers")
    ap.add_argument("--json", default=None, help="JSON path (default benchmarks/results/train_throughput_<UTC>.json)")
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
    load_before = load_average()
    started = datetime.now(timezone.utc)
    runs = ([(True, 0)] if args.also_synthetic or args.synthetic else []) + (
        [] if args.synthetic else [(False, w) for w in args.workers])
    results = []
    for synthetic, w in runs:
        r = run(cfg, steps=args.steps, warmup=args.warmup, workers=w, device=device, synthetic=synthetic,
                bf16=bf16)
        results.append(r)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    meta = {"preset": args.preset, "device": args.device, "threads": torch.get_num_threads(),
            "batch_clips": int(cfg["data"]["batch_size"]), "segments_per_clip": int(cfg["data"]["num_segments"]),
            "date": started.isoformat(timespec="seconds"), "command": command_line(argv, "train_throughput.py"),
            **machine_facts(load_before), **versions(("torch", "lightning", "av"))}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps({k: meta[k] for k in ("command", "threads", "load_before", "load_after")}))
    out = Path(args.json) if args.json else RESULTS_DIR / f"train_throughput_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps({"meta": meta, "results": results}, indent=1, sort_keys=True) + "\n")
    part.replace(out)
    print(f"wrote {out}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        dec = [r for r in results if not r["synthetic"]]
        ax.plot([r["workers"] for r in dec], [r["samples_per_s"] for r in dec], marker="o", label="decoded demo files")
        for r in results:
            if r["synthetic"]:
                ax.axhline(r["samples_per_s"], ls="--", color="0.5", label="compute only (synthetic)")
        ax.legend(fontsize=7)
        ax.set_xlabel("DataLoader workers")
        ax.set_ylabel("clips / s")
        ax.set_title(f"avssl-train throughput ({args.preset}, {args.device})")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120, metadata={"Software": None})


if __name__ == "__main__":
    main()
