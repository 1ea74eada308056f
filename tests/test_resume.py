"""Exact resume: a CPU run stopped mid-epoch and resumed from its checkpoint continues the same data order and
random draws, and ends with bitwise-equal weights to an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from hydra import compose, initialize_config_module
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from avssl.lit.callbacks import resolve_monitor
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
    resolve_monitor(plain["callbacks"]["checkpoint"], module.model.default_monitor)  # as avssl-train does
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


def _tiny_overrides(cache: str, out: Path) -> list[str]:
    return ["debug=tiny", f"data.demo.cache_dir={cache}", f"output_dir={out}", "data.demo.num_videos=4",
            "data.batch_size=2", "data.num_workers=0", "data.persistent_workers=false", "logger=none",
            "trainer.max_steps=1", "trainer.limit_val_batches=0", "callbacks.checkpoint.every_n_train_steps=1",
            "callbacks.lr_monitor=false"]


def test_resume_with_another_model_or_data_config_is_an_error_naming_what_differs(tmp_path: Path):
    from avssl.lit.distributed import check_resume_config
    from avssl.lit.run import train

    cache, out = str(tmp_path / "demo"), tmp_path / "run"
    with initialize_config_module("avssl.conf", version_base="1.3"):
        first = compose("train", overrides=_tiny_overrides(cache, out))
        changed = compose("train", overrides=[*_tiny_overrides(cache, out), "ckpt_path=last", "model.embed_dim=32",
                                              "data.batch_size=4", "data.fps=4"])
        workers = compose("train", overrides=[*_tiny_overrides(cache, out), "data.num_workers=2",
                                              f"data.demo.cache_dir={tmp_path / 'elsewhere'}"])
    result = train(first)
    assert result.last_checkpoint is not None
    with pytest.raises(ValueError, match="trained with another config") as e:
        train(changed)
    msg = str(e.value)
    for line in ("model.embed_dim: 128 in the checkpoint, 32 now", "data.batch_size: 2 in the checkpoint, 4 now",
                 "data.fps: 8.0 in the checkpoint, 4.0 now", "preprocessing.fps: 8.0 in the checkpoint, 4.0 now"):
        assert line in msg, msg
    # workers and where the data lives may change between a run and its resume
    plain = to_plain(workers)
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    check_resume_config(ckpt, plain, AVDataModule(plain["data"], seed=0).preprocessing)


def test_checkpoint_every_n_train_steps_config():
    from avssl.lit.callbacks import build_callbacks, resolve_monitor

    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["callbacks.checkpoint.every_n_train_steps=50"])
    plain = to_plain(cfg)
    resolve_monitor(plain["callbacks"]["checkpoint"], ("val/sync_acc", "max"))  # what the sync objective tracks
    cbs = [c for c in build_callbacks(plain["callbacks"], "/tmp/ck") if isinstance(c, ModelCheckpoint)]
    assert [(c._every_n_epochs, c._every_n_train_steps, c.monitor) for c in cbs] == [
        (1, 0, "val/sync_acc"), (0, 50, None)]  # best-by-metric per epoch; last.ckpt every 50 steps
    assert all(c.save_last for c in cbs)
    plain["callbacks"]["checkpoint"]["every_n_train_steps"] = 0
    with pytest.raises(ValueError, match="every_n_train_steps must be >= 1"):
        build_callbacks(plain["callbacks"], "/tmp/ck")


def test_each_rank_draws_its_own_reproducible_random_stream():
    from types import SimpleNamespace

    from avssl.lit.distributed import ExactResumeCallback

    cb = ExactResumeCallback(seed=3)

    def draw(rank: int, epoch: int, batch_idx: int) -> torch.Tensor:
        cb.on_train_batch_start(SimpleNamespace(global_rank=rank, current_epoch=epoch), None, None, batch_idx)  # type: ignore[arg-type]
        return torch.rand(4)

    assert not torch.equal(draw(0, 0, 1), draw(1, 0, 1))  # ranks differ (MAE masks, drop-path)
    assert not torch.equal(draw(0, 0, 1), draw(0, 0, 2)) and not torch.equal(draw(0, 0, 1), draw(0, 1, 1))
    torch.rand(100)  # whatever ran before
    assert torch.equal(draw(1, 2, 5), draw(1, 2, 5))  # a pure function of (seed, rank, epoch, batch)


def test_samplers_split_train_and_validation_data_over_ranks():
    from avssl.lit.datamodule import EpochSampler, EvalBatchSampler

    one = list(EpochSampler(9, seed=1))
    ranks = [EpochSampler(9, seed=1, rank=r, world_size=2) for r in range(2)]
    keys = [list(s) for s in ranks]
    assert len(keys[0]) == len(keys[1]) == 5 and sorted(set(keys[0] + keys[1])) == sorted(one)
    ranks[1].skip_batches, ranks[1].skip_batch_size = 2, 2  # resume: this rank's own first 2 batches
    assert list(ranks[1]) == keys[1][4:]
    order = list(range(7))
    single = list(EvalBatchSampler(order, 2))
    shared = [list(EvalBatchSampler(order, 2, rank=r, world_size=2)) for r in range(2)]
    assert sorted(shared[0] + shared[1]) == sorted(single)  # the same batches, each clip exactly once
    with pytest.raises(ValueError, match="no full batch"):
        EvalBatchSampler(list(range(3)), 2, rank=0, world_size=2)


def test_ckpt_path_auto_picks_the_newest_checkpoint_of_the_output_dir(tmp_path: Path):
    import os

    from avssl.lit.run import newest_checkpoint

    assert newest_checkpoint(tmp_path) is None  # a job's first start: nothing to resume
    (tmp_path / "checkpoints").mkdir()
    last, hpc = tmp_path / "checkpoints" / "last.ckpt", tmp_path / "hpc_ckpt_1.ckpt"
    last.write_bytes(b"x")
    hpc.write_bytes(b"x")
    os.utime(last, ns=(1, 10**18))
    os.utime(hpc, ns=(1, 2 * 10**18))
    assert newest_checkpoint(tmp_path) == str(hpc)  # Lightning's pre-emption checkpoint, written later
    os.utime(last, ns=(1, 3 * 10**18))
    assert newest_checkpoint(tmp_path) == str(last)


def test_a_checkpoint_older_than_a_data_key_resumes_when_the_key_means_the_old_behaviour():
    """``data.decode_size`` is newer than some checkpoints: their absent key means full-size decoding (null)."""
    from avssl.lit.distributed import config_differences

    old = {"fps": 8.0, "num_workers": 2}
    assert config_differences(old, {**old, "decode_size": None}, "data", added={"decode_size": None}) == []
    assert config_differences(old, {**old, "decode_size": "auto"}, "data", added={"decode_size": None}) == [
        "data.decode_size: None in the checkpoint, 'auto' now"]
    assert config_differences(old, {**old, "decode_size": None}, "data") == [
        "data.decode_size: '<absent>' in the checkpoint, None now"]
