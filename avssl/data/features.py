"""Waveform -> log-mel spectrogram, normalisation, and the exact frame <-> time mapping.

Two feature kinds, both pure torch (torchaudio is only used by tests, when it imports):

- ``"kaldi"`` (default): Kaldi ``compute-fbank-feats`` as in ``torchaudio.compliance.kaldi.fbank`` and the AST /
  CAV-MAE recipes: frames cut with snip-edges, per-frame DC removal, pre-emphasis 0.97, window, FFT padded to the
  next power of two, power spectrum, Kaldi mel banks (mel = 1127 ln(1 + f/700), 20 Hz to Nyquist), log with a
  float32-epsilon floor.
- ``"melspec"``: ``torchaudio.transforms.MelSpectrogram`` (centred STFT with reflect padding, periodic Hann window,
  HTK or Slaney mel scale) followed by ``log(x + log_eps)``.

Shapes: a waveform ``[S]`` gives ``[frames, mels]``; a batch ``[B, S]`` gives ``[B, frames, mels]``.

Time: spectrogram frame ``k`` is computed from the samples ``[k*step + offset, k*step + offset + length)`` (sample
``i`` covers ``[i/sr, (i+1)/sr)`` on the clock of the waveform, whose first sample sits at ``start``); its centre is
``start + (k*step + offset + length/2) / sr``. For ``kaldi`` ``offset = 0`` and ``length`` is the frame length, for
``melspec`` (centred) ``offset = -win_length/2`` so the centre is ``start + k*hop/sr``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "FbankConfig",
    "FrameGeometry",
    "TORCHAUDIO_CPU_NOTE",
    "denormalize",
    "frame_center_time",
    "frame_geometry",
    "frames_at_time",
    "frames_for_interval",
    "log_mel",
    "nearest_frame",
    "normalize",
    "num_frames",
    "require_torchaudio",
    "torchaudio_available",
    "valid_frames",
]

# Kaldi's log floor: std::numeric_limits<float>::epsilon()
_FLOAT_EPS = float(torch.finfo(torch.float32).eps)
_KALDI_WINDOWS = ("hanning", "povey", "hamming", "rectangular", "blackman")
_MELSPEC_WINDOWS = ("hanning", "hamming", "rectangular")
_TOL = 1e-6  # tolerance (in frames) when a time lands exactly on a frame boundary despite float rounding

TORCHAUDIO_CPU_NOTE = (
    "torchaudio could not be imported. torchaudio 2.11 wheels only import beside CUDA builds of torch and fail "
    "beside a CPU-only torch build; avssl.data.features computes Kaldi fbank and MelSpectrogram in pure torch, "
    "so use it instead, or install a torch/torchaudio pair built for the same CUDA variant."
)


@dataclass
class FbankConfig:
    """Log-mel settings. Plain fields only, so ``dataclasses.asdict`` round-trips it through JSON/YAML."""

    kind: Literal["kaldi", "melspec"] = "kaldi"
    sample_rate: int = 16000
    num_mel_bins: int = 128
    # kaldi
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    # kaldi: hanning|povey|hamming|rectangular|blackman; melspec: hanning|hamming|rectangular
    window: str = "hanning"
    # Kaldi's htk_compat only moves the energy column; no energy column is produced here (use_energy=False)
    htk_compat: bool = True
    dither: float = 0.0
    remove_mean: bool = True  # subtract the waveform's mean before framing (AST / CAV-MAE)
    remove_dc_offset: bool = True  # Kaldi: subtract each frame's mean
    preemphasis: float = 0.97
    low_freq: float = 20.0
    high_freq: float = 0.0  # <= 0: offset from Nyquist (Kaldi convention)
    blackman_coeff: float = 0.42
    # melspec
    n_fft: int = 1024
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 0.0
    f_max: float | None = None  # None: Nyquist
    mel_scale: Literal["htk", "slaney"] = "htk"
    mel_norm: str | None = None  # None or "slaney" (area normalisation)
    log_eps: float = 1e-6
    # normalisation: (x - mean) / (std * norm_scale)
    mean: float = -5.081
    std: float = 4.4849
    norm_scale: float = 2.0

    def __post_init__(self) -> None:
        if self.kind not in ("kaldi", "melspec"):
            raise ValueError(f"FbankConfig.kind must be 'kaldi' or 'melspec', got {self.kind!r}")
        if self.sample_rate <= 0 or self.num_mel_bins < 1:
            raise ValueError(f"FbankConfig: sample_rate and num_mel_bins must be positive, got {self}")
        windows = _KALDI_WINDOWS if self.kind == "kaldi" else _MELSPEC_WINDOWS
        if self.window not in windows:
            raise ValueError(
                f"FbankConfig.window={self.window!r} is not one of {windows} for kind={self.kind!r}"
            )
        if self.kind == "melspec" and not (0 < self.win_length <= self.n_fft and self.hop_length > 0):
            raise ValueError(f"FbankConfig: need 0 < win_length <= n_fft and hop_length > 0, got {self}")
        if self.mel_scale not in ("htk", "slaney") or self.mel_norm not in (None, "slaney"):
            raise ValueError(f"FbankConfig: bad mel_scale={self.mel_scale!r} or mel_norm={self.mel_norm!r}")
        if self.std <= 0 or self.norm_scale <= 0:
            raise ValueError(
                f"FbankConfig: std and norm_scale must be positive, got {self.std}, {self.norm_scale}"
            )
        if not 0.0 <= self.preemphasis <= 1.0:
            raise ValueError(f"FbankConfig.preemphasis must lie in [0, 1], got {self.preemphasis}")


# --------------------------------------------------------------------------------------------- torchaudio


def torchaudio_available() -> bool:
    """True when ``import torchaudio`` works beside the installed torch."""
    try:
        import torchaudio  # noqa: F401
    except Exception:
        return False
    return True


def require_torchaudio():
    """Import and return torchaudio, or raise an ImportError explaining the CPU-only-torch situation."""
    try:
        import torchaudio
    except Exception as exc:  # OSError / ImportError from missing CUDA libraries
        raise ImportError(f"{TORCHAUDIO_CPU_NOTE} (original error: {exc})") from exc
    return torchaudio


# --------------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class FrameGeometry:
    """Where frame ``k`` reads: samples ``[k*step + offset, k*step + offset + length)``."""

    step: int
    length: int
    offset: int
    centered: bool  # melspec: the signal is reflect-padded by n_fft // 2 on both sides


def frame_geometry(cfg: FbankConfig) -> FrameGeometry:
    """Frame step, effective window length and offset (in samples) of ``cfg``."""
    if cfg.kind == "kaldi":
        length = int(cfg.sample_rate * cfg.frame_length_ms * 0.001)
        step = int(cfg.sample_rate * cfg.frame_shift_ms * 0.001)
        if length < 2 or step < 1:
            raise ValueError(
                f"FbankConfig gives frame length {length} / shift {step} samples; need >= 2 / >= 1"
            )
        return FrameGeometry(step=step, length=length, offset=0, centered=False)
    # torch.stft zero-pads a short window to n_fft, centred: the real window starts at (n_fft - win) // 2
    offset = -(cfg.n_fft // 2) + (cfg.n_fft - cfg.win_length) // 2
    return FrameGeometry(step=cfg.hop_length, length=cfg.win_length, offset=offset, centered=True)


def num_frames(num_samples: int, cfg: FbankConfig) -> int:
    """Number of spectrogram frames ``log_mel`` makes from ``num_samples`` samples."""
    g = frame_geometry(cfg)
    if g.centered:
        return 1 + num_samples // g.step
    if num_samples < g.length:
        return 0
    return 1 + (num_samples - g.length) // g.step


def frame_center_time(k: int | torch.Tensor, cfg: FbankConfig, start: float = 0.0) -> float | torch.Tensor:
    """Centre (seconds) of frame ``k`` of a spectrogram whose first sample sits at ``start``."""
    g = frame_geometry(cfg)
    if isinstance(k, torch.Tensor):
        return start + (k.to(torch.float64) * g.step + g.offset + g.length / 2) / cfg.sample_rate
    return start + (k * g.step + g.offset + g.length / 2) / cfg.sample_rate


def _frame_position(t: float, cfg: FbankConfig, start: float) -> tuple[float, FrameGeometry]:
    """Fractional frame index whose centre is at time ``t``."""
    g = frame_geometry(cfg)
    q = ((t - start) * cfg.sample_rate - g.offset - g.length / 2) / g.step
    return q, g


def _snap(q: float) -> float:
    r = round(q)
    return float(r) if abs(q - r) < _TOL else q


def _clip_range(lo: int, hi: int, total: int | None) -> range:
    lo = max(lo, 0)
    if total is not None:
        hi = min(hi, total)
    return range(lo, max(lo, hi))


def nearest_frame(t: float, cfg: FbankConfig, start: float = 0.0, total: int | None = None) -> int:
    """Index of the frame whose centre is nearest to ``t`` (ties go to the earlier frame).

    With ``total`` (the number of frames) the result is clamped to ``[0, total - 1]``.
    """
    q, _ = _frame_position(t, cfg, start)
    k = math.ceil(_snap(q - 0.5))
    if total is not None:
        if total <= 0:
            raise ValueError("nearest_frame: the spectrogram has no frames")
        k = min(max(k, 0), total - 1)
    return k


def frames_at_time(t: float, cfg: FbankConfig, start: float = 0.0, total: int | None = None) -> range:
    """The frames whose analysis window covers the instant ``t`` (the sample at ``t`` feeds them).

    Frame ``k`` covers ``[start + (k*step + offset)/sr, start + (k*step + offset + length)/sr)``. Indices below 0
    (and at or above ``total`` when given) are dropped.
    """
    g = frame_geometry(cfg)
    x = _snap((t - start) * cfg.sample_rate)
    hi = math.floor(_snap((x - g.offset) / g.step)) + 1
    lo = math.floor(_snap((x - g.offset - g.length) / g.step)) + 1
    return _clip_range(lo, hi, total)


def frames_for_interval(
    t0: float, t1: float, cfg: FbankConfig, start: float = 0.0, total: int | None = None
) -> range:
    """The frames whose centre lies in ``[t0, t1)``.

    Half-open, so consecutive intervals (e.g. the display intervals ``[t, t + 1/fps)`` of successive video frames)
    share out the spectrogram frames without overlap or gap. Clamped to ``[0, total)`` when ``total`` is given.
    """
    if t1 < t0:
        raise ValueError(f"frames_for_interval: t1={t1} precedes t0={t0}")
    q0, _ = _frame_position(t0, cfg, start)
    q1, _ = _frame_position(t1, cfg, start)
    return _clip_range(math.ceil(_snap(q0)), math.ceil(_snap(q1)), total)


def valid_frames(sample_valid: torch.Tensor, cfg: FbankConfig, min_fraction: float = 1.0) -> torch.Tensor:
    """Per-frame validity from a per-sample mask ``[..., S]`` -> bool ``[..., frames]``.

    A frame is valid when at least ``min_fraction`` of the samples it reads are valid; the default 1.0 means *all*
    of them. For ``melspec`` the reflect padding at the edges mirrors real samples, so the padded positions inherit
    the validity of the samples they mirror.
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"valid_frames: min_fraction must lie in (0, 1], got {min_fraction}")
    g = frame_geometry(cfg)
    mask = sample_valid.to(torch.bool)
    n = mask.shape[-1]
    f = num_frames(n, cfg)
    if f == 0:
        return torch.zeros(*mask.shape[:-1], 0, dtype=torch.bool, device=mask.device)
    pad = cfg.n_fft // 2
    if g.centered and n <= pad:
        raise ValueError(f"valid_frames: {n} samples are too few for reflect padding of {pad} (melspec)")
    if bool(mask.all()):  # (the common case: every frame reads only real samples)
        return torch.ones(*mask.shape[:-1], f, dtype=torch.bool, device=mask.device)
    m = mask.to(torch.float64)
    base = 0
    if g.centered:
        lead = m.shape[:-1]
        m = torch.nn.functional.pad(m.reshape(-1, 1, n), (pad, pad), mode="reflect").reshape(
            *lead, n + 2 * pad
        )
        base = pad
    cs = torch.nn.functional.pad(m.cumsum(-1), (1, 0))
    starts = torch.arange(f, device=mask.device) * g.step + g.offset + base
    counts = cs[..., starts + g.length] - cs[..., starts]
    return counts >= min_fraction * g.length - 1e-9


# --------------------------------------------------------------------------------------------- banks and windows


def _mel_kaldi(f: torch.Tensor) -> torch.Tensor:
    return 1127.0 * torch.log1p(f / 700.0)


def _hz_to_mel(f: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + f / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    lin = f / f_sp
    return torch.where(
        f >= min_log_hz, min_log_hz / f_sp + torch.log(f.clamp_min(1e-10) / min_log_hz) / logstep, lin
    )


def _mel_to_hz(m: torch.Tensor, scale: str) -> torch.Tensor:
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = math.log(6.4) / 27.0
    return torch.where(m >= min_log_mel, min_log_hz * torch.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=32)
def _kaldi_bank(num_bins: int, padded: int, sr: float, low: float, high: float, device: str) -> torch.Tensor:
    """Kaldi triangular mel banks ``[num_bins, padded // 2 + 1]`` (the Nyquist column is zero, as in Kaldi)."""
    nyquist = 0.5 * sr
    if high <= 0.0:
        high += nyquist
    if not (0.0 <= low < nyquist and 0.0 < high <= nyquist and low < high):
        raise ValueError(f"Kaldi mel banks: bad low_freq={low} / high_freq={high} for Nyquist {nyquist}")
    if num_bins <= 3:
        raise ValueError(f"Kaldi mel banks need more than 3 bins, got {num_bins}")
    mel_lo = 1127.0 * math.log1p(low / 700.0)
    mel_hi = 1127.0 * math.log1p(high / 700.0)
    delta = (mel_hi - mel_lo) / (num_bins + 1)
    b = torch.arange(num_bins, dtype=torch.float64).unsqueeze(1)
    left, center, right = mel_lo + b * delta, mel_lo + (b + 1) * delta, mel_lo + (b + 2) * delta
    mel = _mel_kaldi(sr / padded * torch.arange(padded // 2, dtype=torch.float64)).unsqueeze(0)
    bank = torch.clamp(
        torch.minimum((mel - left) / (center - left), (right - mel) / (right - center)), min=0.0
    )
    bank = torch.nn.functional.pad(bank, (0, 1))
    return bank.to(torch.float32).to(device)


@functools.lru_cache(maxsize=32)
def _htk_slaney_bank(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sr: int, scale: str, norm: str | None, device: str
) -> torch.Tensor:
    """torchaudio-style triangular banks ``[n_freqs, n_mels]`` on the HTK or Slaney mel scale."""
    all_freqs = torch.linspace(0, sr // 2, n_freqs, dtype=torch.float64)
    m_pts = torch.linspace(
        float(_hz_to_mel(torch.tensor(f_min, dtype=torch.float64), scale)),
        float(_hz_to_mel(torch.tensor(f_max, dtype=torch.float64), scale)),
        n_mels + 2,
        dtype=torch.float64,
    )
    f_pts = _mel_to_hz(m_pts, scale)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    bank = torch.clamp(torch.minimum(down, up), min=0.0)
    if norm == "slaney":
        bank = bank * (2.0 / (f_pts[2 : n_mels + 2] - f_pts[:n_mels]))
    return bank.to(torch.float32).to(device)


@functools.lru_cache(maxsize=32)
def _window(kind: str, length: int, periodic: bool, blackman_coeff: float, device: str) -> torch.Tensor:
    if kind == "hanning":
        w = torch.hann_window(length, periodic=periodic, dtype=torch.float64)
    elif kind == "povey":
        w = torch.hann_window(length, periodic=False, dtype=torch.float64).pow(0.85)
    elif kind == "hamming":
        w = torch.hamming_window(length, periodic=periodic, alpha=0.54, beta=0.46, dtype=torch.float64)
    elif kind == "rectangular":
        w = torch.ones(length, dtype=torch.float64)
    elif kind == "blackman":
        n = torch.arange(length, dtype=torch.float64)
        a = 2 * math.pi / (length - 1)
        w = blackman_coeff - 0.5 * torch.cos(a * n) + (0.5 - blackman_coeff) * torch.cos(2 * a * n)
    else:
        raise ValueError(f"unknown window {kind!r}")
    return w.to(torch.float32).to(device)


# --------------------------------------------------------------------------------------------- log-mel


@dataclass(frozen=True)
class _MelGroups:
    """A triangular filter bank ``[K, M]`` (FFT bins x mel bins) applied as a few dense products: each group of
    ``_MEL_GROUP`` neighbouring filters multiplies only the FFT bins where one of them is non-zero (the same sums
    as the whole product, which multiplies mostly zeros: 3 times the work at 128 mel bins)."""

    num_mels: int
    parts: tuple[tuple[int, int, int, int, torch.Tensor], ...]  # (m0, m1, k0, k1, bank[k0:k1, m0:m1])

    @classmethod
    def of(cls, bank: torch.Tensor) -> _MelGroups:
        parts = []
        for m0 in range(0, bank.shape[1], _MEL_GROUP):
            m1 = min(m0 + _MEL_GROUP, bank.shape[1])
            cols = (bank[:, m0:m1] != 0).any(dim=1).nonzero().flatten()
            k0, k1 = (int(cols[0]), int(cols[-1]) + 1) if cols.numel() else (0, 0)
            parts.append((m0, m1, k0, k1, bank[k0:k1, m0:m1].contiguous()))
        return cls(int(bank.shape[1]), tuple(parts))

    def apply(self, power: torch.Tensor) -> torch.Tensor:
        """``[..., K]`` -> ``[..., M]`` (float32 or float64, as ``power``)."""
        out = power.new_empty(*power.shape[:-1], self.num_mels)
        for m0, m1, k0, k1, bank in self.parts:
            if k1 > k0:
                torch.matmul(power[..., k0:k1], bank.to(power.dtype), out=out[..., m0:m1])
            else:  # filters narrower than one FFT bin
                out[..., m0:m1] = 0.0
        return out


_MEL_GROUP = 16


@functools.lru_cache(maxsize=32)
def _kaldi_groups(num_bins: int, padded: int, sr: float, low: float, high: float, device: str) -> _MelGroups:
    return _MelGroups.of(_kaldi_bank(num_bins, padded, sr, low, high, device).T)


@functools.lru_cache(maxsize=32)
def _htk_slaney_groups(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sr: int, scale: str, norm: str | None, device: str
) -> _MelGroups:
    return _MelGroups.of(_htk_slaney_bank(n_freqs, f_min, f_max, n_mels, sr, scale, norm, device))


def _power(spec: torch.Tensor) -> torch.Tensor:
    """``|X|^2`` of a complex spectrum as ``re^2 + im^2`` (no square root)."""
    re, im = spec.real, spec.imag
    return torch.mul(re, re).addcmul_(im, im)


def _as_batch(waveform: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if not isinstance(waveform, torch.Tensor):
        raise TypeError(f"log_mel expects a torch.Tensor waveform, got {type(waveform).__name__}")
    if waveform.dim() not in (1, 2):
        raise ValueError(
            f"log_mel expects a waveform [S] or a batch [B, S], got shape {tuple(waveform.shape)}"
        )
    x = waveform if waveform.is_floating_point() else waveform.float()
    if x.dtype != torch.float64:
        x = x.to(torch.float32)
    return (x.unsqueeze(0), True) if x.dim() == 1 else (x, False)


def _kaldi_fbank(x: torch.Tensor, cfg: FbankConfig, generator: torch.Generator | None) -> torch.Tensor:
    g = frame_geometry(cfg)
    n = x.shape[-1]
    if n < g.length:
        raise ValueError(f"log_mel: {n} samples are fewer than one {g.length}-sample Kaldi frame")
    dev = str(x.device)
    frames = x.unfold(-1, g.length, g.step)  # [B, F, L], a view
    view = True  # frames still a view of the waveform (not to be written)
    if cfg.dither != 0.0:
        noise = torch.randn(frames.shape, generator=generator, device=x.device, dtype=x.dtype)
        frames, view = frames + cfg.dither * noise, False
    if cfg.remove_dc_offset:
        frames, view = frames - frames.mean(dim=-1, keepdim=True), False
    if cfg.preemphasis != 0.0:  # y[i] = f[i] - p * f[i - 1], y[0] = f[0] - p * f[0] (Kaldi), in two kernels
        pre = torch.empty(frames.shape, device=x.device, dtype=x.dtype)
        torch.sub(frames[..., 1:], frames[..., :-1], alpha=cfg.preemphasis, out=pre[..., 1:])
        torch.mul(frames[..., :1], 1.0 - cfg.preemphasis, out=pre[..., :1])
        frames, view = pre, False
    window = _window(cfg.window, g.length, False, cfg.blackman_coeff, dev).to(x.dtype)
    frames = frames * window if view else frames.mul_(window)
    padded = 1 << (g.length - 1).bit_length()
    power = _power(torch.fft.rfft(frames, n=padded))  # [B, F, padded//2 + 1]
    mel = _kaldi_groups(cfg.num_mel_bins, padded, float(cfg.sample_rate), cfg.low_freq, cfg.high_freq, dev).apply(power)
    return mel.clamp_(min=_FLOAT_EPS).log_()


def _melspec(x: torch.Tensor, cfg: FbankConfig) -> torch.Tensor:
    n = x.shape[-1]
    if n <= cfg.n_fft // 2:
        raise ValueError(f"log_mel: {n} samples are too few for a centred STFT with n_fft={cfg.n_fft}")
    dev = str(x.device)
    window = _window(cfg.window, cfg.win_length, True, cfg.blackman_coeff, dev).to(x.dtype)
    spec = torch.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )  # [B, n_fft//2 + 1, F]
    power = _power(spec.transpose(-1, -2))  # [B, F, n_freqs]
    f_max = cfg.f_max if cfg.f_max is not None else cfg.sample_rate / 2
    groups = _htk_slaney_groups(
        cfg.n_fft // 2 + 1,
        cfg.f_min,
        float(f_max),
        cfg.num_mel_bins,
        cfg.sample_rate,
        cfg.mel_scale,
        cfg.mel_norm,
        dev,
    )
    return groups.apply(power).add_(cfg.log_eps).log_()


def log_mel(
    waveform: torch.Tensor, cfg: FbankConfig | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Log-mel spectrogram (not normalised): ``[S] -> [frames, mels]`` or ``[B, S] -> [B, frames, mels]``.

    ``generator`` only drives the dither noise (``cfg.dither > 0``). float64 input stays float64.
    """
    cfg = cfg or FbankConfig()
    x, squeeze = _as_batch(waveform)
    if cfg.remove_mean:
        x = x - x.mean(dim=-1, keepdim=True)
    out = _kaldi_fbank(x, cfg, generator) if cfg.kind == "kaldi" else _melspec(x, cfg)
    return out[0] if squeeze else out


def normalize(spec: torch.Tensor, cfg: FbankConfig | None = None) -> torch.Tensor:
    """``(spec - mean) / (std * norm_scale)``: the AST / CAV-MAE input normalisation."""
    cfg = cfg or FbankConfig()
    return torch.sub(spec, cfg.mean).div_(cfg.std * cfg.norm_scale)


def denormalize(spec: torch.Tensor, cfg: FbankConfig | None = None) -> torch.Tensor:
    """Inverse of :func:`normalize`."""
    cfg = cfg or FbankConfig()
    return spec * (cfg.std * cfg.norm_scale) + cfg.mean
