"""Distributed training on CPU: 2 DDP processes (gloo) give the loss and gradients of one process on the same
global batch (the contrastive objective gathers embeddings with gradients), for both encoder families; strategies
from config."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from avssl.lit.distributed import build_strategy, convert_sync_batchnorm, has_batchnorm
from avssl.models.cnn import AudioCNN, VideoCNN
from avssl.models.vit import AudioViT, VideoViT
from avssl.objectives.pretrain import AVPretrainModel

GLOBAL_B, S = 4, 2
FAMILIES = ("vit", "cnn")


def _model(family: str) -> AVPretrainModel:
    torch.manual_seed(0)
    if family == "vit":
        video: nn.Module = VideoViT(num_frames=4, img_size=32, tubelet=2, patch_size=8, embed_dim=32, depth=1,
                                    num_heads=2)
        audio: nn.Module = AudioViT(num_frames=32, num_mels=32, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    else:
        video = VideoCNN(conv="3d", num_frames=4, img_size=32, widths=(8, 8, 16, 16), layers=(1, 1, 1, 1))
        audio = AudioCNN(num_frames=32, num_mels=32, widths=(8, 8, 16, 16), convs_per_stage=1)
    model = AVPretrainModel(video, audio, embed_dim=16, objectives={"sync": 1.0},
                            sync={"learn_temperature": True})
    if has_batchnorm(model):
        # PyTorch's SyncBatchNorm runs on GPUs only: on CPU, per-process batch statistics would differ from the
        # global batch's, so the CPU check uses the running statistics (GPU runs set trainer.sync_batchnorm).
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"video": torch.randn(GLOBAL_B, S, 3, 4, 32, 32, generator=g),
            "audio": torch.randn(GLOBAL_B, S, 1, 32, 32, generator=g)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for family in FAMILIES:
            model = nn.parallel.DistributedDataParallel(_model(family))
            per = GLOBAL_B // world
            local = {k: v[rank * per : (rank + 1) * per] for k, v in _batch().items()}
            out = model(local)
            out.loss.backward()  # DDP averages the gradients over the ranks
            grads = {n: p.grad.clone() for n, p in model.module.named_parameters() if p.grad is not None}
            torch.save({"loss": out.loss.detach(), "grads": grads}, os.path.join(out_dir, f"{family}{rank}.pt"))
        dist.barrier()  # both ranks done before either tears gloo down
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    torch.set_num_threads(1)
    for family in FAMILIES:
        _check_family(family, tmp_path)


def _check_family(family: str, tmp_path) -> None:
    ref = _model(family)
    out = ref(_batch())
    out.loss.backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.grad is not None}
    with torch.no_grad():  # without the gather each rank would see only its half: a different loss
        half = ref({k: v[: GLOBAL_B // 2] for k, v in _batch().items()}).loss
    assert abs(half.item() - out.loss.item()) > 1e-3
    assert len(want) == sum(1 for p in ref.parameters() if p.requires_grad)  # every parameter is trained
    for rank in range(2):
        got = torch.load(tmp_path / f"{family}{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], out.loss.detach(), rtol=1e-5, atol=1e-6)
        assert set(got["grads"]) == set(want)
        for name, g in want.items():
            # float32 sums in another order: tolerance relative to the tensor's largest gradient
            atol = 1e-4 * float(g.abs().max()) + 1e-8
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_batchnorm_becomes_synchronised_for_cnn_encoders_only():
    cnn, vit = _model("cnn"), _model("vit")
    assert has_batchnorm(cnn) and not has_batchnorm(vit)
    synced = convert_sync_batchnorm(cnn)
    kinds = {type(m) for m in synced.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nn.SyncBatchNorm}


def test_build_strategy_from_config():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    assert build_strategy("ddp") == "ddp" and build_strategy(None) == "auto"
    ddp = build_strategy({"name": "ddp", "find_unused_parameters": False, "static_graph": True,
                          "process_group_backend": "gloo"})
    assert isinstance(ddp, DDPStrategy) and ddp.process_group_backend == "gloo"
    fsdp = build_strategy({"name": "fsdp", "sharding_strategy": "FULL_SHARD",
                           "auto_wrap": ["avssl.models.vit.TransformerBlock"], "activation_checkpointing": True,
                           "state_dict_type": "full"})
    assert isinstance(fsdp, FSDPStrategy)
    with pytest.raises(ValueError, match="not an importable nn.Module class"):
        build_strategy({"name": "fsdp", "auto_wrap": ["avssl.models.vit.NoSuchBlock"]})
    with pytest.raises(ValueError, match="unknown option"):
        build_strategy({"name": "ddp", "bucket": 3})


@pytest.mark.parametrize("trainer", ["ddp_cpu", "ddp_2x8", "fsdp"])
def test_strategy_configs_compose_and_build(trainer: str):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"trainer={trainer}", "data=shards", "data.path=/data/shards",
                                          "hydra/launcher=slurm"], return_hydra_config=True)
    spec = OmegaConf.to_container(cfg.trainer.strategy, resolve=True)
    strategy = build_strategy(spec)  # type: ignore[arg-type]
    assert type(strategy).__name__ == {"ddp_cpu": "DDPStrategy", "ddp_2x8": "DDPStrategy",
                                       "fsdp": "FSDPStrategy"}[trainer]
    assert cfg.trainer.sync_batchnorm == (trainer == "ddp_2x8")
    assert cfg.data.source == "shards" and cfg.data.shards.even == "drop"
    assert cfg.hydra.launcher.tasks_per_node >= 1
