"""`data.clips_per_file: auto` gives a sensible budget whatever the file lengths, and the run prints its plan."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from avssl.data.manifest import ManifestRow
from avssl.data.sampling import ClipSpec
from avssl.lit.datamodule import AVDataModule, EpochClips, clips_per_row


class _Base:
    """Stands in for a random-mode AVClipDataset: records which (epoch, item) each read used."""

    def __init__(self, lengths: list[float], clip: float = 2.0):
        self.rows = [ManifestRow(path=f"f{i}.mp4", start=0.0, end=d) for i, d in enumerate(lengths)]
        self.clip = ClipSpec(num_segments=4, segment_duration=clip / 4)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, j: int) -> tuple[int, int]:
        return self.epoch, j


def test_auto_draws_as_many_clips_as_a_row_holds():
    base = _Base([1.5, 2.0, 5.0, 9.99, 60.0])
    assert clips_per_row(base, "auto") == [1, 1, 2, 4, 30]  # a row shorter than a clip is dropped earlier anyway
    assert clips_per_row(base, 3) == [3] * 5
    for bad in (0, -1, "many", 2.5, True):
        with pytest.raises(ValueError, match="clips_per_file"):
            clips_per_row(base, bad)


def test_epoch_clips_keep_the_old_order_for_integers_and_never_repeat_a_draw():
    base = _Base([4.0, 4.0, 4.0])
    uniform = EpochClips(base, 2)
    n, reps = 3, 2
    for e in (0, 1):  # the formula of the previous round: item i % n at base epoch e * R + i // n
        assert [uniform[(e, i)] for i in range(len(uniform))] == [(e * reps + i // n, i % n) for i in range(6)]
    auto = EpochClips(_Base([2.0, 6.0, 4.0]), "auto")
    assert len(auto) == 1 + 3 + 2
    draws = [auto[(e, i)] for e in range(3) for i in range(len(auto))]
    assert len(set(draws)) == len(draws)  # every (base epoch, item) once: clips differ across repeats and epochs


def _compose(*overrides: str):
    with initialize_config_module("avssl.conf", version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_manifest_and_folder_default_to_auto_and_typos_fail():
    for data in ("manifest", "folder"):
        assert _compose(f"data={data}", "data.path=x").data.clips_per_file == "auto"
    assert _compose().data.clips_per_file == 4  # the demo run keeps its measured recipe
    with pytest.raises(ValueError, match="clips_per_file must be 'auto' or an integer"):
        AVDataModule({**dict(_compose().data), "clips_per_file": "autoo"})


def test_the_run_prints_its_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from avssl.lit.run import train

    cfg = _compose("debug=[tiny,fast_dev_run]", "data.num_workers=0", "data.persistent_workers=false",
                   f"data.demo.cache_dir={tmp_path / 'demo'}")
    train(cfg, output_dir=tmp_path / "run")
    out = capsys.readouterr().out
    assert "training plan:" in out and "clips/epoch" in out and "optimizer steps" in out
