"""Exact resume under DDP on 2 CPU processes (gloo), with a masking objective: a run of 6 optimizer steps killed
with SIGKILL after its checkpoint at step 3 (mid-epoch) and resumed with ``ckpt_path=...`` ends with the weights and
logged losses of the uninterrupted run. The same runs check that ranks draw different random numbers (masks,
drop-path) and that DDP validation evaluates every validation clip exactly once.

Each rank is a separate ``python tests/ddp_driver.py`` process started with the environment ``torchrun`` / SLURM
gives (``LOCAL_RANK``, ``MASTER_ADDR``, ...), importing avssl from where this test imported it. About 45 s on
2 CPU cores: not marked slow, it runs in every CI run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import avssl

DRIVER = Path(__file__).with_name("ddp_driver.py")
STEPS, KILL_AT = 6, 3  # 4 steps per epoch per rank: the checkpoint at step 3 is mid-epoch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _overrides(cache: Path, out: Path, ckpt: str | None = None) -> list[str]:
    return [
        "debug=tiny", "trainer=ddp_cpu", "experiment=sync_masked", "model=vit", "logger=none", "seed=5",
        f"output_dir={out}", f"data.demo.cache_dir={cache}",
        # 3 train videos x 6 clips = 18 clips: 9 per rank, 4 batches of 2; 1 val video: 3 clips (odd: no even split)
        "data.demo.num_videos=4", "data.demo.size=32", "data.demo.duration=4.0", "data.demo.val_fraction=0.25",
        "data.clips_per_file=6", "data.batch_size=2", "data.val_batch_size=1", "data.val_clips_per_file=3",
        "data.num_segments=2", "data.segment_duration=0.5", "data.frame_size=32", "data.fbank.num_mel_bins=32",
        "data.num_workers=0", "data.persistent_workers=false",
        "model.video.kwargs.patch_size=16", "model.audio.kwargs.patch_size=16", "model.embed_dim=16",
        f"trainer.max_steps={STEPS}", "trainer.max_epochs=-1", "trainer.log_every_n_steps=1",
        "callbacks.checkpoint.every_n_train_steps=3", "callbacks.lr_monitor=false",
        *([f"ckpt_path={ckpt}"] if ckpt else []),
    ]


def _launch(tmp: Path, name: str, overrides: list[str], kill_at: int | None = None) -> list[int]:
    """Start 2 ranks, wait for both; returns their exit codes."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(avssl.__file__).parent.parent), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "NODE_RANK": "0", "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    spec = {"overrides": overrides, "record": str(tmp / f"{name}.jsonl"), "kill_at": kill_at,
            "weights": str(tmp / f"{name}.pt"), "result": str(tmp / f"{name}.json")}
    (tmp / f"{name}.spec.json").write_text(json.dumps(spec))
    procs = [subprocess.Popen([sys.executable, str(DRIVER), str(tmp / f"{name}.spec.json")],
                              env={**env, "LOCAL_RANK": str(r), "RANK": str(r)}, cwd=tmp,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    codes, logs = [], []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=600)
            codes.append(p.returncode)
            logs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if kill_at is None and codes != [0, 0]:
        pytest.fail(f"{name}: ranks exited {codes}\n" + "\n----\n".join(x[-4000:] for x in logs))
    return codes


def _records(tmp: Path, name: str) -> list[dict]:
    path = tmp / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _train(records: list[dict], rank: int) -> list[dict]:
    return sorted((r for r in records if r["stage"] == "train" and r["rank"] == rank), key=lambda r: r["step"])


def test_ddp_run_killed_mid_epoch_resumes_exactly(tmp_path: Path):
    cache = tmp_path / "demo"  # generated once (by the first run's rank 0) and shared by the three runs
    _launch(tmp_path, "full", _overrides(cache, tmp_path / "full"))
    full = _records(tmp_path, "full")

    # DDP validation (end of epoch 0): every validation clip exactly once, no padding duplicates
    val = [(tuple([i]), s) for r in full if r["stage"] == "val" for i, s in zip(r["index"], r["starts"])]
    assert len(val) == 3 and len(set(val)) == 3, val
    # ranks draw their own random numbers (masks, drop-path)
    f0, f1 = _train(full, 0), _train(full, 1)
    assert [r["step"] for r in f0] == [r["step"] for r in f1] == list(range(1, STEPS + 1))
    assert all(a["rng"] != b["rng"] for a, b in zip(f0, f1))

    cut_out = tmp_path / "cut"
    codes = _launch(tmp_path, "cut", _overrides(cache, cut_out), kill_at=KILL_AT)
    assert codes == [-signal.SIGKILL, -signal.SIGKILL], codes  # kill -9 after the checkpoint at step 3
    ckpt = cut_out / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == KILL_AT and state["epoch"] == 0  # mid-epoch
    _launch(tmp_path, "resumed", _overrides(cache, cut_out, ckpt=str(ckpt)))

    cut, resumed = _records(tmp_path, "cut"), _records(tmp_path, "resumed")
    for rank in range(2):
        want = _train(full, rank)
        got = _train(cut, rank)[:KILL_AT] + _train(resumed, rank)
        assert [r["step"] for r in got] == [r["step"] for r in want]
        assert [r["index"] for r in got] == [r["index"] for r in want]  # the same clips, in the same order
        assert [r["rng"] for r in got] == [r["rng"] for r in want]  # the same random draws
        for a, b in zip(got, want):
            assert abs(a["loss"] - b["loss"]) <= 1e-6, (rank, a["step"], a["loss"], b["loss"])
    w_full = torch.load(tmp_path / "full.pt", weights_only=True)
    w_res = torch.load(tmp_path / "resumed.pt", weights_only=True)
    assert w_full.keys() == w_res.keys()
    worst = max(float((w_full[k].float() - w_res[k].float()).abs().max()) for k in w_full)
    assert worst <= 1e-6, worst
