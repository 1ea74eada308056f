"""Data throughput benchmark (issue 13): clips/s per core for every representation and source, each beside its
floor on the same bytes, DataLoader scaling, bytes per hour of media and write time. One JSON per run.

    # full run (commit the JSON, then regenerate the docs with benchmarks/report.py):
    nice python benchmarks/bench_data.py
    # CI: tiny media, one round, writes to a temp folder and checks the JSON schema (about a minute):
    python benchmarks/bench_data.py --small

What is measured, in one process with ``torch.set_num_threads(1)``:

- **Sources.** ``data=folder`` on generated H.264 recordings (192x144 at 25 fps and 640x480 at 30 fps, AAC), read
  through ``AVDataModule`` exactly as ``avssl-train data=folder`` reads them; and shards written by the shard
  writer (``avssl.data_tools.shards.write_shards``) in every representation it offers, at 112 and 224 px, at the
  training fps, read through ``AVDataModule`` with ``data=shards``.
- **Clips.** Batches of 8 clips of 4 x 0.5 s segments at 8 fps, 128-bin log-mel (the training defaults of
  ``conf/data/manifest.yaml`` with ``data.frame_size`` set per case). JPEG shards are read twice: as on a CPU
  trainer (float frames, normalised in the reader) and, case ``... uint8``, as a worker feeding a GPU reads them
  (``data.normalise_video=device``: cropped uint8 frames, normalised on the device after the transfer).
- **Floors.** The same windows of the same bytes decoded by the plainest code: PyAV seeking, decoding, converting
  the frames on screen at the clip's instants to RGB at the stored/target size and resampling the audio (raw files
  and H.264 shards, from memory for shards); ``torchvision.io.decode_jpeg`` on the same JPEG bytes plus the audio
  (JPEG shards). No crop, no normalisation, no log-mel. Dataset and floor alternate round by round, so both see the
  same machine state; ``ratio_to_floor`` is the median of the per-round ratios.
- **Allocator.** By default (``--malloc worker``) the process first keeps freed memory for reuse exactly as
  avssl's DataLoader workers do (``data.worker_retain_memory``: glibc ``mallopt``), so the one-process rounds run
  the data path with the allocator it has in training; ``--malloc default`` leaves glibc's thresholds, under which
  a float 224 px batch is faulted in afresh each time (the ``kernel_share`` of a case shows how much that costs).
- **Per core.** ``clips_per_cpu_s`` divides clips by the process's CPU time (all its threads), the figure that
  survives a loaded machine; ``clips_per_s`` is wall-clock. DataLoader scaling (``--workers``) is wall-clock only.
- **Bytes per hour of media** (files or shard tars over the hours of media they hold) and **write time** (CPU and
  wall seconds per hour of media, one writer process).

Media are generated deterministically (seeded numpy pictures and sound, encoded with ``avssl.data.encoding``'s
x264 setup) into a cache folder (``--cache``, default ``$AVSSL_CACHE/bench_data`` or ``~/.cache/avssl/bench_data``)
and reused. The JSON (``benchmarks/results/bench_data_<UTC time>.json`` unless ``--out``) holds the machine (CPU
model, cores, load average before and after), versions, the date, the exact command and every figure; its layout
is checked by :func:`validate_result` (``SCHEMA_VERSION``).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA = "avssl-bench-data"
SCHEMA_VERSION = 1
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
MEDIA_VERSION = 1  # bump when the generated media change (the cache key)


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class MediaSet:
    """Generated recordings: ``files`` files of ``duration`` s, H.264 ``width`` x ``height`` at ``fps`` with a
    ``gop_s`` second keyframe interval, AAC at ``sample_rate`` Hz with ``channels`` channels."""

    name: str
    width: int
    height: int
    fps: int
    gop_s: float
    sample_rate: int
    channels: int
    files: int
    duration: float
    seed: int


@dataclass(frozen=True)
class Representation:
    """A shard representation: ``avssl-shards --format F --audio A [--logmel]``."""

    format: str
    audio: str
    logmel: bool = False

    @property
    def name(self) -> str:
        return f"{self.format}+{self.audio}" + ("+logmel" if self.logmel else "")

    @classmethod
    def parse(cls, text: str) -> Representation:
        parts = text.split("+")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "logmel"):
            raise argparse.ArgumentTypeError(f"representation {text!r}: expected FORMAT+AUDIO[+logmel], e.g. "
                                             "jpeg+pcm")
        return cls(parts[0], parts[1], len(parts) == 3)


REPRESENTATIONS = (Representation("h264", "pcm"), Representation("h264_intra", "pcm"),
                   Representation("jpeg", "pcm"), Representation("jpeg", "flac"),
                   Representation("jpeg", "pcm", True))


@dataclass(frozen=True)
class Settings:
    mode: str
    media: tuple[MediaSet, ...]
    raw_cases: tuple[tuple[str, int], ...]  # (media set, frame size) read with data=folder
    shard_source: str  # the media set the shards are written from
    shard_sizes: tuple[int, ...]
    representations: tuple[Representation, ...]
    rounds: int
    batches_per_round: int
    workers: tuple[int, ...]
    scaling_batches: int
    batch_size: int = 8
    num_segments: int = 4
    segment_duration: float = 0.5
    fps: float = 8.0
    num_mel_bins: int = 128
    samples_per_shard: int = 8
    shard_repeats: int = 1  # the shard manifest lists each recording this many times (more samples per epoch)


FULL = Settings(
    mode="full",
    media=(MediaSet("h264_192x144_25fps", 192, 144, 25, 1.0, 22050, 1, 8, 30.0, 1),
           MediaSet("h264_640x480_30fps", 640, 480, 30, 2.0, 48000, 2, 8, 30.0, 2)),
    raw_cases=(("h264_192x144_25fps", 112), ("h264_640x480_30fps", 112), ("h264_640x480_30fps", 224)),
    shard_source="h264_640x480_30fps",
    shard_sizes=(112, 224),
    representations=REPRESENTATIONS,
    rounds=5,
    batches_per_round=3,
    workers=(1, 2),
    scaling_batches=24,  # about 3 shard epochs of 9 batches: each epoch's start-up is left out (steady_rate)
    shard_repeats=3,  # 72 samples: 9 batches per epoch (the worker runs take 25 batches over 3 epochs)
)

SMALL = Settings(
    mode="small",
    media=(MediaSet("h264_192x144_25fps", 192, 144, 25, 1.0, 22050, 1, 2, 6.0, 1),
           MediaSet("h264_640x480_30fps", 640, 480, 30, 2.0, 48000, 2, 3, 6.0, 2)),
    raw_cases=(("h264_192x144_25fps", 112), ("h264_640x480_30fps", 112)),
    shard_source="h264_640x480_30fps",
    shard_sizes=(112,),
    representations=REPRESENTATIONS,
    rounds=1,
    batches_per_round=1,
    workers=(1,),
    scaling_batches=1,
    batch_size=2,
    samples_per_shard=2,
)


# ------------------------------------------------------------------------------------------------ media


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour texture [h, w, 3] float32 in [0, 1] (coarse noise, bilinearly upsampled)."""
    ch, cw = max(2, h // 24), max(2, w // 24)
    coarse = rng.random((ch, cw, 3), dtype=np.float32)
    yi = np.linspace(0, ch - 1, h, dtype=np.float32)
    xi = np.linspace(0, cw - 1, w, dtype=np.float32)
    y0, x0 = np.floor(yi).astype(int), np.floor(xi).astype(int)
    y1, x1 = np.minimum(y0 + 1, ch - 1), np.minimum(x0 + 1, cw - 1)
    fy, fx = (yi - y0)[:, None, None], (xi - x0)[None, :, None]
    top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x1] * fx
    bot = coarse[y1][:, x0] * (1 - fx) + coarse[y1][:, x1] * fx
    return top * (1 - fy) + bot * fy


def make_recording(path: Path, m: MediaSet, index: int) -> None:
    """One deterministic camera-like recording: a textured scene panning slowly, a moving bright object, sensor
    noise; sound: noise floor plus tone bursts. The same ``(m, index)`` gives the same bytes on one machine."""
    import av

    from avssl.data.encoding import add_h264_stream

    rng = np.random.default_rng([m.seed, index])
    big = (_texture(rng, m.height * 2, m.width * 2) * 200).astype(np.float32)
    noise = rng.normal(0, 3, (7, m.height, m.width, 1)).astype(np.float32)  # sensor noise, cycled
    n_frames = int(round(m.duration * m.fps))
    fps = Fraction(m.fps)
    r = max(4, int(0.15 * m.height))  # the moving object's radius
    by, bx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float32)
    blob = (55 * np.exp(-(by**2 + bx**2) / (2 * (r / 2) ** 2)))[..., None]
    with av.open(os.fspath(path), mode="w", format="mp4") as c:
        vs = add_h264_stream(c, fps=fps, width=m.width, height=m.height, gop=int(round(m.gop_s * m.fps)))
        aus = c.add_stream("aac", rate=m.sample_rate, layout="mono" if m.channels == 1 else "stereo")
        aus.bit_rate = 64000 * m.channels
        for k in range(n_frames):
            t = k / m.fps
            oy = int((m.height / 2) * (0.5 + 0.5 * np.sin(0.21 * t + index)))
            ox = int((m.width / 2) * (0.5 + 0.5 * np.cos(0.17 * t + index)))
            img = big[oy : oy + m.height, ox : ox + m.width] + noise[k % len(noise)]
            cy = int((m.height - 2 * r - 1) * (0.5 + 0.5 * np.sin(1.3 * t + index)))
            cx = int((m.width - 2 * r - 1) * (0.5 + 0.5 * np.cos(0.9 * t)))
            img[cy : cy + 2 * r + 1, cx : cx + 2 * r + 1] += blob
            vf = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            vf.pts, vf.time_base = k, 1 / fps
            for pkt in vs.encode(vf):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        n = int(round(m.duration * m.sample_rate))
        audio = (0.02 * rng.standard_normal((m.channels, n))).astype(np.float32)
        tt = np.arange(n) / m.sample_rate
        for onset in np.sort(rng.uniform(0, m.duration, size=int(m.duration))):
            sel = (tt >= onset) & (tt < onset + 0.15)
            audio[:, sel] += (0.5 * np.sin(2 * np.pi * rng.uniform(200, 2000) * tt[sel])
                              * np.exp(-(tt[sel] - onset) / 0.05)).astype(np.float32)
        layout = "mono" if m.channels == 1 else "stereo"
        for a in range(0, n, 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, a : a + 1024].T.reshape(1, -1)),
                                            format="flt", layout=layout)
            af.sample_rate, af.pts, af.time_base = m.sample_rate, a, Fraction(1, m.sample_rate)
            for pkt in aus.encode(af):
                c.mux(pkt)
        for pkt in aus.encode():
            c.mux(pkt)


def ensure_media(cache: Path, m: MediaSet) -> Path:
    """The folder of ``m``'s recordings under ``cache`` (generated once into a temp folder, then renamed)."""
    key = f"{m.name}-{m.files}x{m.duration:g}s-v{MEDIA_VERSION}"
    target = cache / "media" / key
    if (target / "media.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=target.parent))
    try:
        for i in range(m.files):
            make_recording(tmp / f"rec_{i:03d}.mp4", m, i)
        (tmp / "media.json").write_text(json.dumps(dataclasses.asdict(m), indent=1, sort_keys=True))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def media_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("rec_*.mp4"))


# ------------------------------------------------------------------------------------------------ configs


def data_config(s: Settings, overrides: Sequence[str]) -> dict[str, Any]:
    """The ``data`` section as ``avssl-train`` composes it, with the benchmark's clip settings."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    base = [f"data.batch_size={s.batch_size}", f"data.num_segments={s.num_segments}",
            f"data.segment_duration={s.segment_duration}", f"data.fps={s.fps}",
            f"data.fbank.num_mel_bins={s.num_mel_bins}", "data.num_workers=0",
            "data.val_split=train"]  # no validation set is read; the train split stands in for it
    with initialize_config_module("avssl.conf", version_base="1.3"):
        cfg = compose("train", overrides=list(overrides) + base)
    data = OmegaConf.to_container(cfg.data, resolve=True)
    assert isinstance(data, dict)
    return data  # type: ignore[return-value]


def shards_command(s: Settings, rep: Representation, size: int, manifest: str, out: str) -> list[str]:
    """The ``avssl-shards`` arguments that write ``rep`` at ``size`` px (the rest from the training config:
    conf/data/shards.yaml ``data.shards.write``, with the benchmark's fps and mel bins)."""
    return [manifest, "--out", out, "--format", rep.format, "--audio", rep.audio,
            "--logmel" if rep.logmel else "--no-logmel", "--size", str(size), "--fps", f"{s.fps:g}",
            "--samples-per-shard", str(s.samples_per_shard), "--splits", "train",
            "--config", f"data.fbank.num_mel_bins={s.num_mel_bins}"]


def write_representation(args: list[str]) -> None:
    """Run ``avssl-shards`` (its console entry point, in this process, so its CPU time is ours)."""
    import contextlib

    from avssl.cli.shards import main as shards_main

    with contextlib.redirect_stdout(io.StringIO()):
        rc = shards_main(args)
    if rc != 0:
        raise RuntimeError(f"avssl-shards {shlex.join(args)} failed with exit status {rc}")


# ------------------------------------------------------------------------------------------------ floors


def _window_instants(starts: Sequence[float], s: Settings) -> np.ndarray:
    t = int(round(s.segment_duration * s.fps))
    return np.asarray([s0 + j / s.fps for s0 in starts for j in range(t)], np.float64)


def plain_pyav_window(container: Any, start: float, duration: float, instants: np.ndarray,
                      size: tuple[int, int] | None, sample_rate: int, convert: bool = True) -> tuple[int, int]:
    """Plain PyAV: the frames on screen at ``instants`` (RGB, swscale to ``size`` = (W, H)) and the audio of
    ``[start, start + duration)`` resampled to mono ``sample_rate``; returns (frames, samples)."""
    import av

    origin = container.start_time / 1e6 if container.start_time is not None else 0.0
    end = start + duration
    vs = container.streams.video[0]
    container.seek(int((origin + start) / vs.time_base), stream=vs, backward=True, any_frame=False)
    kept, i, prev = 0, 0, None
    for frame in container.decode(vs):
        t = float(frame.pts * vs.time_base) - origin
        while i < len(instants) and instants[i] < t - 1e-6:
            if prev is not None and convert:
                prev.to_ndarray(format="rgb24", **({} if size is None else {"width": size[0], "height": size[1]}))
            kept += prev is not None
            i += 1
        prev = frame
        if t >= end or i >= len(instants):
            break
    while i < len(instants) and prev is not None:
        if convert:
            prev.to_ndarray(format="rgb24", **({} if size is None else {"width": size[0], "height": size[1]}))
        kept += 1
        i += 1
    samples = 0
    if container.streams.audio:
        aus = container.streams.audio[0]
        container.seek(int(max(0.0, origin + start - 0.1) / aus.time_base), stream=aus, backward=True,
                       any_frame=False)
        res = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        for frame in container.decode(aus):
            t = float(frame.pts * aus.time_base) - origin
            for out in res.resample(frame):
                samples += out.samples
            if t >= end:
                break
    return kept, samples


class RawFloor:
    """Plain PyAV on the source files: containers kept open per file (as the dataset keeps its readers)."""

    def __init__(self, s: Settings, size: int) -> None:
        self.s, self.size = s, size
        self.open: dict[str, Any] = {}
        self.sizes: dict[str, tuple[int, int]] = {}

    def close(self) -> None:
        for c in self.open.values():
            c.close()
        self.open.clear()

    def __call__(self, path: str, starts: Sequence[float]) -> None:
        import av

        c = self.open.get(path)
        if c is None:
            c = self.open[path] = av.open(path)
            v = c.streams.video[0]
            scale = self.size / min(v.width, v.height)
            self.sizes[path] = (int(round(v.width * scale)), int(round(v.height * scale)))
        s = self.s
        dur = (s.num_segments - 1) * s.segment_duration + s.segment_duration
        plain_pyav_window(c, float(starts[0]), dur, _window_instants(starts, s), self.sizes[path], 16000)


class ShardFloor:
    """The same shard samples' bytes decoded from memory by the plainest code: a PyAV H.264 decoder fed the packets
    of the GOPs that hold the clip's frames (the format stores an elementary stream with its packet table) or one
    ``torchvision.io.decode_jpeg`` call on the clip's JPEGs; the audio of the clip window (int16 PCM sliced, FLAC
    decoded whole), or the stored log-mel rows when the sample has one. No crop, no log-mel computed."""

    def __init__(self, s: Settings, shard_dir: Path) -> None:
        from avssl.data.shards import ShardIndex, iter_shard_samples

        self.s = s
        index = ShardIndex.load(shard_dir, "train")
        self.samples: dict[str, dict[str, Any]] = {}
        for raw in iter_shard_samples(index.urls):
            self.samples[str(raw["__key__"])] = raw

    def close(self) -> None:
        self.samples.clear()

    def __call__(self, key: str, starts: Sequence[float]) -> None:
        raw = self.samples[key]
        meta = json.loads(raw["json"])
        vd, ad, md = meta["video"], meta.get("audio"), meta.get("logmel")
        fps, t0 = float(meta["fps"]), float(meta["start"])
        slots = np.asarray(vd["index"], np.int64)
        times = t0 + slots / fps
        inst = _window_instants(starts, self.s)
        wanted = sorted({max(0, int(np.searchsorted(times, t + 1e-6, side="right")) - 1) for t in inst})
        if vd["format"] == "jpeg":
            _plain_jpeg(raw["mjpeg"], vd["sizes"], wanted)
        else:
            _plain_h264(raw["h264"], vd, wanted)
        dur = self.s.num_segments * self.s.segment_duration
        if md and "logmel" in raw:
            per_s = 1000.0 / float(md["fbank"].get("frame_shift_ms", 10.0))
            f0 = max(0, int((starts[0] - float(ad["start"])) * per_s))
            mel = np.frombuffer(raw["logmel"], dtype="<f4").reshape(int(md["frames"]), int(md["mels"]))
            np.array(mel[f0 : f0 + int(dur * per_s)])
        elif ad:
            sr, a0 = int(meta["sample_rate"]), float(ad["start"])
            if ad["codec"] == "pcm":
                lo = max(0, int(round((starts[0] - a0) * sr)))
                pcm = np.frombuffer(raw["pcm"], dtype="<i2")[lo : lo + int(round(dur * sr))]
                pcm.astype(np.float32) / 32768.0
            else:
                import av

                with av.open(io.BytesIO(raw["flac"]), format="flac") as c:
                    parts = [fr.to_ndarray() for fr in c.decode(audio=0)]
                np.concatenate(parts, axis=-1).astype(np.float32) / 32768.0


def _plain_jpeg(data: bytes, sizes: Sequence[int], wanted: Sequence[int]) -> None:
    import torch
    from torchvision.io import decode_jpeg

    off = np.concatenate([[0], np.cumsum(sizes)])
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    decode_jpeg([buf[int(off[i]) : int(off[i + 1])] for i in wanted])


def _plain_h264(data: bytes, vd: dict[str, Any], wanted: Sequence[int]) -> None:
    import av

    off = np.concatenate([[0], np.cumsum(vd["sizes"])])
    pts, keys = vd["pts"], vd["keyframes"]
    first = max(k for k in keys if pts[k] <= wanted[0])
    last = max(i for i in range(len(pts)) if pts[i] <= wanted[-1] or i < first)
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = 1
    want = set(wanted)
    frames = []
    for i in range(first, last + 1):
        pkt = av.Packet(data[int(off[i]) : int(off[i + 1])])
        pkt.pts = pts[i]
        frames += ctx.decode(pkt)
    frames += ctx.decode(None)
    for f in frames:
        if f.pts in want:
            f.to_ndarray(format="rgb24")


# ------------------------------------------------------------------------------------------------ timing


def _cycle(loader: Any) -> Iterator[dict[str, Any]]:
    epoch = 0
    while True:
        got = False
        for b in loader:
            got = True
            yield b
        epoch += 1
        ds = getattr(loader, "dataset", None)
        if ds is not None and hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)
        if not got:
            raise RuntimeError("the loader yielded no batch")


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """``fn(*args)`` with its wall-clock and process CPU seconds."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - w0, time.process_time() - c0


def _kernel_usage() -> tuple[float, int]:
    """(kernel-mode CPU seconds, minor page faults) of this process so far; (0, 0) where ``resource`` is missing."""
    try:
        import resource
    except ImportError:  # not a Unix
        return 0.0, 0
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return float(ru.ru_stime), int(ru.ru_minflt)


def set_allocator(mode: str) -> dict[str, Any]:
    """``--malloc``: ``worker`` gives this process the allocator settings of avssl's DataLoader workers
    (``data.worker_retain_memory``); ``default`` leaves glibc's. The JSON's ``malloc`` entry: the mode and whether
    it took effect (False for ``worker`` where the C library is not glibc)."""
    if mode not in ("worker", "default"):
        raise ValueError(f"--malloc {mode!r}: expected 'worker' or 'default'")
    if mode == "default":
        return {"mode": mode, "applied": False}
    from avssl.data._malloc import retain_freed_memory

    return {"mode": mode, "applied": retain_freed_memory()}


def _take(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [next(it) for _ in range(n)]


def _floor_all(floor: Callable[[str, Sequence[float]], None], windows: list[tuple[str, list[float]]]) -> None:
    for key, starts in windows:
        floor(key, starts)


def measure_case(s: Settings, data: dict[str, Any], floor: RawFloor | ShardFloor, key_field: str,
                 whole_epochs: bool = False) -> dict[str, Any]:
    """Dataset batches and the floor on the same windows, alternating round by round (one process, workers=0).
    ``whole_epochs`` (shards): each round is one epoch's worth of batches, so every round holds one epoch start,
    where the shuffle buffer reads most of the epoch's samples before the first batch (rounds of a few batches put
    those reads in one round of three, which the median then leaves out). Every container either side opened is
    closed before returning (DataLoader workers are forked later)."""
    import gc

    from avssl.lit.datamodule import AVDataModule

    dm = AVDataModule(data, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    per_round = max(1, len(loader)) if whole_epochs else s.batches_per_round
    it = _cycle(loader)
    next(it)  # warm-up: readers opened, caches filled
    rounds = []
    for _ in range(s.rounds):
        k0, f0 = _kernel_usage()
        batches, wall, cpu = _timed(_take, it, per_round)
        k1, f1 = _kernel_usage()
        windows = [(str(k), [float(v) for v in st]) for b in batches
                   for k, st in zip(b[key_field], b["segment_starts"])]
        _, fwall, fcpu = _timed(_floor_all, floor, windows)
        n = len(windows)
        rounds.append({"clips": n, "wall_s": wall, "cpu_s": cpu, "sys_s": k1 - k0, "minor_faults": f1 - f0,
                       "floor_wall_s": fwall, "floor_cpu_s": fcpu})
    floor.close()
    del it, dm, batches
    gc.collect()
    med = statistics.median
    return {
        "clips_per_s": med(r["clips"] / r["wall_s"] for r in rounds),
        "clips_per_cpu_s": med(r["clips"] / r["cpu_s"] for r in rounds),
        "floor_clips_per_s": med(r["clips"] / r["floor_wall_s"] for r in rounds),
        "floor_clips_per_cpu_s": med(r["clips"] / r["floor_cpu_s"] for r in rounds),
        "ratio_to_floor": med(r["floor_cpu_s"] / r["cpu_s"] for r in rounds),
        # the kernel's part of the dataset's CPU time (mostly page faults on newly allocated batch memory) and the
        # minor page faults per clip: the part of a case's cost that depends on the allocator and the machine
        "kernel_share": med(r["sys_s"] / r["cpu_s"] for r in rounds),
        "minor_faults_per_clip": med(r["minor_faults"] / r["clips"] for r in rounds),
        "batches_per_round": per_round,
        "rounds": rounds,
    }


def steady_rate(arrivals: Sequence[tuple[int, float]], workers: int, batch_size: int) -> tuple[int, float]:
    """(clips, seconds) of the steady part of a DataLoader run from its batches' ``(epoch, arrival time)``.

    Each epoch's workers start together and prefetch, so its first ``workers`` batches arrive almost at once (the
    others were made in parallel with the first, or before it): timing from the first batch counts them as free
    and overstates the rate (2 workers on 2 cores came out at 4x one worker). Per epoch, the window runs from the
    arrival of the last of those first batches to the epoch's last batch: every batch in it was started after the
    window opened or, at most, one per worker was already under way. Epochs' windows are summed."""
    clips, seconds = 0, 0.0
    for epoch in sorted({e for e, _ in arrivals}):
        ts = [t for e, t in arrivals if e == epoch]
        if len(ts) > workers:
            clips += (len(ts) - workers) * batch_size
            seconds += ts[-1] - ts[workers - 1]
    return clips, seconds


def measure_workers(s: Settings, data: dict[str, Any], workers: int) -> dict[str, Any]:
    """Wall-clock clips/s of the DataLoader with ``workers`` processes (one torch thread each) in steady state
    (:func:`steady_rate`, over ``scaling_batches`` batches after the first, across epochs where they run over);
    ``first_batch_s`` is the start-up (workers forked, first batch made)."""
    from avssl.lit.datamodule import AVDataModule

    d = dict(data, num_workers=workers, persistent_workers=workers > 0)
    dm = AVDataModule(d, seed=0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    arrivals: list[tuple[int, float]] = []
    t0 = time.perf_counter()
    epoch = 0
    while len(arrivals) < s.scaling_batches + 1:
        start = time.perf_counter()
        got = 0
        for _ in loader:
            arrivals.append((epoch, time.perf_counter() - start))
            got += 1
            if len(arrivals) >= s.scaling_batches + 1:
                break
        if got == 0:
            raise RuntimeError("the loader yielded no batch")
        epoch += 1
        if hasattr(loader.dataset, "set_epoch"):
            loader.dataset.set_epoch(epoch)
    wall = time.perf_counter() - t0
    clips, seconds = steady_rate(arrivals, workers, s.batch_size)
    method = "steady"
    if seconds <= 0:  # too few batches per epoch for a window (small mode): the whole run, start-up included
        clips, seconds, method = len(arrivals) * s.batch_size, wall, "whole run"
    return {"workers": workers, "clips": clips, "wall_s": seconds, "clips_per_s": clips / seconds,
            "first_batch_s": arrivals[0][1], "arrivals": [[e, t] for e, t in arrivals], "method": method}


# ------------------------------------------------------------------------------------------------ facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _commit() -> dict[str, Any]:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, check=False).stdout.strip()

    code = ("avssl", "data_tools", "conf", "benchmarks", ":!benchmarks/results")  # outputs are not code
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--", *code))}


def versions(modules: Sequence[str] = ("torch", "torchvision", "av")) -> dict[str, Any]:
    """Python, the given modules' versions (None where one is not installed) and avssl's git commit."""
    import importlib

    out: dict[str, Any] = {"python": platform.python_version()}
    for name in modules:
        try:
            out[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            out[name] = None
    try:
        import avssl

        out["avssl"] = getattr(avssl, "__version__", None)
        out["avssl_file"] = os.path.dirname(avssl.__file__ or "")  # which installed copy ran
    except ImportError:
        out["avssl"] = None
    out["avssl_git"] = _commit()
    return out


def machine_facts(load_before: list[float]) -> dict[str, Any]:
    """CPU model, cores, platform and the load average before (given) and now."""
    return {"cpu_model": _cpu_model(), "cores": os.cpu_count() or 0, "load_before": load_before,
            "load_after": load_average(), "platform": platform.platform(), "env": _tuning_env()}


# environment variables that change the measured rates (allocator, threads, preloaded libraries)
_TUNING_ENV_PREFIXES = ("MALLOC_", "GLIBC_TUNABLES", "THP_", "LD_PRELOAD", "OMP_", "MKL_", "JEMALLOC_", "TCMALLOC_")


def _tuning_env() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(_TUNING_ENV_PREFIXES)}


def command_line(argv: Sequence[str] | None, script: str) -> str:
    """The command as typed (``python benchmarks/<script> ARGS``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    return shlex.join(["python", f"benchmarks/{script}", *args])


def _media_facts(m: MediaSet, folder: Path) -> dict[str, Any]:
    size = sum(p.stat().st_size for p in media_files(folder))
    hours = m.files * m.duration / 3600
    return {**dataclasses.asdict(m), "bytes": size, "hours": hours, "bytes_per_hour": size / hours}


def _shard_facts(shard_dir: Path) -> tuple[int, float]:
    """(bytes of the tars, hours of media in their samples)."""
    index = json.loads((shard_dir / "index.json").read_text())
    total, seconds = 0, 0.0
    for split in index["splits"].values():
        for sh in split["shards"]:
            total += (shard_dir / sh["name"]).stat().st_size
            side = json.loads((shard_dir / (sh["name"] + ".json")).read_text())
            seconds += float(sum(side.get("durations", [])) or 0.0)
    if not seconds:  # sidecars without durations: read the sample metadata
        from avssl.data.shards import ShardIndex, iter_shard_samples

        idx = ShardIndex.load(shard_dir, "train")
        seconds = sum(float(json.loads(r["json"])["duration"]) for r in iter_shard_samples(idx.urls))
    return total, seconds / 3600


# ------------------------------------------------------------------------------------------------ the run


def run(s: Settings, cache: Path, work: Path, log: Callable[[str], None],
        sources: Sequence[str] = ("folder", "shards")) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    from avssl.data.datasets import scan_folder

    media_dirs = {m.name: ensure_media(cache, m) for m in s.media}
    doc_media = [_media_facts(m, media_dirs[m.name]) for m in s.media]
    throughput: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    reps: list[dict[str, Any]] = []

    def raw_name(m: str, px: int) -> str:
        return f"folder:{m}@{px}"

    for mname, px in s.raw_cases if "folder" in sources else ():
        name = raw_name(mname, px)
        log(f"{name}: measuring")
        data = data_config(s, ["data=folder", f"data.path={media_dirs[mname]}", f"data.frame_size={px}"])
        r = measure_case(s, data, RawFloor(s, px), "path")
        throughput.append({"case": name, "source": "folder", "media": mname, "format": "h264_source", "size": px,
                           **r})
        for w in s.workers:
            scaling.append({"case": name, **measure_workers(s, data, w)})
        log(f"{name}: {r['clips_per_cpu_s']:.1f} clips/CPU-s, floor {r['floor_clips_per_cpu_s']:.1f}")

    from avssl.data.manifest import write_manifest

    manifest = work / "manifest.csv"
    write_manifest(manifest, list(scan_folder(media_dirs[s.shard_source])) * s.shard_repeats)
    for rep in s.representations if "shards" in sources else ():
        for px in s.shard_sizes:
            name = f"shards:{rep.name}@{px}"
            out = work / f"shards_{rep.name}_{px}"
            if out.exists():
                shutil.rmtree(out)
            args = shards_command(s, rep, px, os.fspath(manifest), os.fspath(out))
            log(f"{name}: writing")
            _, wall, cpu = _timed(write_representation, args)
            nbytes, hours = _shard_facts(out)
            shown = ["avssl-shards", "MANIFEST", "--out", "DIR", *args[3:]]
            reps.append({"name": name, "format": rep.format, "audio": rep.audio, "logmel": rep.logmel, "size": px,
                         "source": s.shard_source, "command": shlex.join(shown),
                         "write_config": json.loads((out / "index.json").read_text())["config"], "bytes": nbytes,
                         "hours": hours, "bytes_per_hour": nbytes / hours, "write_wall_s_per_hour": wall / hours,
                         "write_cpu_s_per_hour": cpu / hours})
            log(f"{name}: measuring")
            data = data_config(s, ["data=shards", f"data.path={out}", f"data.frame_size={px}"])
            r = measure_case(s, data, ShardFloor(s, out), "key", whole_epochs=True)
            throughput.append({"case": name, "source": "shards", "media": s.shard_source, "format": rep.name,
                               "size": px, **r})
            for w in s.workers:
                scaling.append({"case": name, **measure_workers(s, data, w)})
            log(f"{name}: {r['clips_per_cpu_s']:.1f} clips/CPU-s, floor {r['floor_clips_per_cpu_s']:.1f}")
            if rep.format == "jpeg":  # what a worker feeding a GPU does: uint8 out, normalised on the device
                uname = f"{name} uint8"
                udata = data_config(s, ["data=shards", f"data.path={out}", f"data.frame_size={px}",
                                        "data.normalise_video=device"])
                r = measure_case(s, udata, ShardFloor(s, out), "key", whole_epochs=True)
                throughput.append({"case": uname, "source": "shards", "media": s.shard_source, "format": rep.name,
                                   "size": px, "normalise_video": "device", **r})
                for w in s.workers:  # uint8 batches through shared memory: a quarter of the float bytes
                    scaling.append({"case": uname, **measure_workers(s, udata, w)})
                log(f"{uname}: {r['clips_per_cpu_s']:.1f} clips/CPU-s, floor {r['floor_clips_per_cpu_s']:.1f}")
    return {"media": doc_media, "representations": reps, "throughput": throughput, "scaling": scaling}


def settings_dict(s: Settings) -> dict[str, Any]:
    d = dataclasses.asdict(s)
    d.pop("media")
    return d


# ------------------------------------------------------------------------------------------------ schema

_NUM = (int, float)
TOP_KEYS: dict[str, Any] = {"schema": str, "schema_version": int, "date": str, "command": str, "cwd": str,
                            "mode": str, "machine": dict, "versions": dict, "settings": dict, "media": list,
                            "representations": list, "throughput": list, "scaling": list, "elapsed_s": _NUM}
MACHINE_KEYS: dict[str, Any] = {"cpu_model": str, "cores": int, "load_before": list, "load_after": list,
                                "platform": str}
VERSION_KEYS: dict[str, Any] = {"python": str, "torch": str, "torchvision": str, "av": str, "avssl_git": dict}
MEDIA_KEYS: dict[str, Any] = {"name": str, "width": int, "height": int, "fps": int, "files": int, "duration": _NUM,
                              "bytes": int, "hours": _NUM, "bytes_per_hour": _NUM}
REP_KEYS: dict[str, Any] = {"name": str, "format": str, "audio": str, "logmel": bool, "size": int, "source": str,
                            "command": str, "write_config": dict, "bytes": int, "hours": _NUM,
                            "bytes_per_hour": _NUM, "write_wall_s_per_hour": _NUM, "write_cpu_s_per_hour": _NUM}
THROUGHPUT_KEYS: dict[str, Any] = {"case": str, "source": str, "media": str, "format": str, "size": int,
                                   "clips_per_s": _NUM, "clips_per_cpu_s": _NUM, "floor_clips_per_s": _NUM,
                                   "floor_clips_per_cpu_s": _NUM, "ratio_to_floor": _NUM, "rounds": list}
SCALING_KEYS: dict[str, Any] = {"case": str, "workers": int, "clips": int, "wall_s": _NUM, "clips_per_s": _NUM,
                                "first_batch_s": _NUM}


def _check(obj: Any, keys: dict[str, Any], where: str, problems: list[str]) -> None:
    if not isinstance(obj, dict):
        problems.append(f"{where}: not an object")
        return
    for k, t in keys.items():
        if k not in obj:
            problems.append(f"{where}: missing {k!r}")
        elif (isinstance(obj[k], bool) and t is not bool) or not isinstance(obj[k], t):
            problems.append(f"{where}.{k}: {type(obj[k]).__name__}, expected {t}")
        elif isinstance(obj[k], float) and not np.isfinite(obj[k]):
            problems.append(f"{where}.{k}: not finite")


def validate_result(doc: Any) -> list[str]:
    """Problems with a bench_data JSON (empty when it follows schema ``SCHEMA_VERSION``)."""
    problems: list[str] = []
    _check(doc, TOP_KEYS, "result", problems)
    if problems:
        return problems
    if doc["schema"] != SCHEMA or doc["schema_version"] != SCHEMA_VERSION:
        problems.append(f"result: schema {doc['schema']!r} v{doc['schema_version']}, expected {SCHEMA!r} "
                        f"v{SCHEMA_VERSION}")
    _check(doc["machine"], MACHINE_KEYS, "machine", problems)
    _check(doc["versions"], VERSION_KEYS, "versions", problems)
    for name, keys in (("media", MEDIA_KEYS), ("representations", REP_KEYS), ("throughput", THROUGHPUT_KEYS),
                       ("scaling", SCALING_KEYS)):
        for i, item in enumerate(doc[name]):
            _check(item, keys, f"{name}[{i}]", problems)
    if not doc["throughput"]:
        problems.append("throughput: empty")
    cases = {t.get("case") for t in doc["throughput"]}
    for i, sc in enumerate(doc["scaling"]):
        if sc.get("case") not in cases:
            problems.append(f"scaling[{i}]: case {sc.get('case')!r} has no throughput entry")
    for i, t in enumerate(doc["throughput"]):
        for key in ("clips_per_s", "clips_per_cpu_s", "floor_clips_per_s", "floor_clips_per_cpu_s", "ratio_to_floor"):
            v = t.get(key)
            if isinstance(v, _NUM) and not v > 0:
                problems.append(f"throughput[{i}].{key}: {v} is not positive")
        # added after the first runs (older JSONs lack them): the kernel's share of the CPU time, faults per clip
        for key in ("kernel_share", "minor_faults_per_clip"):
            v = t.get(key)
            if v is not None and not (isinstance(v, _NUM) and not isinstance(v, bool) and v >= 0):
                problems.append(f"throughput[{i}].{key}: {v!r} is not a number >= 0")
    malloc = doc.get("malloc", {"mode": "default", "applied": False})  # older runs: glibc's defaults
    if not (isinstance(malloc, dict) and malloc.get("mode") in ("worker", "default")
            and isinstance(malloc.get("applied"), bool)):
        problems.append(f"malloc: {malloc!r} is not {{'mode': 'worker' | 'default', 'applied': bool}}")
    env = doc["machine"].get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        problems.append(f"machine.env: {env!r} is not a table of strings")
    return problems


# ------------------------------------------------------------------------------------------------ main


def default_cache() -> Path:
    base = os.environ.get("AVSSL_CACHE")
    return Path(base) / "bench_data" if base else Path.home() / ".cache" / "avssl" / "bench_data"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="tiny media, one round, temp output, schema check (CI)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/bench_data_<UTC>.json; "
                                                "--small: a temp folder)")
    ap.add_argument("--cache", default=None, help="generated media (default: $AVSSL_CACHE/bench_data)")
    ap.add_argument("--representations", nargs="+", type=Representation.parse, default=None,
                    help="shard representations FORMAT+AUDIO[+logmel] (default: " +
                         " ".join(r.name for r in REPRESENTATIONS) + ")")
    ap.add_argument("--workers", type=int, nargs="+", default=None, help="DataLoader workers to time (1 2; 16 on "
                                                                          "a 16-core host)")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--sources", nargs="+", choices=("folder", "shards"), default=["folder", "shards"])
    ap.add_argument("--malloc", choices=("worker", "default"), default="worker",
                    help="worker (default): this process keeps freed memory as avssl's DataLoader workers do "
                         "(data.worker_retain_memory, glibc mallopt), so the one-process rounds see a worker's "
                         "allocator; default: glibc's own thresholds")
    ap.add_argument("--tag", default=None, help="label a side run (e.g. an older avssl on PYTHONPATH); the report "
                                                 "takes its main tables from untagged runs only")
    args = ap.parse_args(argv)
    s = SMALL if args.small else FULL
    if args.representations:
        s = dataclasses.replace(s, representations=tuple(args.representations))
    if args.workers:
        s = dataclasses.replace(s, workers=tuple(args.workers))
    if args.rounds:
        s = dataclasses.replace(s, rounds=args.rounds)
    malloc = set_allocator(args.malloc)
    t0 = time.perf_counter()
    load_before = load_average()
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory(prefix="avssl_bench_") as tmp:
        cache = Path(args.cache) if args.cache else (Path(tmp) / "cache" if args.small else default_cache())

        def log(msg: str) -> None:
            print(f"[{time.perf_counter() - t0:6.1f} s] {msg}", flush=True)

        body = run(s, cache, Path(tmp), log, args.sources)
        doc = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "date": started.isoformat(timespec="seconds"),
            "command": command_line(argv, "bench_data.py"), "cwd": os.getcwd(), "mode": s.mode, "tag": args.tag,
            "environment": {k: os.environ[k] for k in ("PYTHONPATH", "OMP_NUM_THREADS") if k in os.environ},
            "machine": machine_facts(load_before), "versions": versions(), "settings": settings_dict(s), **body,
            "malloc": malloc, "elapsed_s": time.perf_counter() - t0,
        }
        problems = validate_result(doc)
        if problems:
            raise SystemExit("bench_data: the result breaks its schema:\n  " + "\n  ".join(problems))
        if args.out:
            out = Path(args.out)
        elif args.small:
            out = Path(tmp) / "bench_data_small.json"
        else:
            out = RESULTS_DIR / f"bench_data_{started.strftime('%Y%m%dT%H%M%SZ')}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        part.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(part, out)
        print(f"wrote {out} ({doc['elapsed_s']:.0f} s; load average {load_before} -> {doc['machine']['load_after']})")
        for t in doc["throughput"]:
            print(f"  {t['case']:<34} {t['clips_per_cpu_s']:7.1f} clips/CPU-s  floor {t['floor_clips_per_cpu_s']:7.1f}"
                  f"  ratio {t['ratio_to_floor']:.2f}  wall {t['clips_per_s']:.1f} clips/s")
    return doc


if __name__ == "__main__":
    main()
