"""Deterministic demo media: small real H.264/AAC MP4 files in which sound and picture are tied together.

Each video holds a stream of *events* (every 0.15-0.4 s, seeded). At an event a tone starts and a shape appears
or changes; between events the tone decays and the shape shrinks and dims with the same envelope. The tone's
log-frequency sets the shape's height in the frame (high pitch = high up), its loudness sets size and brightness.
A video's class fixes the event type: shape, colour and timbre (sine/circle, square wave/square, chirp/triangle,
noise burst/ring). So any 0.5 s moment is identifiable from either modality and a linear probe has labels.
See docs/demo_data.md.
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


@dataclass(frozen=True)
class Event:
    onset: float  # seconds on the file clock
    freq: float  # base frequency, Hz
    amp: float  # peak loudness in (0, 1]
    x: float  # horizontal centre in [0, 1] (carries no sound; a visual distractor)


def make_events(rng: np.random.Generator, duration: float, min_gap: float, max_gap: float) -> list[Event]:
    """Random event stream covering ``[0, duration)``: first onset in [0, 0.1), gaps uniform in [min_gap, max_gap]."""
    events: list[Event] = []
    t = float(rng.uniform(0.0, 0.1))
    while t < duration:
        freq = float(np.exp(rng.uniform(np.log(F_LOW), np.log(F_HIGH))))
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


def render_video(cls: int, events: Sequence[Event], duration: float, fps: int, size: int, seed: int) -> np.ndarray:
    """uint8 [T, size, size, 3] frames; frame k shows the scene at time k / fps."""
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
) -> Path:
    """Write ``num_videos`` demo MP4s under ``root/<class>/<id>.mp4`` plus ``manifest.csv`` and ``events.json``.

    Classes are balanced (video i has class ``i % 4``); within each class a seeded ``val_fraction`` goes to the
    val split. Everything is deterministic from ``seed``. Returns the manifest path.
    """
    if num_videos < 1 or duration <= 0 or not 0 <= val_fraction < 1 or not 0 < min_gap <= max_gap:
        raise ValueError(
            f"make_demo_dataset: bad parameters num_videos={num_videos} duration={duration} "
            f"val_fraction={val_fraction} min_gap={min_gap} max_gap={max_gap}"
        )
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
    rows: list[ManifestRow] = []
    all_events: dict[str, object] = {}
    duration = round(duration * fps) / fps  # whole number of frames
    for i in range(num_videos):
        cls = i % n_classes
        vid_rng = np.random.default_rng(int(video_seeds[i]))
        events = make_events(vid_rng, duration, min_gap, max_gap)
        sub_seed = int(vid_rng.integers(0, 2**31 - 1))
        audio = synth_audio(cls, events, duration, sample_rate, sub_seed)
        frames = render_video(cls, events, duration, fps, size, sub_seed + 1)
        rel = f"{CLASS_NAMES[cls]}/{i:04d}.mp4"
        (root / CLASS_NAMES[cls]).mkdir(exist_ok=True)
        write_mp4(root / rel, frames, fps, audio, sample_rate)
        vid = f"{i:04d}"
        rows.append(
            ManifestRow(
                path=rel, start=0.0, end=duration, split="val" if i in val_ids else "train",
                duration=duration, has_audio=True, has_video=True, fps=float(fps), width=size, height=size,
                sample_rate=sample_rate, channels=1, rotation=0, codec_video="h264", codec_audio="aac",
                meta={"video_id": vid, "label": CLASS_NAMES[cls]},
            )
        )
        all_events[vid] = {"path": rel, "label": CLASS_NAMES[cls], "events": [asdict(e) for e in events]}
    with open(root / "events.json", "w") as f:
        json.dump(all_events, f, indent=1)
    manifest = root / "manifest.csv"
    write_manifest(manifest, rows)
    return manifest


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
    full = {k: v for k, v in bound.arguments.items() if k != "root"}  # defaults spelled out or not: same key
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
    "Event",
    "default_cache_dir",
    "ensure_demo_dataset",
    "make_demo_dataset",
    "make_events",
    "render_video",
    "synth_audio",
    "write_mp4",
]
