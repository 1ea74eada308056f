"""A second media generator, with other statistics than the demo's (``avssl.data_tools.demo``): the learning
benchmark's data (``benchmarks/bench_learning.py``, docs/results.md "Learning benchmark on other media").

What differs from the demo:

- **sparser, longer events**: one event stream per recording with about one onset per second (the demo: 3.6 per
  second), each event lasting 0.25-0.8 s with silence between events (0.15-0.8 s). During an event a visible
  source sounds a harmonic tone whose pitch glides along a smooth random contour and whose loudness swells at
  2-5 Hz; the source's shape rises with the pitch and grows and brightens with the loudness;
- **several sources per recording**: one or two visible sources, each with its own place, colour and pitch range,
  and a timbre from the recording's family (the label: the first sub-folder);
- **visual distractors**: a decoy that looks like a source and lights up at random times without a sound, a
  soundless object bouncing around the frame, a textured background panning slowly (a head camera's drift) and
  a slow global flicker;
- **auditory distractors**: off-screen sounds (tone bursts of other timbres, nothing on screen), and a continuous
  background noise whose level drifts;
- **several containers, codecs, frame rates, frame sizes and sample rates** (:data:`CONTAINERS`: MP4 H.264/AAC,
  Matroska H.264/FLAC, WebM VP9/Opus, QuickTime H.264/AAC, AVI MPEG-4/PCM; 15-30 fps, 16-48 kHz; 4:3 and square
  frames), dealt round-robin over the recordings.

Everything is a pure function of ``(seed, index)``: the same arguments give byte-identical files (encoders run
single-threaded with bit-exact flags, H.264 through ``avssl.data.encoding``, the muxers with ``+bitexact``).
Event times are on the file clock (seconds from the start of the file) and are written to ``events.json``.
Console script: ``avssl-synth OUT`` (``avssl.cli.synth``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import cast

import av
import numpy as np
from av.audio.stream import AudioStream
from av.video.stream import VideoStream

from avssl.data.encoding import add_h264_stream, audio_frame

SYNTH_VERSION = 1
"""Bumped whenever the generated content changes (recorded in ``params.json``)."""

FAMILIES: tuple[str, ...] = ("harmonic", "hollow", "bright", "breathy")
"""Timbre families (the label, as the first sub-folder): sawtooth-like partials (disc), odd partials (square),
many strong upper partials (triangle), partials plus noise (ring)."""
_SHAPES = {"harmonic": "disc", "hollow": "square", "bright": "triangle", "breathy": "ring"}

EVENT_DURATION = (0.25, 0.8)  # seconds an event sounds
EVENT_GAP = (0.15, 0.8)  # silence between the end of an event and the next onset
ATTACK, RELEASE = 0.015, 0.06  # audio envelope, seconds
VISUAL_RELEASE = 0.1  # the picture lets go a little slower than the sound, so an 8 fps sampling still sees it
DECOY_RATE, DECOY_DURATION = 0.5, (0.15, 0.5)  # soundless decoy flashes per second, their length
OFFSCREEN_RATE, OFFSCREEN_DURATION = 0.6, (0.08, 0.35)  # off-screen sounds per second, their length


@dataclass(frozen=True)
class ContainerSpec:
    """How one recording is stored: container, codecs, frame rate, frame size, audio sample rate."""

    name: str
    ext: str
    format: str
    vcodec: str
    acodec: str
    fps: int
    sample_rate: int
    width: int
    height: int


CONTAINERS: tuple[ContainerSpec, ...] = (
    ContainerSpec("mp4", ".mp4", "mp4", "h264", "aac", 25, 44100, 160, 120),
    ContainerSpec("mkv", ".mkv", "matroska", "h264", "flac", 30, 22050, 128, 96),
    ContainerSpec("webm", ".webm", "webm", "vp9", "opus", 24, 48000, 144, 108),
    ContainerSpec("mov", ".mov", "mov", "h264", "aac", 15, 32000, 120, 120),
    ContainerSpec("avi", ".avi", "avi", "mpeg4", "pcm_s16le", 20, 16000, 160, 120),
)
"""Dealt round-robin: recording ``i`` is stored as ``CONTAINERS[i % len(CONTAINERS)]`` (of those selected).

No MP3: in AVI nothing signals LAME's encoder + decoder delay (1105 samples), so the decoded audio of an
MPEG-4/MP3 AVI written this way lags its picture by 69 ms at 16 kHz (measured with ``read_av_window``); the
events would not be where ``events.json`` says."""


@dataclass(frozen=True)
class Source:
    """A visible sound source: home position (fractions of the frame), colour, base frequency, partial weights."""

    x: float
    y: float
    rgb: tuple[float, float, float]
    f0: float
    partials: tuple[float, ...]


@dataclass(frozen=True)
class SynthEvent:
    """A sound on the file clock. ``source`` indexes the recording's sources; -1: off-screen (nothing visible),
    -2: the soundless decoy (visible, silent). Pitch contour: ``glide * sin(2 pi glide_hz tau + glide_phase)``
    octaves; loudness ``level * (1 + 0.35 sin(2 pi swell_hz tau + swell_phase))`` inside the envelope."""

    onset: float
    duration: float
    source: int
    level: float
    glide: float
    glide_hz: float
    glide_phase: float
    swell_hz: float
    swell_phase: float
    f0: float = 0.0  # off-screen sounds: their own base frequency (visible sources use the source's)


@dataclass(frozen=True)
class Scene:
    """Everything a recording shows and sounds, drawn from its seed."""

    family: str
    duration: float
    sources: tuple[Source, ...]
    events: tuple[SynthEvent, ...]  # visible sources' events, in onset order
    decoy: Source
    decoy_events: tuple[SynthEvent, ...]
    offscreen: tuple[SynthEvent, ...]
    noise_level: float
    bouncer: tuple[float, float, float, float, float]  # x0, y0, vx, vy (frames per second), radius (fractions)
    bouncer_rgb: tuple[float, float, float]
    pan: tuple[float, float, float, float]  # amplitude x, y (fractions of the frame), period x, y (s)
    flicker: tuple[float, float]  # amplitude, frequency (Hz)
    tint: tuple[float, float, float]
    texture_seed: int


def _partials(family: str, rng: np.random.Generator) -> tuple[float, ...]:
    k = np.arange(1, 13, dtype=np.float64)
    if family == "harmonic":
        w = 1.0 / k
    elif family == "hollow":
        w = np.where(k % 2 == 1, 1.0 / k, 0.0)
    elif family == "bright":
        w = 1.0 / np.sqrt(k)
    else:  # breathy: weak upper partials, noise added in the synthesis
        w = 1.0 / k**1.5
    w = w * rng.uniform(0.7, 1.3, size=len(k))
    return tuple(float(x) for x in w / w.sum())


def _event(rng: np.random.Generator, onset: float, duration: float, source: int, level: float,
           f0: float = 0.0) -> SynthEvent:
    return SynthEvent(onset=round(onset, 6), duration=round(duration, 6), source=source, level=level,
                      glide=float(rng.uniform(0.1, 0.45)), glide_hz=float(rng.uniform(0.6, 2.0)),
                      glide_phase=float(rng.uniform(0, 2 * np.pi)), swell_hz=float(rng.uniform(2.0, 5.0)),
                      swell_phase=float(rng.uniform(0, 2 * np.pi)), f0=f0)


def _poisson(rng: np.random.Generator, rate: float, span: tuple[float, float], duration: float, source: int,
             level: tuple[float, float], f_range: tuple[float, float] | None = None) -> list[SynthEvent]:
    out: list[SynthEvent] = []
    t = float(rng.exponential(1.0 / rate))
    while t < duration:
        d = float(rng.uniform(*span))
        f0 = float(np.exp(rng.uniform(np.log(f_range[0]), np.log(f_range[1])))) if f_range else 0.0
        out.append(_event(rng, t, d, source, float(rng.uniform(*level)), f0))
        t += d + float(rng.exponential(1.0 / rate))
    return out


def make_scene(rng: np.random.Generator, duration: float, family: str) -> Scene:
    """Draw one recording's scene (sources, event streams, distractors) from ``rng``."""
    if family not in FAMILIES:
        raise ValueError(f"make_scene: family must be one of {FAMILIES}, got {family!r}")
    n_src = int(rng.integers(1, 3))
    # sources and the decoy in separate thirds of the central square (what a square centre crop keeps)
    slots = rng.permutation(3)
    places = [(0.5 + 0.22 * np.cos(2 * np.pi * s / 3 + 0.5), 0.5 + 0.22 * np.sin(2 * np.pi * s / 3 + 0.5))
              for s in slots]
    bands = rng.permutation([(180.0, 360.0), (400.0, 800.0)])  # two visible sources never share a pitch range
    sources = []
    for j in range(n_src):
        lo, hi = bands[j]
        rgb = tuple(float(c) for c in rng.uniform(0.45, 1.0, size=3))
        sources.append(Source(x=float(places[j][0] * 0.75 + 0.125), y=float(places[j][1]), rgb=rgb,  # type: ignore[arg-type]
                              f0=float(np.exp(rng.uniform(np.log(lo), np.log(hi)))),
                              partials=_partials(family, rng)))
    d_rgb = tuple(float(c) for c in rng.uniform(0.45, 1.0, size=3))
    decoy = Source(x=float(places[2][0] * 0.75 + 0.125), y=float(places[2][1]), rgb=d_rgb, f0=0.0,  # type: ignore[arg-type]
                   partials=())
    events: list[SynthEvent] = []
    t = float(rng.uniform(0.0, 0.3))
    while t < duration:
        d = float(rng.uniform(*EVENT_DURATION))
        events.append(_event(rng, t, d, int(rng.integers(n_src)), float(rng.uniform(0.5, 1.0))))
        t += d + float(rng.uniform(*EVENT_GAP))
    decoys = _poisson(rng, DECOY_RATE, DECOY_DURATION, duration, -2, (0.5, 1.0))
    offscreen = _poisson(rng, OFFSCREEN_RATE, OFFSCREEN_DURATION, duration, -1, (0.25, 0.6), (250.0, 2500.0))
    speed = rng.uniform(0.15, 0.35, size=2) * rng.choice([-1.0, 1.0], size=2)
    bouncer = (float(rng.uniform(0.2, 0.8)), float(rng.uniform(0.2, 0.8)), float(speed[0]), float(speed[1]),
               float(rng.uniform(0.06, 0.1)))
    return Scene(
        family=family, duration=duration, sources=tuple(sources), events=tuple(events), decoy=decoy,
        decoy_events=tuple(decoys), offscreen=tuple(offscreen), noise_level=float(rng.uniform(0.01, 0.04)),
        bouncer=bouncer, bouncer_rgb=tuple(float(c) for c in rng.uniform(0.3, 0.9, size=3)),  # type: ignore[arg-type]
        pan=(float(rng.uniform(0.02, 0.06)), float(rng.uniform(0.02, 0.06)), float(rng.uniform(4.0, 9.0)),
             float(rng.uniform(4.0, 9.0))),
        flicker=(float(rng.uniform(0.03, 0.08)), float(rng.uniform(0.2, 0.7))),
        tint=tuple(float(c) for c in rng.uniform(0.25, 0.6, size=3)),  # type: ignore[arg-type]
        texture_seed=int(rng.integers(0, 2**31 - 1)),
    )


def envelope(ev: SynthEvent, tau: np.ndarray, release: float = RELEASE) -> np.ndarray:
    """Loudness of ``ev`` at ``tau`` seconds after its onset: linear attack, swell, linear release after
    ``duration``; 0 before the onset and after the release."""
    tau = np.asarray(tau, dtype=np.float64)
    rise = np.clip(tau / ATTACK, 0.0, 1.0)
    fall = np.clip(1.0 - (tau - ev.duration) / release, 0.0, 1.0)
    swell = 1.0 + 0.35 * np.sin(2 * np.pi * ev.swell_hz * tau + ev.swell_phase)
    return np.where((tau >= 0) & (tau < ev.duration + release), ev.level * rise * fall * swell / 1.35, 0.0)


def pitch(ev: SynthEvent, tau: np.ndarray) -> np.ndarray:
    """Pitch contour of ``ev`` in octaves around its base frequency."""
    return ev.glide * np.sin(2 * np.pi * ev.glide_hz * np.asarray(tau, dtype=np.float64) + ev.glide_phase)


def _tone(ev: SynthEvent, f0: float, partials: Sequence[float], tau: np.ndarray, sample_rate: int,
          noise: np.ndarray | None) -> np.ndarray:
    inst = f0 * np.power(2.0, pitch(ev, tau))
    phase = 2 * np.pi * np.cumsum(inst) / sample_rate
    out = np.zeros_like(tau)
    for k, w in enumerate(partials, start=1):
        if w == 0.0 or k * f0 * 2 ** ev.glide >= 0.45 * sample_rate:
            continue
        out += w * np.sin(k * phase)
    if noise is not None:
        out = 0.6 * out + 0.25 * noise
    return out


def synth_audio(scene: Scene, sample_rate: int, seed: int) -> np.ndarray:
    """Mono float32 waveform of ``scene``; sample k is at time k / sample_rate."""
    n = int(round(scene.duration * sample_rate))
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sample_rate
    # background noise: white noise low-passed at 800 Hz (first order, in the frequency domain: a room's
    # rumble), its level drifting slowly
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(1.0 + (np.fft.rfftfreq(n, 1.0 / sample_rate) / 800.0) ** 2)
    low = np.fft.irfft(spec, n=n)
    low /= np.std(low) + 1e-12
    drift = 1.0 + 0.5 * np.sin(2 * np.pi * t / float(rng.uniform(3.0, 7.0)) + float(rng.uniform(0, 6.3)))
    wave = scene.noise_level * drift * low
    breathy = scene.family == "breathy"
    for ev in (*scene.events, *scene.offscreen):
        a0 = int(np.ceil(ev.onset * sample_rate))
        b0 = min(n, int(np.ceil((ev.onset + ev.duration + RELEASE) * sample_rate)))
        if b0 <= a0:
            continue
        tau = np.arange(a0, b0) / sample_rate - ev.onset
        if ev.source >= 0:
            src = scene.sources[ev.source]
            f0, partials = src.f0, src.partials
            # each event's own noise (keyed by its onset), so that no event's sound depends on the others
            noise = (np.random.default_rng([seed, int(round(ev.onset * 1e6))]).standard_normal(len(tau))
                     if breathy else None)
        else:  # off-screen: a timbre of its own (a few strong partials)
            f0, partials, noise = ev.f0, (0.5, 0.0, 0.3, 0.0, 0.2), None
        wave[a0:b0] += 0.3 * envelope(ev, tau) * _tone(ev, f0, partials, tau, sample_rate, noise)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def _texture(seed: int, height: int, width: int) -> np.ndarray:
    """A smooth random grey texture [height, width] in [0, 1] (bilinear upsampling of coarse noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 1.0, size=(height // 8 + 2, width // 8 + 2))
    ys = np.linspace(0, coarse.shape[0] - 1.001, height)
    xs = np.linspace(0, coarse.shape[1] - 1.001, width)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    c = coarse
    return ((1 - fy) * (1 - fx) * c[y0][:, x0] + (1 - fy) * fx * c[y0][:, x0 + 1]
            + fy * (1 - fx) * c[y0 + 1][:, x0] + fy * fx * c[y0 + 1][:, x0 + 1])


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    if shape == "disc":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
    if shape == "triangle":
        return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    d2 = dx**2 + dy**2
    return (d2 <= r**2) & (d2 >= (0.55 * r) ** 2)


def _active(events: Sequence[SynthEvent], t: float, release: float) -> list[SynthEvent]:
    return [e for e in events if e.onset <= t < e.onset + e.duration + release]


def render_video(scene: Scene, fps: int, width: int, height: int) -> np.ndarray:
    """uint8 [T, height, width, 3] frames; frame k shows the scene at time k / fps."""
    num = int(round(scene.duration * fps))
    unit = float(min(width, height))
    margin_x, margin_y = int(np.ceil(width * 0.1)), int(np.ceil(height * 0.1))
    tex = _texture(scene.texture_seed, height + 2 * margin_y, width + 2 * margin_x)
    tint = np.asarray(scene.tint, dtype=np.float64)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    shape = _SHAPES[scene.family]
    frames = np.empty((num, height, width, 3), dtype=np.uint8)
    for k in range(num):
        t = k / fps
        ax, ay, px, py = scene.pan
        ox = int(round(margin_x + ax * width * np.sin(2 * np.pi * t / px)))
        oy = int(round(margin_y + ay * height * np.sin(2 * np.pi * t / py)))
        bg = tex[oy : oy + height, ox : ox + width]
        img = (0.35 + 0.4 * bg)[..., None] * tint[None, None, :]
        # the soundless bouncer
        x0, y0, vx, vy, br = scene.bouncer
        bx = abs(((x0 + vx * t) % 2.0 + 2.0) % 2.0 - 1.0)  # triangle wave in [0, 1]
        by = abs(((y0 + vy * t) % 2.0 + 2.0) % 2.0 - 1.0)
        cx, cy = (0.1 + 0.8 * bx) * width, (0.1 + 0.8 * by) * height
        mask = (np.abs(xx - cx) <= br * unit) & (np.abs(yy - cy) <= 0.5 * br * unit)
        img[mask] = np.asarray(scene.bouncer_rgb) * 0.8
        # sources and the decoy: dim at rest, lit while sounding (the decoy: while "sounding" silently)
        for j, src in enumerate((*scene.sources, scene.decoy)):
            evs = scene.decoy_events if j == len(scene.sources) else [e for e in scene.events if e.source == j]
            live = _active(evs, t, VISUAL_RELEASE)
            env, rise = 0.0, 0.0
            if live:
                ev = live[-1]
                tau = np.array([t - ev.onset])
                env = float(envelope(ev, tau, VISUAL_RELEASE)[0])
                rise = float(pitch(ev, tau)[0])
            r = unit * (0.07 + 0.09 * env)
            cx, cy = src.x * width, (src.y - 0.25 * rise) * height
            m = _shape_mask(shape, xx - cx, yy - cy, r)
            img[m] = np.asarray(src.rgb) * (0.15 + 0.85 * env)
        amp, hz = scene.flicker
        img = img * (1.0 + amp * np.sin(2 * np.pi * hz * t))
        frames[k] = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return frames


def write_media(path: str | os.PathLike[str], spec: ContainerSpec, frames: np.ndarray, audio: np.ndarray) -> None:
    """Encode uint8 [T, H, W, 3] frames and a mono waveform as ``spec`` says (deterministic encoder settings).
    Both streams start at 0 on the file clock."""
    fps = Fraction(spec.fps)
    with av.open(os.fspath(path), mode="w", format=spec.format, options={"fflags": "+bitexact"}) as out:
        if spec.vcodec == "h264":
            vs = add_h264_stream(out, fps=fps, width=spec.width, height=spec.height, gop=spec.fps, crf=20)
        else:
            vs = cast(VideoStream, out.add_stream("libvpx-vp9" if spec.vcodec == "vp9" else spec.vcodec, rate=fps))
            vs.width, vs.height, vs.pix_fmt = spec.width, spec.height, "yuv420p"
            vs.time_base = 1 / fps
            cc = vs.codec_context
            cc.thread_count = 1
            cc.gop_size = spec.fps
            cc.flags |= av.codec.context.Flags.bitexact
            if spec.vcodec == "vp9":
                cc.options = {"deadline": "realtime", "cpu-used": "8", "crf": "28", "b": "0", "threads": "1",
                              "row-mt": "0", "lag-in-frames": "0"}
            else:  # mpeg4 (MPEG-4 part 2)
                cc.bit_rate = 600_000
        ast = cast(AudioStream, out.add_stream({"opus": "libopus"}.get(spec.acodec, spec.acodec),
                                               rate=spec.sample_rate, layout="mono"))
        ast.time_base = Fraction(1, spec.sample_rate)
        ast.codec_context.flags |= av.codec.context.Flags.bitexact
        if spec.acodec in ("aac", "opus"):
            ast.bit_rate = 64000
        for k, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            vf.pts, vf.time_base = k, 1 / fps
            for pkt in vs.encode(vf):
                out.mux(pkt)
        for pkt in vs.encode():
            out.mux(pkt)
        fmt = str(getattr(ast.codec_context.format, "name", "flt"))
        chunk = ast.codec_context.frame_size or 1024
        for a in range(0, len(audio), chunk):
            af = audio_frame(audio[None, a : a + chunk], fmt, "mono", spec.sample_rate)
            af.pts, af.time_base = a, Fraction(1, spec.sample_rate)
            for pkt in ast.encode(af):
                out.mux(pkt)
        for pkt in ast.encode():
            out.mux(pkt)


def select_containers(names: Sequence[str] | None) -> tuple[ContainerSpec, ...]:
    """The :data:`CONTAINERS` named (all when ``names`` is empty or None), in the given order."""
    if not names:
        return CONTAINERS
    table = {c.name: c for c in CONTAINERS}
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(f"synth: unknown container(s) {unknown}; known: {sorted(table)}")
    return tuple(table[n] for n in names)


def make_synth_dataset(
    out: str | os.PathLike[str],
    *,
    num_videos: int = 64,
    duration: float = 10.0,
    seed: int = 0,
    containers: Sequence[str] | None = None,
) -> Path:
    """Write ``num_videos`` recordings under ``out/<family>/<id><ext>`` with ``events.json`` and ``params.json``.

    Recording ``i`` has family ``FAMILIES[i % 4]`` and container ``containers[i % len(containers)]``; its scene
    and waveform come from ``numpy.random.default_rng([seed, i])``. The folder is written under a temporary name
    beside ``out`` and renamed into place. An ``out`` that already holds a dataset of the same parameters is
    kept as it is (returned); any other existing ``out`` is an error, never overwritten. Returns ``out``.
    """
    if int(num_videos) != num_videos or num_videos < 1 or not duration > 0:
        raise ValueError(f"make_synth_dataset: need num_videos >= 1 and duration > 0, got {num_videos}, {duration}")
    specs = select_containers(containers)
    out = Path(out)
    params = {"version": SYNTH_VERSION, "num_videos": int(num_videos), "duration": float(duration),
              "seed": int(seed), "containers": [c.name for c in specs]}
    if out.exists():
        try:
            same = json.loads((out / "params.json").read_text()) == params
        except (OSError, ValueError):
            same = False
        if same:
            return out
        raise FileExistsError(f"{out}: exists and is not a synth dataset with these parameters ({params}); "
                              "choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        listing: dict[str, object] = {}
        for i in range(int(num_videos)):
            spec, family = specs[i % len(specs)], FAMILIES[i % len(FAMILIES)]
            rng = np.random.default_rng([int(seed), i])
            scene = make_scene(rng, float(duration), family)
            sub = int(rng.integers(0, 2**31 - 1))
            audio = synth_audio(scene, spec.sample_rate, sub)
            frames = render_video(scene, spec.fps, spec.width, spec.height)
            rel = f"{family}/{i:04d}{spec.ext}"
            (tmp / family).mkdir(exist_ok=True)
            write_media(tmp / rel, spec, frames, audio)
            listing[f"{i:04d}"] = {
                "path": rel, "label": family, "container": asdict(spec), "duration": float(duration),
                "sources": [asdict(s) for s in scene.sources], "decoy": asdict(scene.decoy),
                "events": [asdict(e) for e in scene.events],
                "decoy_events": [asdict(e) for e in scene.decoy_events],
                "offscreen_events": [asdict(e) for e in scene.offscreen],
            }
        (tmp / "events.json").write_text(json.dumps(listing, indent=1))
        (tmp / "params.json").write_text(json.dumps(params))
        os.rename(tmp, out)
    except BaseException:
        _remove_own(tmp)
        raise
    return out


def _remove_own(tmp: Path) -> None:
    """Remove the temporary folder this module created (only the files it wrote)."""
    for p in sorted(tmp.rglob("*"), reverse=True):
        if p.is_dir():
            p.rmdir()
        else:
            p.unlink()
    tmp.rmdir()


def event_coverage(events: Sequence[SynthEvent], start: float, length: float) -> float:
    """Seconds of ``[start, start + length)`` during which one of ``events`` sounds (onset to end + release)."""
    covered = 0.0
    for e in events:
        a, b = max(start, e.onset), min(start + length, e.onset + e.duration + RELEASE)
        covered += max(0.0, b - a)
    return covered


__all__ = [
    "CONTAINERS",
    "ContainerSpec",
    "FAMILIES",
    "SYNTH_VERSION",
    "Scene",
    "Source",
    "SynthEvent",
    "envelope",
    "event_coverage",
    "make_scene",
    "make_synth_dataset",
    "pitch",
    "render_video",
    "select_containers",
    "synth_audio",
    "write_media",
]
