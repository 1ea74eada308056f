"""Lightning versus a plain PyTorch loop over the same model, optimiser, schedule and batches (CPU).

    python benchmarks/lightning_overhead.py --steps 12 --runs 5

Both loops train ``AVPretrainModel`` (the demo's default CNN pair at the demo's data settings, batch 16 clips of
4 segments) on the same pre-built in-memory batches, with gradient clipping at 1.0 and AdamW + warmup/cosine from
``avssl.lit.optim.build_optimizer``. Lightning runs ``AVSSLModule`` (per-step metric logging included, as in
training) with no logger, checkpointing, progress bar or validation. Each run reports the median step time after
warm-up; the result is the median over ``--runs`` runs, alternating the two loops. Target: steps >= 200 ms and
overhead < 5%.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from avssl.lit.datamodule import preprocessing_from_data
from avssl.lit.module import AVSSLModule
from avssl.lit.optim import build_optimizer


class StepTimer(pl.Callback):
    """Time from one batch's start to the next's: everything Lightning does per step (fetch, hooks, logging,
    optimiser and scheduler steps) is inside."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.starts.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]


def make_batches(pre: dict[str, Any], n: int, batch: int, segments: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "video": torch.randn(batch, segments, *pre["video_input_shape"], generator=g),
            "audio": torch.randn(batch, segments, *pre["audio_input_shape"], generator=g),
        }
        for _ in range(n)
    ]


def plain_loop(cfg: dict[str, Any], pre: dict[str, Any], batches: list[dict[str, torch.Tensor]]) -> list[float]:
    torch.manual_seed(0)
    module = AVSSLModule.from_config(cfg, pre)  # same construction; used as a plain nn.Module here
    model = module.model
    opt, sched, _ = build_optimizer(model, cfg["optimizer"], len(batches))
    model.train()
    starts = []
    for b in batches:
        starts.append(time.perf_counter())
        out = model(b)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    starts.append(time.perf_counter())
    return [b - a for a, b in zip(starts, starts[1:])]


def lightning_loop(cfg: dict[str, Any], pre: dict[str, Any], batches: list[dict[str, torch.Tensor]]) -> list[float]:
    torch.manual_seed(0)
    module = AVSSLModule.from_config(cfg, pre)
    timer = StepTimer()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=len(batches), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        gradient_clip_val=1.0, callbacks=[timer],
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return timer.times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    with initialize_config_module("avssl.conf", version_base="1.3"):
        c = compose("train", overrides=args.overrides)
    cfg = OmegaConf.to_container(c, resolve=True)
    assert isinstance(cfg, dict)
    pre = preprocessing_from_data(cfg["data"])
    batches = make_batches(pre, args.steps + args.warmup, int(cfg["data"]["batch_size"]),
                           int(cfg["data"]["num_segments"]))
    plain, light = [], []
    for _ in range(args.runs):
        plain.append(statistics.median(plain_loop(cfg, pre, batches)[args.warmup:]))
        light.append(statistics.median(lightning_loop(cfg, pre, batches)[args.warmup:]))
    p, q = statistics.median(plain), statistics.median(light)
    print(json.dumps({
        "plain_step_s": round(p, 4), "lightning_step_s": round(q, 4), "overhead": round(q / p - 1, 4),
        "plain_runs": [round(x, 4) for x in plain], "lightning_runs": [round(x, 4) for x in light],
        "threads": torch.get_num_threads(), "torch": torch.__version__, "lightning": pl.__version__,
    }))


if __name__ == "__main__":
    main()
