"""The device checks of issue 13 in one prepared script (at most about 8 minutes on one H200), JSON output.

    # on the GPU machine (Python 3.12, torch, lightning, timm; no PyAV, no Hydra needed):
    python benchmarks/gpu_check.py --shards DIR --out benchmarks/results/gpu_check.json
    # on a CPU machine, every part at toy sizes (what tests/test_benchmarks.py runs):
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gpu_check_smoke.json

Parts (each records ``status``: ``ok``, ``skipped`` with the reason, or ``error`` with the exception; one failing
part does not stop the others, and a part that would start past ``--budget-s`` is skipped):

- ``mfu``: the ViT-B pair (``model=vit_base objective=sync_masked``: synchrony + MAE masking; 224 px, 16 frames
  of 1 s segments, 128-bin log-mel) trained in bf16 autocast on a fixed synthetic batch, ``torch.compile`` off and
  on: step time, clips/s, achieved TFLOP/s (FLOPs of one forward + backward counted by
  ``torch.utils.flop_counter``) and model FLOPs utilisation against the dense bf16 peak (``BF16_PEAK_TFLOPS``).
- ``shards``: the same model (compiled when that was faster) trained on batches read from shards ``--shards DIR``
  by ``AVDataModule`` (``data=shards``) with ``--workers`` DataLoader workers (16) and JPEG frames decoded on the
  GPU in the main process (``data.shards.decode_device``): the data-wait fraction of step time. It needs avssl's
  data stack (PyAV among it); where that does not import, the part says so and is skipped.
- ``fsdp``: a one-process FSDP run of a few steps (``FullyShardedDataParallel``, each
  ``avssl.models.vit.TransformerBlock`` one unit, bf16 mixed precision on CUDA), losses finite.

Configs come from the training config (Hydra) where it is installed; elsewhere from
``benchmarks/results/gpu_check_config.json``, the same compositions written by ``--write-config`` (a test keeps
it equal to the YAML), so the GPU image needs neither Hydra nor PyAV for ``mfu`` and ``fsdp``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
CONFIG_SNAPSHOT = HERE / "results" / "gpu_check_config.json"

# Dense bf16 peak (no sparsity), TFLOP/s, by substring of torch.cuda.get_device_name().
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}

PRESETS: dict[str, list[str]] = {
    # the pair: ViT-B/16 video (2x16x16 tubelets, 224 px, 16 frames) + ViT-B/16 audio (128 mels), MAE masking
    "vitb": ["model=vit_base", "objective=sync_masked", "data.frame_size=224", "data.fps=16",
             "data.segment_duration=1.0", "data.num_segments=2", "data.fbank.num_mel_bins=128",
             "data.batch_size=64"],
    # the same code at toy sizes (the nano ViT pair on the demo's 64 px data settings), for --cpu-smoke
    "smoke": ["model=vit", "objective=sync_masked", "data.num_segments=2", "data.batch_size=2"],
}


# ------------------------------------------------------------------------------------------------ configs


def compose(preset: str) -> dict[str, Any]:
    """``{"overrides", "cfg", "preprocessing"}`` of a preset, composed from conf/ with Hydra."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from omegaconf import OmegaConf

    from avssl.lit.datamodule import preprocessing_from_data

    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = hydra_compose("train", overrides=PRESETS[preset])
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    keep = {k: plain[k] for k in ("model", "objective", "data", "seed")}
    return {"overrides": PRESETS[preset], "cfg": keep, "preprocessing": preprocessing_from_data(keep["data"])}


def load_config(preset: str) -> tuple[dict[str, Any], str]:
    """The preset's composition and where it came from (Hydra, else the committed snapshot)."""
    try:
        import hydra  # noqa: F401
        import omegaconf  # noqa: F401
    except ImportError:
        snap = json.loads(CONFIG_SNAPSHOT.read_text())
        return snap["presets"][preset], f"snapshot {CONFIG_SNAPSHOT.name}"
    return compose(preset), "hydra"


def write_config_snapshot(path: Path = CONFIG_SNAPSHOT) -> None:
    snap = {"note": "written by python benchmarks/gpu_check.py --write-config; tests/test_benchmarks.py keeps it "
                    "equal to the composed training config", "presets": {p: compose(p) for p in PRESETS}}
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    part.replace(path)


# ------------------------------------------------------------------------------------------------ pieces


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def synthetic_batch(pre: dict[str, Any], batch: int, segments: int, device: torch.device | str = "cpu"
                    ) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.randn(batch, segments, *pre["video_input_shape"], generator=g).to(device),
        "audio": torch.randn(batch, segments, *pre["audio_input_shape"], generator=g).to(device),
    }


def step_flops(model: torch.nn.Module, batch: dict[str, torch.Tensor], autocast: Any) -> int:
    """FLOPs of one forward + backward (torch's FLOP counter: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, autocast:
        out = model(batch)
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_model(conf: dict[str, Any], device: torch.device) -> torch.nn.Module:
    from avssl.objectives.build import build_pretrain_model

    cfg = conf["cfg"]
    return build_pretrain_model(cfg["model"], cfg["objective"], conf["preprocessing"],
                                gather_distributed=False).to(device)


def train_loop(model: torch.nn.Module, step_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
               batches: Iterator[dict[str, torch.Tensor]], *, steps: int, warmup: int, device: torch.device
               ) -> dict[str, Any]:
    """Time ``warmup + steps`` optimiser steps: per step the wait for the next batch and the compute."""
    waits, computes, losses = [], [], []
    t_start = time.perf_counter()
    first_s = None
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        b = next(batches)
        _sync(device)
        t1 = time.perf_counter()
        loss = step_fn(b)
        _sync(device)
        t2 = time.perf_counter()
        if i == 0:
            first_s = t2 - t0
        if i >= warmup:
            waits.append(t1 - t0)
            computes.append(t2 - t1)
            losses.append(float(loss))
    total = sum(waits) + sum(computes)
    return {"steps": steps, "warmup": warmup, "warmup_s": time.perf_counter() - t_start - total,
            "first_step_s": first_s, "step_s_median": statistics.median(w + c for w, c in zip(waits, computes)),
            "compute_s": sum(computes), "wait_s": sum(waits), "data_wait_fraction": sum(waits) / total,
            "losses": losses, "losses_finite": all(math.isfinite(x) for x in losses)}


def make_step(model: torch.nn.Module, device: torch.device, compiled: bool, backend: str = "inductor"
              ) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """One optimiser step in bf16 autocast (CUDA); ``compiled``: the model's forward through ``torch.compile``
    with static shapes (the video and audio encoders share code at different shapes; dynamic shapes fail in the
    MAE mask's ``torch.rand``)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd: Callable[..., Any] = torch.compile(model, dynamic=False, backend=backend) if compiled else model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(b: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast:
            out = fwd(b)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.detach()

    return step


# ------------------------------------------------------------------------------------------------ parts


def part_mfu(conf: dict[str, Any], device: torch.device, a: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    data = conf["cfg"]["data"]
    bs, segs = int(data["batch_size"]), int(data["num_segments"])
    batch = synthetic_batch(conf["preprocessing"], bs, segs, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    model = build_model(conf, device)
    flops = step_flops(model, batch, autocast)
    peak = peak_tflops(device)
    out: dict[str, Any] = {"batch_clips": bs, "segments_per_clip": segs, "gflop_per_step": flops / 1e9,
                           "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
                           "peak_bf16_tflops": peak, "variants": {}}
    for compiled in (False, True):
        name = "compile" if compiled else "eager"
        try:
            torch.manual_seed(0)
            m = build_model(conf, device)
            r = train_loop(m, make_step(m, device, compiled, a.compile_backend), iter(lambda: batch, None),
                           steps=a.steps, warmup=a.warmup, device=device)
            r["backend"] = a.compile_backend if compiled else None
            achieved = flops * r["steps"] / r["compute_s"] / 1e12
            r.update(clips_per_s=bs * r["steps"] / r["compute_s"], tflops_achieved=achieved,
                     mfu=achieved / peak if peak else None, status="ok")
            if device.type == "cuda":
                r["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                torch.cuda.reset_peak_memory_stats(device)
            out["variants"][name] = r
            del m
        except Exception as e:  # noqa: BLE001 - recorded, the other variant still runs
            out["variants"][name] = {"status": "error", "error": f"{type(e).__name__}: {e}",
                                     "traceback": traceback.format_exc(limit=5)}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ok = {k: v for k, v in out["variants"].items() if v.get("status") == "ok"}
    out["fastest"] = max(ok, key=lambda k: ok[k]["clips_per_s"]) if ok else None
    return out


def part_shards(conf: dict[str, Any], device: torch.device, a: argparse.Namespace, compiled: bool,
                shard_dir: str | None) -> dict[str, Any]:
    if shard_dir is None:
        return {"status": "skipped", "reason": "no --shards DIR given"}
    try:
        from avssl.lit.datamodule import AVDataModule
    except ImportError as e:
        return {"status": "skipped", "reason": f"avssl's data stack does not import here ({e}); the shard reader "
                                               "needs PyAV"}
    data = dict(conf["cfg"]["data"], source="shards", path=shard_dir, num_workers=a.workers,
                persistent_workers=False, pin_memory=device.type == "cuda", val_split="train")
    data["shards"] = dict(data.get("shards") or {}, decode_device="cuda" if device.type == "cuda" else "cpu")
    data["normalise_video"] = "device"  # workers hand uint8 frames; normalised after the transfer (CPU smoke too)
    dm = AVDataModule(data, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    ds = dm.train_set
    decode_s: list[float] = []

    def batches() -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        while True:
            for b in loader:
                if "video_jpeg" in b:  # JPEG frames left to the main process: one batched decode on the device
                    t = time.perf_counter()
                    b = ds.finish_batch(b, device)  # type: ignore[union-attr]
                    _sync(device)
                    decode_s.append(time.perf_counter() - t)
                b = {k: b[k].to(device, non_blocking=True) for k in ("video", "video_uint8", "audio") if k in b}
                yield dm.on_after_batch_transfer(b, 0)  # uint8 frames -> normalised float, on the device
            epoch += 1
            ds.set_epoch(epoch)  # type: ignore[union-attr]

    torch.manual_seed(0)
    model = build_model(conf, device)
    r = train_loop(model, make_step(model, device, compiled, a.compile_backend), batches(), steps=a.shard_steps,
                   warmup=a.warmup, device=device)
    bs = int(data["batch_size"])
    r.update(status="ok", workers=a.workers, compiled=compiled, decode_device=data["shards"]["decode_device"],
             clips_per_s=bs * r["steps"] / (r["compute_s"] + r["wait_s"]),
             main_process_decode_s_median=statistics.median(decode_s) if decode_s else None)
    return r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def part_fsdp(conf: dict[str, Any], device: torch.device, a: argparse.Namespace) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from avssl.models.vit import TransformerBlock

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = build_model(conf, device)
        kw: dict[str, Any] = {"auto_wrap_policy": ModuleWrapPolicy({TransformerBlock})}
        if device.type == "cuda":
            kw.update(device_id=device, mixed_precision=MixedPrecision(param_dtype=torch.bfloat16,
                                                                       reduce_dtype=torch.float32,
                                                                       buffer_dtype=torch.bfloat16))
        else:
            kw.update(device_id=torch.device("cpu"))
        fsdp = FullyShardedDataParallel(model, **kw)
        units = sum(1 for m in fsdp.modules() if isinstance(m, FullyShardedDataParallel))
        data = conf["cfg"]["data"]
        batch = synthetic_batch(conf["preprocessing"], int(data["batch_size"]), int(data["num_segments"]), device)
        r = train_loop(fsdp, make_step(fsdp, device, False), iter(lambda: batch, None), steps=a.fsdp_steps,
                       warmup=1, device=device)
        r.update(status="ok" if r["losses_finite"] else "error", fsdp_units=units)
        return r
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------------ main


def _run_part(name: str, fn: Callable[[], dict[str, Any]], t0: float, budget: float) -> dict[str, Any]:
    if time.perf_counter() - t0 > budget:
        return {"status": "skipped", "reason": f"time budget of {budget:.0f} s spent before this part"}
    t = time.perf_counter()
    try:
        out = fn()
    except Exception as e:  # noqa: BLE001 - recorded; the other parts still run
        out = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    out.setdefault("status", "ok")
    out["seconds"] = time.perf_counter() - t
    print(f"[{time.perf_counter() - t0:6.1f} s] {name}: {out['status']}", flush=True)
    return out


def smoke_shards(tmp: Path, conf: dict[str, Any]) -> str:
    """Tiny JPEG + PCM shards at the smoke preset's settings, written by avssl-shards from generated media."""
    sys.path.insert(0, str(HERE))
    import bench_data

    from avssl.cli.shards import main as shards_main
    from avssl.data.datasets import scan_folder
    from avssl.data.manifest import write_manifest

    m = bench_data.MediaSet("smoke_160x120", 160, 120, 25, 1.0, 16000, 1, 4, 4.0, 3)
    folder = bench_data.ensure_media(tmp / "media", m)
    write_manifest(tmp / "manifest.csv", scan_folder(folder))
    d = conf["cfg"]["data"]
    out = tmp / "shards"
    rc = shards_main([str(tmp / "manifest.csv"), "--out", str(out), "--format", "jpeg", "--audio", "pcm",
                      "--size", str(d["frame_size"]), "--fps", f"{float(d['fps']):g}", "--samples-per-shard", "1",
                      "--splits", "train"])
    if rc != 0:
        raise RuntimeError(f"avssl-shards failed ({rc})")
    return str(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (writes its own tiny shards)")
    ap.add_argument("--shards", default=None, help="JPEG shard folder at the vitb preset's settings (224 px, 16 fps)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/gpu_check_<UTC>.json)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per mfu variant (default 20; smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3; smoke 1)")
    ap.add_argument("--shard-steps", type=int, default=None, help="timed steps on shards (default 40; smoke 2)")
    ap.add_argument("--fsdp-steps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 16; smoke 2)")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; smoke: "
                                                            "eager, i.e. Dynamo's capture without code generation)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="no part starts after this many seconds")
    ap.add_argument("--write-config", action="store_true", help=f"write {CONFIG_SNAPSHOT.name} and exit")
    a = ap.parse_args(argv)
    if a.write_config:
        write_config_snapshot()
        print(f"wrote {CONFIG_SNAPSHOT}")
        return {}
    smoke = a.cpu_smoke
    a.compile_backend = a.compile_backend or ("eager" if smoke else "inductor")
    a.steps = a.steps or (2 if smoke else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if smoke else 3)
    a.shard_steps = a.shard_steps or (2 if smoke else 40)
    a.workers = a.workers if a.workers is not None else (2 if smoke else 16)
    device = torch.device("cpu" if smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc)
    conf, conf_from = load_config("smoke" if smoke else "vitb")
    sys.path.insert(0, str(HERE))
    from bench_data import command_line, load_average, machine_facts, versions

    load_before = load_average()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="avssl_gpu_check_") as tmp:
        parts: dict[str, Any] = {}
        parts["mfu"] = _run_part("mfu", lambda: part_mfu(conf, device, a), t0, a.budget_s)
        fastest = parts["mfu"].get("fastest")
        shard_dir = a.shards
        if smoke and shard_dir is None:
            shard_dir = smoke_shards(Path(tmp), conf)
        parts["shards"] = _run_part("shards", lambda: part_shards(conf, device, a, fastest == "compile", shard_dir),
                                    t0, a.budget_s)
        parts["fsdp"] = _run_part("fsdp", lambda: part_fsdp(conf, device, a), t0, a.budget_s)
    doc = {"schema": "avssl-gpu-check", "schema_version": 1, "date": started.isoformat(timespec="seconds"),
           "command": command_line(argv, "gpu_check.py"), "mode": "cpu-smoke" if smoke else "device",
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "config_from": conf_from, "overrides": conf["overrides"], "machine": machine_facts(load_before),
           "versions": versions(("torch", "lightning", "timm", "av")), "parts": parts,
           "elapsed_s": time.perf_counter() - t0}
    out = Path(a.out) if a.out else HERE / "results" / f"gpu_check_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n")
    part.replace(out)
    print(f"wrote {out} ({doc['elapsed_s']:.0f} s)")
    return doc


if __name__ == "__main__":
    main()
