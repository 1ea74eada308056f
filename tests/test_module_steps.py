"""AVSSLModule step hooks on a tiny model, without a Trainer: the temperature is clamped right after each optimiser
step, validation encodes each batch once, and ``data/bad_files`` counts distinct broken files."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mediagen import make_garbage_file
from torch.utils.data import DataLoader

from avssl.lit.module import AVSSLModule
from avssl.objectives.metrics import retrieval_top1, sync_acc

pytestmark = pytest.mark.usefixtures("one_thread")

B, S = 2, 2
PREP = {"video_input_shape": [3, 4, 32, 32], "audio_input_shape": [1, 32, 32], "val_batch_size": B}


def _module(**sync) -> AVSSLModule:
    torch.manual_seed(0)
    return AVSSLModule(model={"video": {"name": "r3d_tiny"}, "audio": {"name": "cnn_audio_tiny"}, "embed_dim": 16},
                       objective={"weights": {"sync": 1.0}, "sync": sync}, optimizer={}, preprocessing=PREP)


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"video": torch.randn(B, S, *PREP["video_input_shape"], generator=g),
            "audio": torch.randn(B, S, *PREP["audio_input_shape"], generator=g)}


def test_optimizer_step_clamps_the_temperature_in_place():
    module = _module(temperature=0.45, temperature_max=0.5)
    temp = module.model.objectives["sync"].loss.temperature  # type: ignore[union-attr]
    opt = torch.optim.SGD([temp.log_temperature], lr=10.0)

    def closure():  # a loss that wants a higher temperature: the step overshoots the bound
        opt.zero_grad()
        loss = -temp()
        loss.backward()
        return loss

    module.optimizer_step(0, 0, opt, closure)
    assert temp.log_temperature.item() == pytest.approx(math.log(0.5))
    opt.zero_grad()
    temp().backward()  # at the bound, a loss that wants it lower still has a gradient
    assert temp.log_temperature.grad.item() == pytest.approx(0.5)


class _Recorder:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def __call__(self, name, value, **kwargs) -> None:
        self.logged[name] = float(value)


def test_validation_encodes_once_and_logs_the_forward_embeddings(monkeypatch):
    module = _module().eval()
    calls = {"video": 0, "audio": 0}
    for m in calls:
        module.encoders[m].register_forward_hook(lambda *_, m=m: calls.__setitem__(m, calls[m] + 1))
    rec = _Recorder()
    monkeypatch.setattr(module, "log", rec)
    batch = _batch()
    with torch.no_grad():
        module.validation_step(batch, 0)
    assert calls == {"video": 1, "audio": 1}  # once for the loss, reused for sync_acc / retrieval_top1
    with torch.no_grad():
        a, v = module.model.embed(batch["video"], batch["audio"])  # type: ignore[operator]
    assert rec.logged["val/sync_acc"] == pytest.approx(sync_acc(a, v)["sync_acc"].item())
    assert rec.logged["val/retrieval_top1"] == pytest.approx(retrieval_top1(a, v)["retrieval_top1"].item())
    assert "val/loss_sync" in rec.logged


def test_bad_files_counts_distinct_files_not_skips(tmp_path: Path, monkeypatch):
    """One broken file with three clips (uniform mode), read by two DataLoader workers: three skip events, one
    bad file. The samples carry the newly found broken paths; the module counts distinct ones."""
    from avssl.data.datasets import AVClipDataset
    from avssl.data.manifest import read_manifest, write_manifest
    from avssl.data.sampling import ClipSpec
    from avssl.data_tools.demo import make_demo_dataset

    rows = list(read_manifest(make_demo_dataset(tmp_path / "demo", num_videos=2, duration=3.0, seed=5)))
    bad = make_garbage_file(tmp_path / "broken.mp4", seed=0)
    rows.insert(1, replace(rows[0], path=bad, meta={"label": "sine_circle"}))
    clip = ClipSpec(num_segments=2, segment_duration=0.5)
    ds = AVClipDataset(write_manifest(tmp_path / "m.csv", rows), clip=clip, fps=8, frame_size=32,
                       mode="uniform", clips_per_row=3, max_bad_fraction=0.5)
    module = _module()
    rec = _Recorder()
    monkeypatch.setattr(module, "log", rec)
    skips = 0
    for batch in DataLoader(ds, batch_size=2, num_workers=2):
        skips += int(batch["num_skipped"].sum())
        module._log_bad_files(batch)
    assert skips >= 3  # every clip of the broken file is passed over
    module.on_train_epoch_end()
    assert rec.logged["data/bad_files"] == 1.0
    assert module.bad_files == {bad}
