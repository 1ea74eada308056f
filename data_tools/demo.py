"""Deterministic demo media: small real H.264/AAC MP4 files in which sound and picture are tied together.

Each video holds a stream of *events* (every 0.15-0.4 s, seeded). At an event a tone starts and a shape appears
or changes; between events the tone decays and the shape shrinks and dims with the same envelope. The tone's
log-frequency sets the shape's height in the frame (high pitch = high up), its loudness sets size and brightness.
A video's class fixes the event type: shape, colour and timbre (sine/circle, square wave/square, chirp/triangle,
noise burst/ring). So any 0.5 s moment is identifiable from either modality and a linear probe has labels.
See docs/demo_data.md.

Optional transfer labels (off by default; the default dataset and its cache key are unchanged, docs/transfer.md):
``pitch_bands=N`` confines each video's event pitches to one of N log-frequency bands (manifest column
``pitch_band``: what the sound says, which the picture shows only as the shape's height), and ``distractors=True``
adds a large, bright, moving object that makes no sound (column ``distractor``: its motion, a visual-only control
label that no audio encoder can know).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avssl.data.manifest import ManifestRow, write_manifest

DEMO_VERSION = 1
"""Bumped whenever the generated content changes (part of the cache key)."""

CLASS_NAMES: tuple[str, ...] = ("sine_circle", "square_square", "chirp_triangle", "noise_ring")
_CLASS_RGB = np.array(
    [[1.0, 0.85, 0.2], [0.25, 0.8, 1.0], [1.0, 0.35, 0.6], [0.5, 1.0, 0.4]], dtype=np.float32
)  # class colours at full brightness
F_LOW, F_HIGH = 220.0, 1760.0  # event base frequencies, log-uniform (3 octaves)
CHIRP_RATIO, CHIRP_TIME = 1.5, 0.2  # chirp glides up by this ratio over this many seconds
ATTACK, DECAY = 0.01, 0.15  # envelope attack (linear) and exponential decay time constant, seconds
DISTRACTOR_NAMES: tuple[str, ...] = ("drift_right", "drift_left", "drift_down", "drift_up")
"""Visual distractor kinds (its motion): the ``distractor`` label of ``distractors=True``."""
OPTIONAL_DEFAULTS: dict[str, object] = {"pitch_bands": 0, "distractors": False}
"""Generator options that are left out of the cache key at these (default) values, so that adding them kept the
default datasets' keys (and folders) as they were."""
LABELS_VERSION = 2
"""Bumped whenever what the optional labels generate changes (in the cache key only when one of them is set)."""


@dataclass(frozen=True)
class Event:
    onset: float  # seconds on the file clock
    freq: float  # base frequency, Hz
    amp: float  # peak loudness in (0, 1]
    x: float  # horizontal centre in [0, 1] (carries no sound; a visual distractor)


def make_events(rng: np.random.Generator, duration: float, min_gap: float, max_gap: float,
                f_low: float = F_LOW, f_high: float = F_HIGH) -> list[Event]:
    """Random event stream covering ``[0, duration)``: first onset in [0, 0.1), gaps uniform in [min_gap, max_gap],
    base frequencies log-uniform in ``[f_low, f_high]``."""
    events: list[Event] = []
    t = float(rng.uniform(0.0, 0.1))
    while t < duration:
        freq = float(np.exp(rng.uniform(np.log(f_low), np.log(f_high))))
        events.append(Event(onset=t, freq=freq, amp=float(rng.uniform(0.45, 1.0)), x=float(rng.uniform(0.2, 0.8))))
        t += float(rng.uniform(min_gap, max_gap))
    return events


def _envelope(tau: np.ndarray, amp: float) -> np.ndarray:
    """Envelope at ``tau`` seconds after an onset (tau >= 0)."""
    return amp * np.minimum(1.0, tau / ATTACK) * np.exp(-tau / DECAY)


def _inst_freq(cls: int, freq: float, tau: np.ndarray) -> np.ndarray:
    """Instantaneous frequency of an event of class ``cls`` at ``tau`` seconds after onset."""
    if CLASS_NAMES[cls] == "chirp_triangle":
        return freq * (1.0 + (CHIRP_RATIO - 1.0) * np.minimum(tau, CHIRP_TIME) / CHIRP_TIME)
    return np.full_like(tau, freq)


def _tone(cls: int, ev: Event, tau: np.ndarray, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-level waveform of one event (before the envelope)."""
    name = CLASS_NAMES[cls]
    if name == "sine_circle":
        return np.sin(2 * np.pi * ev.freq * tau)
    if name == "square_square":  # band-limited square wave: odd harmonics below 7 kHz
        out = np.zeros_like(tau)
        k = 1
        while k * ev.freq < 7000.0:
            out += np.sin(2 * np.pi * k * ev.freq * tau) / k
            k += 2
        return out * (4 / np.pi) * 0.6
    if name == "chirp_triangle":
        phase = 2 * np.pi * np.cumsum(_inst_freq(cls, ev.freq, tau)) / sample_rate
        return np.sin(phase)
    # noise_ring: band-pass noise, +-25 % around the base frequency
    noise = rng.standard_normal(len(tau))
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(len(tau), 1.0 / sample_rate)
    spec[(f < ev.freq * 0.75) | (f > ev.freq * 1.25)] = 0
    band = np.fft.irfft(spec, n=len(tau))
    return band / (np.std(band) * 2.5 + 1e-8)


def synth_audio(cls: int, events: Sequence[Event], duration: float, sample_rate: int, seed: int) -> np.ndarray:
    """Mono float32 waveform of the event stream; sample k is at time k / sample_rate."""
    n = int(round(duration * sample_rate))
    rng = np.random.default_rng(seed)
    wave = rng.standard_normal(n).astype(np.float64) * 0.003  # faint noise floor
    for i, ev in enumerate(events):
        a = int(np.ceil(ev.onset * sample_rate))
        b = n if i + 1 == len(events) else int(np.ceil(events[i + 1].onset * sample_rate))
        if b <= a:
            continue
        tau = np.arange(a, b) / sample_rate - ev.onset
        wave[a:b] += 0.5 * _envelope(tau, ev.amp) * _tone(cls, ev, tau, sample_rate, rng)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _pitch_to_y(freq: np.ndarray | float, size: int) -> np.ndarray:
    lo, hi = np.log(F_LOW), np.log(F_HIGH * CHIRP_RATIO)
    u = (np.log(freq) - lo) / (hi - lo)  # 0 (low) .. 1 (high)
    margin = 0.15 * size
    return margin + (1.0 - u) * (size - 2 * margin)


def pitch_band_names(n: int) -> tuple[str, ...]:
    """Names of ``n`` pitch bands, low to high (``low, mid, high`` for 3)."""
    if n < 1:
        raise ValueError(f"pitch_bands must be >= 1 to name bands, got {n}")
    if n == 2:
        return ("low", "high")
    if n == 3:
        return ("low", "mid", "high")
    return tuple(f"band{j}" for j in range(n))


def pitch_band_range(band: int, n: int) -> tuple[float, float]:
    """Base-frequency range of band ``band`` of ``n`` equal log-frequency bands of ``[F_LOW, F_HIGH]``."""
    lo, hi = np.log(F_LOW), np.log(F_HIGH)
    return float(np.exp(lo + (hi - lo) * band / n)), float(np.exp(lo + (hi - lo) * (band + 1) / n))


@dataclass(frozen=True)
class Distractor:
    """A large soundless object drifting across the frame (``kind`` in :data:`DISTRACTOR_NAMES`), pulsing in
    brightness at its own rate, unrelated to the events."""

    kind: int
    rgb: tuple[float, float, float]
    phase: float  # position along its path at t = 0, in [0, 1)
    speed: float  # path lengths per second
    pulse_hz: float
    across: float  # position across its path, in [0.25, 0.75] of the frame


def make_distractor(rng: np.random.Generator, kind: int) -> Distractor:
    rgb = tuple(float(c) for c in rng.uniform(0.3, 1.0, size=3))
    return Distractor(kind=kind, rgb=rgb, phase=float(rng.uniform()), speed=float(rng.uniform(0.15, 0.3)),  # type: ignore[arg-type]
                      pulse_hz=float(rng.uniform(0.7, 2.5)), across=float(rng.uniform(0.25, 0.75)))


def _draw_distractor(img: np.ndarray, d: Distractor, t: float, xx: np.ndarray, yy: np.ndarray, size: int) -> None:
    """Paint the distractor at time ``t`` into ``img`` [size, size, 3] (in place): a bar of a third of the frame."""
    u = (d.phase + d.speed * t) % 1.0
    # always in view: it drifts from 10 % to 90 % of the frame, then starts over at the other side
    along = 0.1 + 0.8 * (u if DISTRACTOR_NAMES[d.kind] in ("drift_right", "drift_down") else 1.0 - u)
    horizontal = DISTRACTOR_NAMES[d.kind] in ("drift_right", "drift_left")
    cx, cy = (along, d.across) if horizontal else (d.across, along)
    half_long, half_short = 0.22 * size, 0.09 * size  # long side across the motion
    hx, hy = (half_short, half_long) if horizontal else (half_long, half_short)
    mask = (np.abs(xx - cx * size) <= hx) & (np.abs(yy - cy * size) <= hy)
    level = 0.55 + 0.45 * np.sin(2 * np.pi * d.pulse_hz * t)
    img[mask] = np.asarray(d.rgb, dtype=np.float32) * level


def render_video(cls: int, events: Sequence[Event], duration: float, fps: int, size: int, seed: int,
                 distractor: Distractor | None = None) -> np.ndarray:
    """uint8 [T, size, size, 3] frames; frame k shows the scene at time k / fps (the distractor, if any, behind
    the event's shape)."""
    rng = np.random.default_rng(seed)
    num = int(round(duration * fps))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    tint = rng.uniform(0.05, 0.2, size=3).astype(np.float32)
    ramp = (0.6 + 0.4 * xx / size)[..., None]
    background = tint[None, None, :] * ramp  # static, per-video
    onsets = np.array([e.onset for e in events])
    colour = _CLASS_RGB[cls]
    name = CLASS_NAMES[cls]
    frames = np.empty((num, size, size, 3), dtype=np.uint8)
    for k in range(num):
        t = k / fps
        img = background.copy()
        if distractor is not None:
            _draw_distractor(img, distractor, t, xx, yy, size)
        i = int(np.searchsorted(onsets, t, side="right")) - 1
        if i >= 0:
            ev = events[i]
            tau = np.array([t - ev.onset])
            env = float(_envelope(tau, ev.amp)[0])
            cy = float(_pitch_to_y(_inst_freq(cls, ev.freq, tau), size)[0])
            cx = ev.x * size
            r = size * (0.05 + 0.11 * env)
            dx, dy = xx - cx, yy - cy
            if name == "sine_circle":
                mask = dx**2 + dy**2 <= r**2
            elif name == "square_square":
                mask = (np.abs(dx) <= r) & (np.abs(dy) <= r)
            elif name == "chirp_triangle":
                mask = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
            else:
                d2 = dx**2 + dy**2
                mask = (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)
            img[mask] = colour * (0.2 + 0.8 * env)
        frames[k] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: str | os.PathLike[str], frames: np.ndarray, fps: int, audio: np.ndarray, sample_rate: int) -> None:
    """Encode uint8 [T, H, W, 3] frames (H.264, yuv420p, 1 s GOP) and mono audio (AAC) into an MP4 file."""
    height, width = frames.shape[1:3]
    with av.open(os.fspath(path), mode="w", format="mp4") as container:
        vs = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "20", "threads": "1"})
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.gop_size = fps
        aus = container.add_stream("aac", rate=sample_rate, layout="mono")
        aus.bit_rate = 48000
        for k, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = k, Fraction(1, fps)
            for pkt in vs.encode(vf):
                container.mux(pkt)
        for pkt in vs.encode():
            container.mux(pkt)
        chunk = 1024
        for a in range(0, len(audio), chunk):
            af = av.AudioFrame.from_ndarray(audio[None, a : a + chunk].copy(), format="flt", layout="mono")
            af.sample_rate, af.pts, af.time_base = sample_rate, a, Fraction(1, sample_rate)
            for pkt in aus.encode(af):
                container.mux(pkt)
        for pkt in aus.encode():
            container.mux(pkt)


def make_demo_dataset(
    root: str | os.PathLike[str],
    *,
    num_videos: int = 80,
    duration: float = 8.0,
    seed: int = 0,
    size: int = 96,
    fps: int = 24,
    sample_rate: int = 16000,
    val_fraction: float = 0.2,
    min_gap: float = 0.15,
    max_gap: float = 0.4,
    pitch_bands: int = 0,
    distractors: bool = False,
) -> Path:
    """Write ``num_videos`` demo MP4s under ``root/<class>/<id>.mp4`` plus ``manifest.csv`` and ``events.json``.

    Classes are balanced (video i has class ``i % 4``); within each class a seeded ``val_fraction`` goes to the
    val split. Everything is deterministic from ``seed``. Returns the manifest path.

    Transfer labels (both off by default, leaving the output byte-identical to a generator without them):
    ``pitch_bands=N`` (N >= 2) draws every event pitch of a video from one of N equal log-frequency bands of
    [220, 1760] Hz, assigned balanced within each split and independently of the class; the manifest gets the
    column ``pitch_band``. ``distractors=True`` adds to every video a soundless bright bar drifting across the frame
    in one of four directions (balanced within each split, independent of class and band), pulsing at its own rate;
    the column ``distractor`` names the direction.
    """
    if num_videos < 1 or duration <= 0 or not 0 <= val_fraction < 1 or not 0 < min_gap <= max_gap:
        raise ValueError(
            f"make_demo_dataset: bad parameters num_videos={num_videos} duration={duration} "
            f"val_fraction={val_fraction} min_gap={min_gap} max_gap={max_gap}"
        )
    if int(pitch_bands) != pitch_bands or pitch_bands < 0 or pitch_bands == 1:
        raise ValueError(f"make_demo_dataset: pitch_bands must be 0 (off) or an integer >= 2, got {pitch_bands}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_classes = len(CLASS_NAMES)
    # stratified split: shuffle each class, then deal val videos round-robin over the classes
    n_val = int(round(num_videos * val_fraction))
    if val_fraction > 0 and num_videos >= 2:
        n_val = max(n_val, 1)
    shuffled = [list(rng.permutation(range(c, num_videos, n_classes))) for c in range(n_classes)]
    order = [int(m[j]) for j in range(max(map(len, shuffled))) for m in shuffled if j < len(m)]
    val_ids = set(order[:n_val])
    video_seeds = rng.integers(0, 2**31 - 1, size=num_videos)
    # the optional labels draw from their own generators: the default dataset's random streams stay untouched
    splits = [sorted(val_ids), sorted(set(range(num_videos)) - val_ids)]  # balanced within each split
    bands = _balanced(np.random.default_rng([seed, 1]), splits, num_videos, int(pitch_bands)) if pitch_bands else None
    kinds = (_balanced(np.random.default_rng([seed, 2]), splits, num_videos, len(DISTRACTOR_NAMES))
             if distractors else None)
    rows: list[ManifestRow] = []
    all_events: dict[str, object] = {}
    duration = round(duration * fps) / fps  # whole number of frames
    for i in range(num_videos):
        cls = i % n_classes
        vid_rng = np.random.default_rng(int(video_seeds[i]))
        extra: dict[str, str] = {}
        f_range = (F_LOW, F_HIGH)
        if bands is not None:
            f_range = pitch_band_range(int(bands[i]), int(pitch_bands))
            extra["pitch_band"] = pitch_band_names(int(pitch_bands))[int(bands[i])]
        events = make_events(vid_rng, duration, min_gap, max_gap, *f_range)
        sub_seed = int(vid_rng.integers(0, 2**31 - 1))
        distractor = None
        if kinds is not None:
            distractor = make_distractor(np.random.default_rng([int(video_seeds[i]), 2]), int(kinds[i]))
            extra["distractor"] = DISTRACTOR_NAMES[distractor.kind]
        audio = synth_audio(cls, events, duration, sample_rate, sub_seed)
        frames = render_video(cls, events, duration, fps, size, sub_seed + 1, distractor)
        rel = f"{CLASS_NAMES[cls]}/{i:04d}.mp4"
        (root / CLASS_NAMES[cls]).mkdir(exist_ok=True)
        write_mp4(root / rel, frames, fps, audio, sample_rate)
        vid = f"{i:04d}"
        rows.append(
            ManifestRow(
                path=rel, start=0.0, end=duration, split="val" if i in val_ids else "train",
                duration=duration, has_audio=True, has_video=True, fps=float(fps), width=size, height=size,
                sample_rate=sample_rate, channels=1, rotation=0, codec_video="h264", codec_audio="aac",
                meta={"video_id": vid, "label": CLASS_NAMES[cls], **extra},
            )
        )
        all_events[vid] = {"path": rel, "label": CLASS_NAMES[cls], **extra, "events": [asdict(e) for e in events]}
    with open(root / "events.json", "w") as f:
        json.dump(all_events, f, indent=1)
    manifest = root / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest


def _balanced(rng: np.random.Generator, groups: Sequence[Sequence[int]], n: int, k: int) -> np.ndarray:
    """Values in ``range(k)`` for ids ``0..n-1``: within each group of ids as equal in count as possible, in a
    seeded random order (so a probe's test split is balanced too)."""
    out = np.zeros(n, dtype=np.int64)
    for ids in groups:
        out[list(ids)] = rng.permutation(np.arange(len(ids)) % k)
    return out


def default_cache_dir() -> Path:
    """``$AVSSL_CACHE/demo`` if set, else ``~/.cache/avssl/demo``."""
    base = os.environ.get("AVSSL_CACHE")
    return Path(base) / "demo" if base else Path.home() / ".cache" / "avssl" / "demo"


def ensure_demo_dataset(cache_dir: str | os.PathLike[str] | None = None, **params: object) -> Path:
    """Return the manifest of a cached demo dataset with these ``make_demo_dataset`` parameters, making it once.

    The folder is named by a hash of the parameters and ``DEMO_VERSION``; it is built in a temporary folder and
    renamed into place, so concurrent callers and interrupted runs never see a partial dataset.
    """
    bound = inspect.signature(make_demo_dataset).bind("-", **params)  # TypeError on an unknown parameter
    bound.apply_defaults()
    # defaults spelled out or not: same key; options added later are keyed only when set (old keys unchanged)
    full = {k: v for k, v in bound.arguments.items()
            if k != "root" and not (k in OPTIONAL_DEFAULTS and v == OPTIONAL_DEFAULTS[k])}
    if set(full) & set(OPTIONAL_DEFAULTS):
        full["labels_version"] = LABELS_VERSION
    key_src = json.dumps({"version": DEMO_VERSION, **full}, sort_keys=True, default=str)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = base / f"demo-{key}"
    manifest = target / "manifest.csv"
    if manifest.is_file():
        return manifest
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".demo-{key}-", dir=base))
    try:
        make_demo_dataset(tmp, **params)  # type: ignore[arg-type]
        with open(tmp / "params.json", "w") as f:
            f.write(key_src)
        try:
            os.rename(tmp, target)
        except OSError:
            if not manifest.is_file():  # the target exists but is not a finished dataset
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


__all__ = [
    "CLASS_NAMES",
    "DEMO_VERSION",
    "DISTRACTOR_NAMES",
    "Distractor",
    "Event",
    "LABELS_VERSION",
    "OPTIONAL_DEFAULTS",
    "make_distractor",
    "pitch_band_names",
    "pitch_band_range",
    "default_cache_dir",
    "ensure_demo_dataset",
    "make_demo_dataset",
    "make_events",
    "render_video",
    "synth_audio",
    "write_mp4",
]
