"""The one preprocessing path: a frozen spec and the one cutter that turns decoded media into model inputs.

Every consumer calls this module and nothing else cuts segments: the map-style datasets, the shard reader,
``PretrainedEncoder.preprocess`` (``avssl.load_encoder``), ``avssl-eval`` and ``avssl-extract``. The rule, for any
fps, segment duration, gap and sample rate:

- segment ``k`` starts at ``s_k = clip_start + k * (segment_duration + segment_gap)`` (file clock, seconds);
- its video is ``T = round(segment_duration * fps)`` frames, frame ``j`` being the frame on screen at
  ``s_k + j / fps`` (the latest frame whose time is ``<=`` that instant);
- its audio is ``round(segment_duration * sample_rate)`` samples starting at sample ``round(s_k * sample_rate)``
  of the file's clock (sample ``i`` of the file sits at ``i / sample_rate``);
- audio validity (where the file has no sound) is applied the same way in training and inference: spectrogram
  frames with less than ``audio_valid_min_fraction`` real samples are zero after normalisation (silence).

Training writes the spec into checkpoints and bundles (``PreprocessSpec.to_dict``); loaders rebuild it with
``PreprocessSpec.from_dict``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from avssl.data.features import FbankConfig, log_mel, normalize, num_frames, valid_frames
from avssl.data.sampling import ClipSpec
from avssl.data.transforms import IMAGENET_MEAN, IMAGENET_STD, SpecAugment, VideoTransform

__all__ = ["EPS", "PreprocessSpec", "Preprocessor", "SegmentCut", "audio_window", "clip_inputs", "cut_audio",
           "cut_audio_valid", "cut_video", "decode_size", "resample", "select_latest", "video_entries",
           "video_key"]

EPS = 1e-6  # seconds: a frame whose time is within EPS after a target still counts as on screen at it


@dataclass(frozen=True)
class PreprocessSpec:
    """How media become model inputs. Plain values only, so it round-trips through checkpoints and JSON."""

    segment_duration: float
    fps: float
    frame_size: tuple[int, int]
    sample_rate: int
    fbank: FbankConfig = field(default_factory=FbankConfig)
    segment_gap: float = 0.0
    num_segments: int = 1
    video_mean: tuple[float, float, float] = IMAGENET_MEAN
    video_std: tuple[float, float, float] = IMAGENET_STD
    audio_valid_min_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not (self.segment_duration > 0 and math.isfinite(self.segment_duration)):
            raise ValueError(f"PreprocessSpec: segment_duration must be > 0, got {self.segment_duration}")
        if not (self.fps > 0 and math.isfinite(self.fps)) or self.sample_rate < 1:
            raise ValueError(f"PreprocessSpec: bad fps={self.fps} or sample_rate={self.sample_rate}")
        if not self.segment_gap > -self.segment_duration or self.num_segments < 1:
            raise ValueError(f"PreprocessSpec: bad segment_gap={self.segment_gap} or num_segments={self.num_segments}")
        if self.fbank.sample_rate != self.sample_rate:
            raise ValueError(f"PreprocessSpec: fbank.sample_rate={self.fbank.sample_rate} differs from "
                             f"sample_rate={self.sample_rate}")
        if round(self.segment_duration * self.fps) < 1:
            raise ValueError(f"PreprocessSpec: a {self.segment_duration} s segment holds no frame at {self.fps} fps")

    # -- derived sizes -----------------------------------------------------------------------------------------
    @property
    def frames_per_segment(self) -> int:
        return round(self.segment_duration * self.fps)

    @property
    def samples_per_segment(self) -> int:
        return round(self.segment_duration * self.sample_rate)

    @property
    def audio_frames_per_segment(self) -> int:
        return num_frames(self.samples_per_segment, self.fbank)

    @property
    def clip(self) -> ClipSpec:
        """The clip layout (segments, duration, gap) as ``avssl.data.sampling.ClipSpec``, whose rule is shared."""
        return ClipSpec(self.num_segments, self.segment_duration, self.segment_gap)

    @property
    def segment_stride(self) -> float:
        return self.clip.segment_stride

    @property
    def clip_duration(self) -> float:
        return self.clip.clip_duration

    # -- times -------------------------------------------------------------------------------------------------
    def segment_starts(self, start: float, num_segments: int | None = None) -> list[float]:
        """``s_k = start + k * (segment_duration + segment_gap)`` for ``k < num_segments`` (default: the spec's)."""
        return self.clip.starts(start, num_segments)

    def frame_targets(self, starts: Sequence[float]) -> np.ndarray:
        """float64 ``[S, T]``: the instants ``s_k + j / fps`` whose on-screen frames make up each segment."""
        s = np.asarray(list(starts), np.float64)[:, None]
        return s + np.arange(self.frames_per_segment, dtype=np.float64)[None, :] / self.fps

    def first_sample(self, t: float) -> int:
        """Index on the file's sample grid of the first sample of a segment starting at ``t``."""
        return round(t * self.sample_rate)

    # -- (de)serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain values, with the derived sizes too (read by humans and by older loaders)."""
        h, w = self.frame_size
        d = {
            "num_segments": self.num_segments,
            "segment_duration": self.segment_duration,
            "segment_gap": self.segment_gap,
            "fps": self.fps,
            "frames_per_segment": self.frames_per_segment,
            "frame_size": h if h == w else [h, w],
            "video_mean": list(self.video_mean),
            "video_std": list(self.video_std),
            "sample_rate": self.sample_rate,
            "samples_per_segment": self.samples_per_segment,
            "fbank": dataclasses.asdict(self.fbank),
            "audio_frames_per_segment": self.audio_frames_per_segment,
            "num_mel_bins": self.fbank.num_mel_bins,
            "audio_valid_min_fraction": self.audio_valid_min_fraction,
            "video_input_shape": [3, self.frames_per_segment, h, w],
            "audio_input_shape": [1, self.audio_frames_per_segment, self.fbank.num_mel_bins],
        }
        return d

    @classmethod
    def from_dict(cls, pre: Mapping[str, Any]) -> PreprocessSpec:
        """The spec of a checkpoint's or bundle's ``preprocessing`` (format 1 bundles included: derived keys such
        as ``video_input_shape`` are ignored; a missing ``segment_gap`` is 0)."""
        missing = [k for k in ("segment_duration", "fps", "frame_size", "sample_rate") if k not in pre]
        if missing:
            raise ValueError(f"preprocessing settings lack {missing}")
        fields = {f.name for f in dataclasses.fields(FbankConfig)}
        fb = dict(pre.get("fbank") or {})
        unknown = sorted(set(fb) - fields)
        if unknown:
            raise ValueError(f"preprocessing.fbank has unknown field(s) {unknown}; FbankConfig accepts {sorted(fields)}")
        fb["sample_rate"] = int(pre["sample_rate"])
        size = pre["frame_size"]
        frame_size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))
        mean = tuple(float(x) for x in pre.get("video_mean", IMAGENET_MEAN))
        std = tuple(float(x) for x in pre.get("video_std", IMAGENET_STD))
        return cls(
            segment_duration=float(pre["segment_duration"]),
            fps=float(pre["fps"]),
            frame_size=frame_size,
            sample_rate=int(pre["sample_rate"]),
            fbank=FbankConfig(**fb),
            segment_gap=float(pre.get("segment_gap", 0.0) or 0.0),
            num_segments=int(pre.get("num_segments", 1) or 1),
            video_mean=mean,  # type: ignore[arg-type]
            video_std=std,  # type: ignore[arg-type]
            audio_valid_min_fraction=float(pre.get("audio_valid_min_fraction", 0.5)),
        )

    # -- model inputs ------------------------------------------------------------------------------------------
    def eval_video_transform(self) -> VideoTransform:
        return VideoTransform(size=self.frame_size, train=False, mean=self.video_mean, std=self.video_std)

    def audio_features(self, wave: Tensor, valid: Tensor | None = None,
                       mel: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Segments' samples ``[S, N]`` (and their validity) -> normalised log-mel ``[S, 1, F, M]`` and per-frame
        validity ``[S, F]``; frames without enough real audio are silence (0 after normalisation). ``mel``: the
        segments' raw log-mel ``[S, F, M]`` when already computed (stored in shards), instead of from ``wave``."""
        spec = normalize(log_mel(wave, self.fbank) if mel is None else mel, self.fbank).float()
        if valid is None:
            return spec.unsqueeze(1), torch.ones(spec.shape[0], spec.shape[1], dtype=torch.bool)
        frame_valid = valid_frames(valid, self.fbank, min_fraction=self.audio_valid_min_fraction)
        if not bool(frame_valid.all()):
            spec.mul_(frame_valid[:, :, None])
        return spec.unsqueeze(1), frame_valid


@dataclass
class SegmentCut:
    """Raw segments: frames uint8 [S, T, H, W, 3], frames_valid bool [S, T], audio float32 [S, N],
    audio_valid bool [S, N]."""

    frames: Tensor
    frames_valid: Tensor
    audio: Tensor
    audio_valid: Tensor



def clip_inputs(spec: PreprocessSpec, cut: SegmentCut, *, video_transform: Callable[[Tensor], Tensor] | None,
                audio_transform: Callable[[Tensor], Tensor] | None, generator: torch.Generator | None,
                modalities: Sequence[str] = ("video", "audio"), mel: Tensor | None = None) -> dict[str, Tensor]:
    """One clip's raw segments -> the model inputs of a sample: ``video`` float32 ``[S, 3, T, h, w]`` (or, from a
    ``VideoTransform(output="uint8")``, ``video_uint8`` uint8 ``[S, T, h, w, 3]`` for ``normalize`` later) and
    ``video_valid``, ``audio`` (normalised log-mel ``[S, 1, F, M]``, ``mel``: its raw log-mel when stored) and
    ``audio_valid``, for the ``modalities`` asked for. A ``VideoTransform`` draws one crop/flip for the whole clip
    from ``generator``, then a ``SpecAugment`` its masks (every dataset draws in this order)."""
    out: dict[str, Tensor] = {}
    if "video" in modalities:
        if isinstance(video_transform, VideoTransform):
            video = video_transform(cut.frames, generator=generator)
        elif video_transform is not None:
            video = video_transform(cut.frames)
        else:
            raise ValueError("clip_inputs: the video modality needs a video transform")
        out.update(video_entries(video, cut.frames_valid))
    if "audio" in modalities:
        feats, audio_valid = spec.audio_features(cut.audio, cut.audio_valid, mel=mel)  # [S, 1, F, M], [S, F]
        if isinstance(audio_transform, SpecAugment):
            feats = audio_transform(feats, generator=generator)
        elif audio_transform is not None:
            feats = audio_transform(feats)
        out["audio"], out["audio_valid"] = feats.float(), audio_valid
    return out


def video_key(dtype: torch.dtype) -> str:
    """The sample / batch key of a transform's video output of ``dtype``: ``video_uint8`` for uint8 frames
    ``[S, T, h, w, 3]`` (normalised once the batch has moved: ``AVDataModule.on_after_batch_transfer``), else
    ``video`` (float ``[S, 3, T, h, w]``). The one naming rule, also for clips written straight into a batch
    (``avssl.data.shards.PendingVideo``)."""
    return "video_uint8" if dtype == torch.uint8 else "video"


def video_entries(video: Tensor, valid: Tensor) -> dict[str, Tensor]:
    """A sample's video keys from a transform's output (:func:`video_key`), with ``video_valid`` ``[S, T]``."""
    if video.dtype == torch.uint8:
        return {video_key(video.dtype): video, "video_valid": valid}
    return {video_key(torch.float32): video.float(), "video_valid": valid}


def select_latest(times: Tensor | np.ndarray, targets: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """For each target instant, the index of the latest frame with ``time <= target`` (within ``EPS``), clamped to
    the first frame, and whether a frame was on screen (False before the first frame)."""
    t = np.asarray(times.detach().cpu() if isinstance(times, Tensor) else times, np.float64).ravel()
    tg = np.asarray(targets.detach().cpu() if isinstance(targets, Tensor) else targets, np.float64).ravel()
    idx = np.searchsorted(t, tg + EPS, side="right") - 1  # (NumPy: a tenth of torch's per-call cost here)
    return torch.from_numpy(np.maximum(idx, 0)), torch.from_numpy(idx >= 0)


def cut_video(spec: PreprocessSpec, frames: Tensor, times: Tensor, starts: Sequence[float],
              valid: Tensor | None = None, frame_step: float | None = None) -> tuple[Tensor, Tensor]:
    """Segments of decoded frames: uint8 ``[F, H, W, 3]`` with their times -> ``[S, T, H, W, 3]`` and validity
    ``[S, T]``. Frame ``j`` of segment ``k`` is the one on screen at ``starts[k] + j / fps``. A target after the
    last frame's display (``frame_step`` after its time, when known) repeats it, marked invalid."""
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"cut_video: expected frames [F, H, W, 3] with F > 0, got {tuple(frames.shape)}")
    times = torch.as_tensor(times, dtype=torch.float64).flatten()
    if times.numel() != frames.shape[0]:
        raise ValueError(f"cut_video: {times.numel()} frame times for {frames.shape[0]} frames")
    targets = spec.frame_targets(starts)
    idx, on = select_latest(times, targets)
    if frame_step is not None:
        on &= torch.as_tensor(targets.flatten()) < float(times[-1]) + frame_step - EPS
    if valid is not None:
        on &= torch.as_tensor(valid, dtype=torch.bool).flatten()[idx]
    s, t = targets.shape
    return frames[idx].reshape(s, t, *frames.shape[1:]), on.reshape(s, t)


def _audio_spans(spec: PreprocessSpec, length: int, audio_start: float, starts: Sequence[float]
                 ) -> list[tuple[int, int, int, int]]:
    """Where segment ``i`` lies in a waveform of ``length`` samples whose sample 0 sits at ``audio_start``: the
    segment's samples ``[a, b)`` are the waveform's ``[lo, hi)``; ``(i, a, lo, hi)`` for segments it overlaps."""
    n, base = spec.samples_per_segment, spec.first_sample(audio_start)
    spans = []
    for i, s in enumerate(starts):
        a0 = spec.first_sample(s) - base
        lo, hi = max(a0, 0), min(a0 + n, length)
        if hi > lo:
            spans.append((i, lo - a0, lo, hi))
    return spans


def cut_audio(spec: PreprocessSpec, audio: Tensor, audio_start: float, starts: Sequence[float],
              valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Segments of a waveform whose sample 0 sits at ``audio_start`` on the file clock -> float32 ``[S, N]`` and
    validity ``[S, N]``. Segment ``k`` is the ``N = round(segment_duration * sr)`` samples from file sample
    ``round(starts[k] * sr)``; parts the waveform does not cover are zero and invalid. Multi-channel audio
    ``[C, L]`` is averaged to mono."""
    audio = torch.as_tensor(audio)
    if audio.ndim == 2:
        audio = audio.float().mean(0)
    if audio.ndim != 1:
        raise ValueError(f"cut_audio: expected a waveform [L] or [C, L], got {tuple(audio.shape)}")
    n = spec.samples_per_segment
    wave = torch.zeros(len(starts), n, dtype=torch.float32)
    for i, a, lo, hi in _audio_spans(spec, audio.shape[0], audio_start, starts):
        wave[i, a : a + hi - lo] = audio[lo:hi]
    return wave, cut_audio_valid(spec, audio.shape[0], audio_start, starts, valid)


def cut_audio_valid(spec: PreprocessSpec, length: int, audio_start: float, starts: Sequence[float],
                    valid: Tensor | None = None) -> Tensor:
    """Only the validity ``[S, N]`` that :func:`cut_audio` cuts from a waveform of ``length`` samples (``valid``
    its per-sample mask, default all real): for features computed already (a shard's stored log-mel)."""
    ok = None if valid is None else torch.as_tensor(valid, dtype=torch.bool).cpu().numpy()
    mask = np.zeros((len(starts), spec.samples_per_segment), dtype=bool)  # (NumPy: cheaper small slice writes)
    for i, a, lo, hi in _audio_spans(spec, length, audio_start, starts):
        mask[i, a : a + hi - lo] = True if ok is None else ok[lo:hi]
    return torch.from_numpy(mask)


def audio_window(spec: PreprocessSpec, video_starts: Sequence[float],
                 audio_starts: Sequence[float] | None = None) -> tuple[float, float]:
    """``(start, duration)`` of one decode window that holds every segment of a clip, both modalities. Its start
    lies on the file's sample grid, so the cutter's sample offsets are exact integers."""
    a_starts = list(video_starts) if audio_starts is None else list(audio_starts)
    lo = min(min(video_starts), min(a_starts))
    hi = max(max(video_starts), max(a_starts)) + spec.segment_duration
    sr = spec.sample_rate
    a = max(math.floor(lo * sr + 1e-6), 0)  # the file starts at 0: earlier audio reads as missing anyway
    b = math.ceil(hi * sr - 1e-6)
    return a / sr, max(b - a, 1) / sr


def resample(waveform: Tensor, orig_rate: int, new_rate: int) -> Tensor:
    """Band-limited resampling of a mono waveform ``[L]`` (torchaudio's sinc interpolation)."""
    try:
        import torchaudio.functional as AF
    except Exception as e:  # noqa: BLE001 - torchaudio may fail to import beside some torch builds
        raise RuntimeError(
            f"audio at {orig_rate} Hz needs resampling to {new_rate} Hz but torchaudio is unavailable ({e}); "
            f"pass audio at {new_rate} Hz (e.g. avssl.read_av_window(..., sample_rate={new_rate}))"
        ) from e
    return AF.resample(waveform, orig_rate, new_rate)


def _count_segments(spec: PreprocessSpec, span: float) -> int:
    """How many whole segments (``segment_stride`` apart) fit in ``span`` seconds; at least one."""
    return max(1, math.floor((span - spec.segment_duration) / spec.segment_stride + 1e-6) + 1)


class Preprocessor:
    """Raw media -> model input with a :class:`PreprocessSpec`: the training cut in evaluation mode.

    ``pre`` is a checkpoint's or bundle's ``preprocessing`` dict (or a spec). Attributes kept for users:
    ``segment_seconds``, ``fps``, ``num_frames``, ``sample_rate``, ``num_samples``, ``fbank``, ``frame_size``.
    """

    def __init__(self, pre: Mapping[str, Any] | PreprocessSpec):
        self.spec = pre if isinstance(pre, PreprocessSpec) else PreprocessSpec.from_dict(pre)
        self.config = self.spec.to_dict()
        self.segment_seconds = self.spec.segment_duration
        self.segment_gap = self.spec.segment_gap
        self.fps = self.spec.fps
        self.num_frames = self.spec.frames_per_segment
        self.sample_rate = self.spec.sample_rate
        self.num_samples = self.spec.samples_per_segment
        self.fbank = self.spec.fbank
        self.frame_size = self.spec.frame_size
        self.video_mean, self.video_std = self.spec.video_mean, self.spec.video_std
        self._transform = self.spec.eval_video_transform()

    def video(self, frames: Tensor, *, fps: float | None = None, times: Tensor | None = None,
              start: float | None = None, num_segments: int | None = None) -> Tensor:
        """uint8 frames ``[F, H, W, 3]`` (with ``fps`` or their ``times`` in seconds) -> ``[N, 3, T, h, w]``.

        Segment ``k`` starts at ``start + k * (segment_duration + segment_gap)`` (``start`` default: the first
        frame's time; ``num_segments`` default: as many as the frames span) and frame ``j`` of it is the frame on
        screen at ``s_k + j / fps_model``: the dataset's rule, so both give the same tensors for the same frames.
        """
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
            raise ValueError(f"expected uint8 frames [T, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
        if (fps is None) == (times is None):
            raise ValueError("give exactly one of fps= or times= with the frames")
        if times is None:
            t = torch.arange(frames.shape[0], dtype=torch.float64) / float(fps)  # type: ignore[arg-type]
            step = 1.0 / float(fps)  # type: ignore[arg-type]
        else:
            t = torch.as_tensor(times, dtype=torch.float64).flatten()
            step = float(t[-1] - t[-2]) if t.numel() > 1 else 1.0 / self.fps
        if t.numel() != frames.shape[0]:
            raise ValueError(f"{t.numel()} frame times for {frames.shape[0]} frames")
        if bool((t[1:] < t[:-1]).any()):
            raise ValueError("frame times must be non-decreasing")
        t0 = float(t[0]) if start is None else float(start)
        n = _count_segments(self.spec, float(t[-1]) + step - t0) if num_segments is None else int(num_segments)
        return self.video_at(frames, t, self.spec.segment_starts(t0, n))

    def video_at(self, frames: Tensor, times: Tensor, starts: Sequence[float]) -> Tensor:
        """Model input ``[len(starts), 3, T, h, w]`` of the segments starting at ``starts`` (any instants on the
        frames' clock), cut from uint8 frames ``[F, H, W, 3]`` with sorted ``times``."""
        clips, _ = cut_video(self.spec, torch.as_tensor(frames), times, starts)
        return self._transform(clips)

    def audio_at(self, audio: Tensor, audio_start: float, starts: Sequence[float],
                 valid: Tensor | None = None) -> Tensor:
        """Log-mel ``[len(starts), 1, F, M]`` of the segments starting at ``starts`` of a mono waveform at the
        model's rate whose sample 0 sits at ``audio_start`` (uncovered parts and invalid audio are silence)."""
        ok = torch.ones(audio.shape[-1], dtype=torch.bool) if valid is None else valid
        wave, mask = cut_audio(self.spec, audio, float(audio_start), starts, ok)
        return self.spec.audio_features(wave, mask)[0]

    def audio(self, waveform: Tensor, sample_rate: int, *, start: float | None = None,
              num_segments: int | None = None, valid: Tensor | None = None, audio_start: float = 0.0) -> Tensor:
        """Waveform ``[L]`` or ``[C, L]`` (float in [-1, 1]) at ``sample_rate`` -> log-mel ``[N, 1, F, M]``.

        Sample 0 sits at ``audio_start`` (seconds; default 0). Segment ``k`` is the model's segment length of
        samples from file sample ``round(s_k * sr)``, ``s_k = start + k * (segment_duration + segment_gap)``
        (``start`` default: ``audio_start``; ``num_segments`` default: as many as the waveform spans, at least
        one). ``valid`` (bool ``[L]``, default all True) marks real audio: spectrogram frames with too little of
        it (and padding past the waveform) are silence, exactly as in training. Multi-channel audio is averaged
        to mono and other rates are resampled to the model's.
        """
        wav = torch.as_tensor(waveform)
        if not wav.is_floating_point() or wav.ndim not in (1, 2) or wav.shape[-1] == 0:
            raise ValueError(f"expected a float waveform [S] or [C, S], got {wav.dtype} {tuple(wav.shape)}")
        wav = wav.float()
        if wav.ndim == 2:
            wav = wav.mean(dim=0)
        ok = torch.ones(wav.shape[0], dtype=torch.bool) if valid is None else torch.as_tensor(valid, dtype=torch.bool)
        if ok.shape != wav.shape:
            raise ValueError(f"valid has shape {tuple(ok.shape)}, the waveform {tuple(wav.shape)}")
        if int(sample_rate) != self.sample_rate:
            n_new = round(wav.shape[0] * self.sample_rate / int(sample_rate))
            wav = resample(wav, int(sample_rate), self.sample_rate)[:n_new]
            src = (torch.arange(wav.shape[0]) * int(sample_rate)) // self.sample_rate
            ok = ok[src.clamp(max=ok.shape[0] - 1)]
        t0 = float(audio_start) if start is None else float(start)
        if num_segments is None:
            num_segments = _count_segments(self.spec, float(audio_start) + wav.shape[0] / self.sample_rate - t0)
        return self.audio_at(wav, float(audio_start), self.spec.segment_starts(t0, num_segments), ok)


def decode_size(transform: object, height: int, width: int) -> int | None:
    """The short side to scale pictures of ``height x width`` (as ``transform`` receives them: displayed and
    corrected) to inside the decoder (swscale, before RGB), such that ``transform`` gives the same output within
    interpolation tolerance: the smallest size at which every crop box the transform can draw still spans at
    least its output size along both axes, so that nothing is scaled up that the full picture would have scaled
    down. ``None`` (decode at full size) when that would not shrink the picture, or ``transform`` is not a
    ``VideoTransform`` (its resize/crop policy is unknown).

    - evaluation (``train=False``): scale until the output just fits (a square output: short side = its size);
    - training (random resized crop, area fraction ``scale``, aspect ``ratio``): the smallest box it can draw is
      ``sqrt(scale[0] * H * W / ratio[1])`` high and ``sqrt(scale[0] * H * W * ratio[0])`` wide, and its
      fallback (a centre crop clamped to the aspect range) is also covered.
    """
    if not isinstance(transform, VideoTransform) or height < 1 or width < 1:
        return None
    out_h, out_w = transform.size
    if not transform.train:
        factor = max(out_h / height, out_w / width)
    else:
        area = height * width
        s0, (r0, r1) = transform.scale[0], transform.ratio
        box_h, box_w = math.sqrt(s0 * area / r1), math.sqrt(s0 * area * r0)
        in_ratio = width / height  # the fallback box of VideoTransform.sample_params
        if in_ratio < r0:
            fb_h, fb_w = width / r0, float(width)
        elif in_ratio > r1:
            fb_h, fb_w = float(height), height * r1
        else:
            fb_h, fb_w = float(height), float(width)
        factor = max(out_h / min(box_h, height), out_w / min(box_w, width), out_h / fb_h, out_w / fb_w)
    short = min(height, width)
    size = math.ceil(factor * short - 1e-9)
    return size if size < short else None
