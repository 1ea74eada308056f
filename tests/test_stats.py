"""Dataset log-mel statistics: exact streaming moments, valid-frame selection, window placement, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from avssl.cli.stats import main
from avssl.data.features import FbankConfig, log_mel
from avssl.data_tools.stats import RunningMoments, compute_stats

LOG_EPS = math.log(torch.finfo(torch.float32).eps)


def _noise(n: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    return scale * torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_running_moments_match_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    chunks = [
        1e6 + torch.randn(n, generator=g, dtype=torch.float64) * (i + 1)
        for i, n in enumerate([1, 7, 300, 50])
    ]
    acc = RunningMoments()
    for c in chunks:
        acc.update(c)
    acc.update(torch.empty(0))
    allv = torch.cat(chunks)
    assert acc.count == 358
    assert acc.mean == pytest.approx(float(allv.mean()), rel=1e-14)
    assert acc.std == pytest.approx(float(allv.std(unbiased=False)), rel=1e-9)
    assert math.isnan(RunningMoments().std)


def test_silence_has_known_stats() -> None:
    out = compute_stats([torch.zeros(8000), torch.zeros(4000)], FbankConfig())
    assert out["mean"] == pytest.approx(LOG_EPS, abs=1e-6)
    assert out["std"] == pytest.approx(0.0, abs=1e-6)
    assert out["num_frames"] == 48 + 23
    assert out["num_values"] == (48 + 23) * 128
    assert out["config"]["kind"] == "kaldi" and out["skipped"] == []


def test_stats_equal_concatenated_spectrograms() -> None:
    cfg = FbankConfig(num_mel_bins=32)
    waves = [_noise(16000, 1), _noise(5000, 2, 1.0), _noise(12345, 3, 0.01)]
    out = compute_stats(waves, cfg)
    specs = torch.cat([log_mel(w, cfg) for w in waves]).to(torch.float64)
    assert out["num_frames"] == specs.shape[0]
    assert out["mean"] == pytest.approx(float(specs.mean()), rel=1e-9)
    assert out["std"] == pytest.approx(float(specs.std(unbiased=False)), rel=1e-9)


def test_only_valid_frames_count() -> None:
    cfg = FbankConfig()
    wave = torch.zeros(3200)
    wave[1600:] = _noise(1600, 4, 1.0)  # loud, but not real audio
    valid = torch.zeros(3200, dtype=torch.bool)
    valid[:1600] = True
    out = compute_stats([(wave, valid)], cfg)
    # frames fully inside [0, 1600): 160k + 400 <= 1600 -> k <= 7; remove_mean shifts the silence by a constant,
    # which each frame's DC removal takes out again, so they stay at the log floor
    assert out["num_frames"] == 8
    assert out["mean"] == pytest.approx(LOG_EPS, abs=1e-5)
    none_valid = compute_stats([(wave, torch.zeros(3200, dtype=torch.bool))], cfg)
    assert none_valid["num_frames"] == 0 and none_valid["mean"] is None and none_valid["std"] is None


def test_media_windows_are_deterministic_and_inside_the_span() -> None:
    calls: list[tuple[str, float, float]] = []

    def reader(path: str, start: float, duration: float, sr: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((path, start, duration))
        n = round(duration * sr)
        return _noise(n, int(start * 1000)), torch.ones(n, dtype=torch.bool)

    rows = [("a.mp4", 2.0, 12.0), {"path": "b.mp4", "start": 0.0, "end": 0.5}]
    out = compute_stats(rows, FbankConfig(), windows_per_file=3, window_duration=1.0, seed=5, reader=reader)
    first = list(calls)
    assert [c[0] for c in first] == ["a.mp4"] * 3 + ["b.mp4"]
    assert all(2.0 <= s <= 11.0 and d == 1.0 for _, s, d in first[:3])
    assert first[3] == ("b.mp4", 0.0, 0.5)  # a span shorter than a window is read whole
    assert out["num_files"] == 2 and out["num_windows"] == 4
    assert out["num_frames"] == 3 * 98 + 48
    calls.clear()
    again = compute_stats(
        list(reversed(rows)), FbankConfig(), windows_per_file=3, window_duration=1.0, seed=5, reader=reader
    )
    assert sorted(calls) == sorted(first)  # placement does not depend on order
    assert again["mean"] == pytest.approx(out["mean"], rel=1e-12)
    calls.clear()
    compute_stats(rows[:1], FbankConfig(), windows_per_file=3, window_duration=1.0, seed=6, reader=reader)
    assert calls != first[:3]


def test_bad_files_are_skipped_or_raise() -> None:
    from avssl.data.errors import DecodeError

    def reader(path: str, start: float, duration: float, sr: int) -> tuple[torch.Tensor, torch.Tensor]:
        if path == "bad.mp4":
            raise DecodeError(path, "corrupt")
        n = round(duration * sr)
        return torch.zeros(n), torch.ones(n, dtype=torch.bool)

    rows = [("bad.mp4", 0.0, 3.0), ("good.mp4", 0.0, 3.0)]
    out = compute_stats(rows, windows_per_file=2, window_duration=1.0, reader=reader)
    assert out["num_files"] == 1
    assert out["skipped"] == [{"path": "bad.mp4", "error": "DecodeError: bad.mp4: corrupt"}]
    with pytest.raises(DecodeError, match="bad.mp4: corrupt"):
        compute_stats(rows, windows_per_file=2, window_duration=1.0, reader=reader, strict=True)
    with pytest.raises(TypeError, match="cannot use source"):
        compute_stats([3.5])
    with pytest.raises(ValueError, match="windows_per_file"):
        compute_stats([], windows_per_file=0)


def test_cli_errors(tmp_path, capsys) -> None:
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2  # empty folder
    assert "nothing to read" in capsys.readouterr().err


def test_end_to_end_on_media(tmp_path) -> None:
    pytest.importorskip("av")
    try:
        from avssl.data.media import read_av_window  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"avssl.data.media not importable yet: {exc}")
    from mediagen import make_av_file

    folder = tmp_path / "videos" / "sub"
    folder.mkdir(parents=True)
    make_av_file(folder / "a.mp4", duration=2.0, size=(64, 48))
    make_av_file(folder / "silent.mp4", duration=1.5, size=(64, 48), acodec=None)
    (folder / "notes.txt").write_text("not media")
    out_json = tmp_path / "stats.json"
    rc = main(
        [str(tmp_path / "videos"), "--windows-per-file", "2", "--window-duration", "0.5", "-o", str(out_json)]
    )
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["num_files"] == 2 and data["skipped"] == []
    assert data["num_frames"] == 2 * 48  # the file without audio contributes no valid frames
    assert math.isfinite(data["mean"]) and data["std"] > 0
    again = compute_stats([str(folder / "a.mp4")], FbankConfig(), windows_per_file=2, window_duration=0.5)
    assert again["mean"] == pytest.approx(data["mean"], rel=1e-12)
    manifest = pytest.importorskip("avssl.data.manifest")
    rows = [
        {"path": str(folder / "a.mp4"), "start": 0.0, "end": 2.0, "split": "train"},
        {"path": str(folder / "a.mp4"), "start": 0.5, "end": 1.0, "split": "val"},
    ]
    manifest.write_manifest(tmp_path / "m.csv", rows)
    assert main([str(tmp_path / "m.csv"), "--split", "val", "-o", str(out_json)]) == 0
    val = json.loads(out_json.read_text())
    assert (
        val["num_files"] == 1 and val["num_windows"] == 1 and val["num_frames"] == 48
    )  # 0.5 s span read whole
