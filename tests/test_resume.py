"""Exact resume: a CPU run stopped mid-epoch and resumed from its checkpoint continues the same data order and
random draws, and ends with bitwise-equal weights to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from avssl.lit.datamodule import AVDataModule
from avssl.lit.distributed import rng_state, set_rng_state
from avssl.lit.module import AVSSLModule
from avssl.lit.run import build_trainer, to_plain

STOP_AT = 2  # of 4 steps per epoch


class _Preempted(RuntimeError):
    pass


class _Recorder(Callback):
    """Records the clip keys of every training batch; optionally stops the run before step ``stop_at``."""

    def __init__(self, stop_at: int | None = None):
        self.stop_at, self.seen = stop_at, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001
        if self.stop_at is not None and trainer.global_step == self.stop_at:
            raise _Preempted(f"stopped before step {self.stop_at}")
        self.seen.append((trainer.current_epoch, batch_idx, batch["index"].tolist()))


def _run(cache: str, out: Path, recorder: _Recorder, ckpt_path: str | None = None) -> AVSSLModule:
    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=[
            "debug=tiny", f"data.demo.cache_dir={cache}", f"output_dir={out}", "experiment=sync_masked",
            "data.demo.num_videos=4", "data.batch_size=2", "data.clips_per_file=3", "trainer.limit_val_batches=1", "data.num_workers=0", "data.persistent_workers=false",
            "trainer.max_epochs=2", "logger=none", "callbacks.checkpoint.enabled=false", "seed=7",
        ])
    plain = to_plain(cfg)
    pl.seed_everything(int(plain["seed"]), workers=True, verbose=False)
    dm = AVDataModule(plain["data"], seed=int(plain["seed"]))
    module = AVSSLModule.from_config(plain, dm.preprocessing)
    trainer = build_trainer(plain, out)
    trainer.callbacks.extend([  # type: ignore[attr-defined]
        recorder, ModelCheckpoint(dirpath=str(out / "ckpt"), filename="step{step}", auto_insert_metric_name=False, every_n_train_steps=STOP_AT,
                                  save_top_k=-1, save_last=False)])
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_uninterrupted_run(tmp_path: Path):
    cache = str(tmp_path / "demo")
    full_rec = _Recorder()
    full = _run(cache, tmp_path / "full", full_rec)
    assert len(full_rec.seen) == 8  # 2 epochs x 4 steps

    first = _Recorder(stop_at=STOP_AT)
    with pytest.raises(_Preempted):
        _run(cache, tmp_path / "cut", first)
    ckpt = tmp_path / "cut" / "ckpt" / f"step{STOP_AT}.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # plain containers only
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"batches_yielded": STOP_AT}]

    second = _Recorder()
    resumed = _run(cache, tmp_path / "cut", second, ckpt_path=str(ckpt))
    assert first.seen + second.seen == full_rec.seen  # the same clips in the same order
    want, got = full.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_rng_state_round_trips_through_weights_only_checkpoints(tmp_path: Path):
    import random

    import numpy as np

    torch.save({"rng": rng_state()}, tmp_path / "s.pt")
    a = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
