"""open_clip's local loss for the synchrony objective (``objective.sync.local_loss``): 2 DDP processes (gloo),
each computing only its rows against the gathered columns, train with the gradients of the full loss on the global
batch (cross_video negatives with a video split over both ranks, so the gathered video ids count too)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from avssl.models.vit import AudioViT, VideoViT
from avssl.objectives.pretrain import AVPretrainModel

GLOBAL_B, S, WORLD = 4, 2, 2
PATHS = ["/v/a.mp4", "/v/b.mp4", "/v/b.mp4", "/v/c.mp4"]  # b.mp4 has a clip on each rank


def _model(local_loss: bool) -> AVPretrainModel:
    torch.manual_seed(0)
    video = VideoViT(num_frames=4, img_size=32, tubelet=2, patch_size=8, embed_dim=32, depth=1, num_heads=2)
    audio = AudioViT(num_frames=32, num_mels=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    return AVPretrainModel(video, audio, embed_dim=16, objectives={"sync": 1.0},
                           sync={"negatives": "cross_video", "local_loss": local_loss})


def _batch() -> dict:
    g = torch.Generator().manual_seed(1)
    return {"video": torch.randn(GLOBAL_B, S, 3, 4, 32, 32, generator=g),
            "audio": torch.randn(GLOBAL_B, S, 1, 32, 32, generator=g), "path": list(PATHS)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model = nn.parallel.DistributedDataParallel(_model(local_loss=True))
        per = GLOBAL_B // world
        local = {k: v[rank * per:(rank + 1) * per] for k, v in _batch().items()}
        out = model(local)
        out.loss.backward()  # DDP averages the gradients over the ranks
        grads = {n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None}
        torch.save({"loss": out.loss.detach(), "grads": grads}, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_local_loss_on_two_processes_has_the_full_loss_gradients(tmp_path):
    mp.spawn(_worker, args=(WORLD, _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    torch.set_num_threads(1)
    ref = _model(local_loss=False)  # one process, the global batch, the full (B*S)^2 loss
    out = ref(_batch())
    out.loss.backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    got = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    # each rank's loss is the mean over its own rows; their mean is the full loss
    assert abs(got[0]["loss"].item() - got[1]["loss"].item()) > 1e-4
    assert (got[0]["loss"] + got[1]["loss"]).item() / 2 == pytest.approx(out.loss.item(), abs=1e-5)
    for g in got:
        assert set(g["grads"]) == set(want)
        for name, w in want.items():
            atol = 1e-4 * float(w.abs().max()) + 1e-8
            torch.testing.assert_close(g["grads"][name], w, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_local_loss_is_a_sync_option_in_the_config():
    from hydra import compose, initialize_config_module

    from avssl.objectives.pretrain import packaged_options

    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=["objective.sync.local_loss=true"])
    assert cfg.objective.sync.local_loss is True and packaged_options("sync")["local_loss"] is False
    model = AVPretrainModel(*_model(False).encoders.values(), objectives={"sync": 1.0}, embed_dim=16,
                            sync={"local_loss": True})
    assert model.objectives["sync"].loss.local_loss
    # without a process group the local loss is the full loss
    full = _model(local_loss=False)
    local = _model(local_loss=True)
    with torch.no_grad():
        assert local(_batch()).loss.item() == pytest.approx(full(_batch()).loss.item(), abs=1e-6)
