"""Log-mel features: torchaudio parity, batching, normalisation and the exact frame <-> time mapping."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from avssl.data.features import (
    FbankConfig,
    denormalize,
    frame_center_time,
    frame_geometry,
    frames_at_time,
    frames_for_interval,
    log_mel,
    nearest_frame,
    normalize,
    num_frames,
    require_torchaudio,
    torchaudio_available,
    valid_frames,
)

needs_torchaudio = pytest.mark.skipif(
    not torchaudio_available(),
    reason="torchaudio cannot be imported here (torchaudio 2.11 only imports beside a CUDA build of torch)",
)


def _signal(seconds: float = 1.0, sr: int = 16000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * sr), dtype=torch.float32) / sr
    return 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(t.shape, generator=g) + 0.02


@needs_torchaudio
@pytest.mark.parametrize("window", ["hanning", "povey", "hamming", "rectangular", "blackman"])
def test_kaldi_matches_torchaudio(window: str) -> None:
    from torchaudio.compliance import kaldi

    x = _signal()
    cfg = FbankConfig(window=window)
    ours = log_mel(x, cfg)
    ref = kaldi.fbank(
        (x - x.mean())[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type=window,
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10.0,
        frame_length=25.0,
    )
    assert ours.shape == ref.shape == (98, 128)
    assert (ours - ref).abs().max() < 1e-3
    assert (ours - ref).abs().mean() < 1e-5


@needs_torchaudio
def test_kaldi_other_settings_match_torchaudio() -> None:
    from torchaudio.compliance import kaldi

    x = _signal(0.5, sr=8000)
    cfg = FbankConfig(
        sample_rate=8000,
        num_mel_bins=40,
        remove_mean=False,
        low_freq=60.0,
        high_freq=-400.0,
        frame_shift_ms=12.5,
        window="povey",
    )
    ref = kaldi.fbank(
        x[None],
        sample_frequency=8000,
        num_mel_bins=40,
        low_freq=60.0,
        high_freq=-400.0,
        frame_shift=12.5,
        window_type="povey",
    )
    ours = log_mel(x, cfg)
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max() < 1e-3


@needs_torchaudio
@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney")])
def test_melspec_matches_torchaudio(scale: str, norm: str | None) -> None:
    import torchaudio

    x = _signal()
    cfg = FbankConfig(kind="melspec", mel_scale=scale, mel_norm=norm, f_min=30.0, f_max=7600.0)
    ref = torchaudio.transforms.MelSpectrogram(
        16000,
        n_fft=1024,
        win_length=400,
        hop_length=160,
        n_mels=128,
        f_min=30.0,
        f_max=7600.0,
        norm=norm,
        mel_scale=scale,
    )(x - x.mean())
    ref = torch.log(ref + 1e-6).T
    ours = log_mel(x, cfg)
    assert ours.shape == ref.shape == (101, 128)
    assert (ours - ref).abs().max() < 1e-3


def test_require_torchaudio_message() -> None:
    if torchaudio_available():
        assert require_torchaudio().__name__ == "torchaudio"
    else:
        with pytest.raises(ImportError, match="CPU-only torch"):
            require_torchaudio()


@pytest.mark.parametrize("kind", ["kaldi", "melspec"])
def test_batched_equals_single(kind: str) -> None:
    cfg = FbankConfig(kind=kind)
    xb = torch.stack([_signal(0.6, seed=i) * (i + 1) for i in range(3)])
    batched = log_mel(xb, cfg)
    assert batched.shape == (3, num_frames(xb.shape[-1], cfg), 128)
    for i in range(3):
        torch.testing.assert_close(batched[i], log_mel(xb[i], cfg), atol=1e-5, rtol=1e-5)


def test_silence_is_log_epsilon_floor() -> None:
    spec = log_mel(torch.zeros(4000), FbankConfig())
    assert torch.all(spec == math.log(torch.finfo(torch.float32).eps))
    mel = log_mel(torch.zeros(4000), FbankConfig(kind="melspec"))
    torch.testing.assert_close(mel, torch.full_like(mel, math.log(1e-6)))


def test_remove_mean_ignores_dc() -> None:
    x = _signal(0.5)
    cfg = FbankConfig()
    torch.testing.assert_close(log_mel(x + 0.25, cfg), log_mel(x, cfg), atol=1e-4, rtol=1e-5)


def test_dither_is_deterministic_with_generator() -> None:
    x = torch.zeros(2000)
    cfg = FbankConfig(dither=1.0)
    a = log_mel(x, cfg, generator=torch.Generator().manual_seed(3))
    b = log_mel(x, cfg, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, log_mel(x, FbankConfig()))


def test_normalize_round_trip_and_values() -> None:
    cfg = FbankConfig()
    spec = torch.tensor([[-5.081, -5.081 + 2 * 4.4849]])
    torch.testing.assert_close(normalize(spec, cfg), torch.tensor([[0.0, 1.0]]))
    x = torch.randn(5, 7)
    torch.testing.assert_close(denormalize(normalize(x, cfg), cfg), x)


def test_config_serialisable_and_validated() -> None:
    cfg = FbankConfig(kind="melspec", mel_scale="slaney")
    d = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert FbankConfig(**d) == cfg
    with pytest.raises(ValueError, match="kind"):
        FbankConfig(kind="mfcc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="window"):
        FbankConfig(kind="melspec", window="povey")


def test_bad_waveforms_raise_clearly() -> None:
    with pytest.raises(ValueError, match="fewer than one 400-sample"):
        log_mel(torch.zeros(399))
    with pytest.raises(ValueError, match=r"\[S\] or a batch"):
        log_mel(torch.zeros(1, 2, 800))
    with pytest.raises(TypeError, match="torch.Tensor"):
        log_mel([0.0] * 1000)  # type: ignore[arg-type]


def test_num_frames_exact() -> None:
    k = FbankConfig()
    assert [num_frames(n, k) for n in (399, 400, 559, 560, 16000, 32000)] == [0, 1, 1, 2, 98, 198]
    m = FbankConfig(kind="melspec")
    assert [num_frames(n, m) for n in (16000, 16159, 16160, 32000)] == [101, 101, 102, 201]
    for n in (1000, 8000, 16003):
        assert log_mel(torch.randn(n), k).shape[0] == num_frames(n, k)
        assert log_mel(torch.randn(n), m).shape[0] == num_frames(n, m)


def test_frame_center_times_exact() -> None:
    k = FbankConfig()
    assert frame_center_time(0, k) == pytest.approx(0.0125)
    assert frame_center_time(10, k, start=2.0) == pytest.approx(2.1125)
    m = FbankConfig(kind="melspec")
    assert frame_geometry(m).offset == -200
    assert frame_center_time(0, m) == 0.0
    assert frame_center_time(25, m, start=1.0) == pytest.approx(1.25)
    t = frame_center_time(torch.arange(3), k)
    torch.testing.assert_close(t, torch.tensor([0.0125, 0.0225, 0.0325], dtype=torch.float64))


@pytest.mark.parametrize("kind", ["kaldi", "melspec"])
def test_nearest_frame_round_trip(kind: str) -> None:
    cfg = FbankConfig(kind=kind)
    for k in range(0, 300, 7):
        t = frame_center_time(k, cfg, start=3.3)
        assert nearest_frame(t, cfg, start=3.3) == k
        assert nearest_frame(t + 0.0049, cfg, start=3.3) == k
        assert nearest_frame(t - 0.0049, cfg, start=3.3) == k
    # a tie (exactly between two centres) goes to the earlier frame
    assert nearest_frame(0.0125 + 0.005, FbankConfig()) == 0
    assert nearest_frame(100.0, cfg, total=50) == 49
    assert nearest_frame(-1.0, cfg, total=50) == 0


def test_frames_at_time_kaldi_exact() -> None:
    cfg = FbankConfig()
    # frame k covers [k*0.01, k*0.01 + 0.025)
    assert frames_at_time(0.0, cfg) == range(0, 1)
    assert frames_at_time(0.012, cfg) == range(0, 2)
    assert frames_at_time(0.05, cfg) == range(3, 6)
    assert frames_at_time(1.05, cfg, start=1.0) == range(3, 6)
    assert frames_at_time(0.05, cfg, total=4) == range(3, 4)


def test_frames_at_time_melspec_exact() -> None:
    cfg = FbankConfig(kind="melspec")
    # frame k covers [k*0.01 - 0.0125, k*0.01 + 0.0125)
    assert frames_at_time(0.0, cfg) == range(0, 2)
    assert frames_at_time(0.05, cfg) == range(4, 7)
    for t in (0.0, 0.033, 0.5, 1.2345):
        for k in frames_at_time(t, cfg):
            assert abs(frame_center_time(k, cfg) - t) <= 0.0125 + 1e-12


@pytest.mark.parametrize("kind", ["kaldi", "melspec"])
@pytest.mark.parametrize("fps", [25.0, 30.0, 8.0])
def test_video_frames_partition_spectrogram_frames(kind: str, fps: float) -> None:
    cfg = FbankConfig(kind=kind)
    start, seconds = 10.0, 2.0
    total = num_frames(int(seconds * cfg.sample_rate), cfg)
    covered: list[int] = []
    for j in range(int(seconds * fps)):
        t = start + j / fps
        r = frames_for_interval(t, start + (j + 1) / fps, cfg, start=start, total=total)
        for k in r:
            assert t - 1e-9 <= frame_center_time(k, cfg, start) < t + 1 / fps
        covered.extend(r)
    assert covered == list(range(len(covered)))
    assert total - len(covered) <= 3  # only frames centred past the last video frame's interval remain


def test_frames_for_interval_exact() -> None:
    k = FbankConfig()
    assert frames_for_interval(0.0, 0.04, k) == range(0, 3)  # centres 0.0125, 0.0225, 0.0325
    assert frames_for_interval(0.0125, 0.0225, k) == range(0, 1)
    m = FbankConfig(kind="melspec")
    assert frames_for_interval(0.5, 0.54, m, start=0.0) == range(50, 54)
    assert frames_for_interval(1.5, 1.54, m, start=1.0) == range(50, 54)
    with pytest.raises(ValueError, match="precedes"):
        frames_for_interval(1.0, 0.5, m)


def test_valid_frames_kaldi_all_and_fraction() -> None:
    cfg = FbankConfig()
    mask = torch.ones(1600, dtype=torch.bool)
    mask[800:] = False  # valid samples [0, 800)
    v = valid_frames(mask, cfg)
    assert v.shape == (num_frames(1600, cfg),)
    # frame k covers [160k, 160k + 400): all valid iff 160k + 400 <= 800 -> k <= 2
    assert v.tolist() == [True, True, True] + [False] * 5
    # at least 200 valid samples: 160k + 200 <= 800 -> k <= 3
    half = valid_frames(mask, cfg, min_fraction=0.5)
    assert half.tolist() == [True] * 4 + [False] * 4
    batched = valid_frames(torch.stack([mask, ~mask]), cfg)
    assert batched.shape == (2, 8) and batched[0].tolist() == v.tolist()


def test_valid_frames_melspec_edges_mirror() -> None:
    cfg = FbankConfig(kind="melspec")
    mask = torch.ones(3200, dtype=torch.bool)
    assert bool(valid_frames(mask, cfg).all())  # reflect padding of real audio is real audio
    mask[:1000] = False
    v = valid_frames(mask, cfg)
    # frame k reads [160k - 200, 160k + 200): valid iff 160k - 200 >= 1000 -> k >= 7.5
    assert v[:8].sum() == 0 and bool(v[8:].all())
