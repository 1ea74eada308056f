"""The raw-file decode path (issue 13): ``data=folder`` clips/s, and ``read_av_window`` against plain PyAV.

    python benchmarks/bench_raw_decode.py folder [--dir DIR] [--batches 24] [--override data.decode_size=null]
    python benchmarks/bench_raw_decode.py window [--dir DIR] [--windows 120] [--size 112]
    python benchmarks/bench_raw_decode.py decode-size [--dir DIR] [--batches 12]
    python benchmarks/bench_raw_decode.py table --json benchmarks/results/raw_decode.jsonl

Media: 640x480 25 fps H.264 (2 s GOP) + AAC 16 kHz recordings made with the tests' generator
(``tests/mediagen.py``), 12 files of 12 s (a quarter held out for validation), cached in ``--dir`` (default ``/tmp/avssl_bench_raw``).

- ``folder``: ``avssl-train``'s DataModule with ``data=folder`` (the config's defaults: 4 x 0.5 s segments at
  8 fps, 112 px, 128-bin log-mel), one torch thread, ``num_workers=0``, batches of 8 clips; the first batch is
  left out. Prints one JSON line (clips/s). Runs against any installed avssl (an override the config does not
  know is dropped with a note), so the same command measures another commit's install.
- ``window``: random 2 s windows (16 frames at 8 fps, ``--size`` short side, 16 kHz mono audio) read by
  ``read_av_window`` (a fresh open per window) and by ``MediaReader.read`` (kept open), each interleaved window
  by window with plain PyAV doing the same work on the same window (the same seeks, frames, swscale resize to
  RGB and audio resampling; a fresh ``av.open`` per window, FFmpeg's default threads, for the first pair; one
  decoder thread for the second; the third as the second with every picture decoded, ``_pyav.SKIP_UNSHOWN =
  False``, like for like with plain PyAV; the fourth as the third against a plain PyAV that also reuses one
  scaler writing planar RGB, so that only avssl's bookkeeping differs).
  Prints the ratios (plain time / avssl time: 1.0 = no overhead), by wall time and by process CPU time.
- ``decode-size``: ``data.decode_size=auto`` and ``null`` interleaved batch by batch in one process.
- ``table``: the Markdown table of docs/decoders.md from the JSON lines saved with ``--json``.

The machine is shared and noisy: compare ratios measured in one process, and give ``uptime``'s load with them.
Each figure is given by wall time and by this process's CPU time (``time.process_time``), which a loaded machine
disturbs far less (the work is single-threaded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from plain_floor import frames_on_screen

REPO = Path(__file__).resolve().parents[1]
WIN, FPS, SR = 2.0, 8, 16000


def make_media(folder: str, n: int = 12, seconds: float = 12.0) -> list[str]:
    """``n`` 640x480 25 fps H.264 + AAC files (the tests' generator; each with its own event times)."""
    sys.path.insert(0, str(REPO / "tests"))
    from mediagen import make_av_file

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"rec{i:02d}.mp4")
        if not os.path.exists(p):
            tmp = os.path.join(folder, f".rec{i:02d}.part.mp4")
            events = tuple(0.4 + 0.11 * i + 1.3 * k for k in range(int(seconds / 1.3)))
            make_av_file(tmp, duration=seconds, fps=25, size=(640, 480), events=events)
            os.replace(tmp, p)
        paths.append(p)
    return paths


def versions() -> dict[str, Any]:
    import avssl

    return {"avssl_file": os.path.dirname(avssl.__file__), "av": av.__version__,
            "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])), "torch": torch.__version__,
            "python": platform.python_version(), "machine": platform.machine(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


# --------------------------------------------------------------------------------------------- folder clips/s
def data_module(folder: str, overrides: list[str]) -> Any:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from avssl.lit.datamodule import AVDataModule

    base = ["data=folder", f"data.path={folder}", "data.batch_size=8", "data.num_workers=0",
            "data.persistent_workers=false", "data.pin_memory=false", "data.val_fraction=0.25"]
    with initialize_config_module("avssl.conf", version_base="1.3"):
        probe_cfg = compose("train", overrides=base)
        known = []
        for o in overrides:
            key = o.split("=", 1)[0].lstrip("+")
            if OmegaConf.select(probe_cfg, key, default="__missing__") == "__missing__":
                print(json.dumps({"note": f"this avssl has no {key}; override {o!r} dropped"}))
            else:
                known.append(o)
        cfg = OmegaConf.to_container(compose("train", overrides=base + known), resolve=True)
    assert isinstance(cfg, dict)
    dm = AVDataModule(cfg["data"], seed=0)
    dm.setup("fit")
    return dm, cfg["data"]


def batches(dm: Any) -> Any:
    """Train batches forever (a new epoch when one ends)."""
    epoch = 0
    while True:
        loader = dm.train_dataloader()
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_folder(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    make_media(args.dir)
    dm, data = data_module(args.dir, args.override)
    it = batches(dm)
    next(it)  # warm-up: opens the files
    t0, c0 = time.perf_counter(), time.process_time()
    clips = 0
    for _ in range(args.batches):
        clips += int(next(it)["video"].shape[0])
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"mode": "folder", "clips": clips, "seconds": round(dt, 3), "clips_per_s": round(clips / dt, 2),
            "cpu_seconds": round(cpu, 3), "clips_per_cpu_s": round(clips / cpu, 2),
            "frame_size": data["frame_size"], "decode_size": data.get("decode_size", "<absent>"),
            "overrides": args.override, **versions()}


def bench_decode_size(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    make_media(args.dir)
    runs = {v: batches(data_module(args.dir, args.override + [f"data.decode_size={v}"])[0]) for v in ("auto", "null")}
    for it in runs.values():
        next(it)
    spent = {v: 0.0 for v in runs}
    cpu = {v: 0.0 for v in runs}
    clips = {v: 0 for v in runs}
    for _ in range(args.batches):
        for v, it in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            clips[v] += int(next(it)["video"].shape[0])
            spent[v] += time.perf_counter() - t0
            cpu[v] += time.process_time() - c0
    rate = {v: clips[v] / spent[v] for v in runs}
    cpu_rate = {v: clips[v] / cpu[v] for v in runs}
    return {"mode": "decode-size", "clips_per_s": {v: round(r, 2) for v, r in rate.items()},
            "clips_per_cpu_s": {v: round(r, 2) for v, r in cpu_rate.items()},
            "auto_over_null": round(rate["auto"] / rate["null"], 3),
            "auto_over_null_cpu": round(cpu_rate["auto"] / cpu_rate["null"], 3), **versions()}


# ------------------------------------------------------------------------------------ read_av_window vs PyAV
def plain_pyav(container: Any, start: float, size: int, reformatter: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Plain PyAV: seek to the keyframe before the window, decode, keep the frame on screen at each target,
    swscale each kept frame to ``size`` short side in RGB (``frame.reformat(format="rgb24")``, as
    benchmarks/bench_media.py's floor; with ``reformatter``: one reused scaler writing planar RGB, what avssl does
    since issue 13); audio sought 0.5 s early, resampled, placed by pts."""
    vs, ast = container.streams.video[0], container.streams.audio[0]
    origin = Fraction(container.start_time or 0, av.time_base)
    targets = start + np.arange(int(WIN * FPS)) / FPS
    container.seek(int((start + origin) / vs.time_base), stream=vs, backward=True)
    chosen = frames_on_screen(container.decode(vs), targets, float(origin))
    h, w = size, int(round(vs.codec_context.width * size / vs.codec_context.height))
    if reformatter is None:
        frames = np.stack([f.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
                           for f in chosen])
    else:
        frames = np.stack([reformatter.reformat(f, width=w, height=h, format="gbrp", interpolation="BILINEAR")
                           .to_ndarray() for f in chosen])
    container.seek(int((max(start - 0.5, 0) + origin) / ast.time_base), stream=ast, backward=True)
    rs = av.AudioResampler(format="fltp", layout="mono", rate=SR)
    buf = np.zeros(int(WIN * SR), np.float32)
    for f in container.decode(ast):
        if float(f.pts * f.time_base - origin) > start + WIN + 0.1:
            break
        for o in rs.resample(f):
            i0 = int(round((float(o.pts * o.time_base - origin) - start) * SR))
            a = o.to_ndarray()[0]
            lo, hi = max(i0, 0), min(i0 + len(a), len(buf))
            if hi > lo:
                buf[lo:hi] = a[lo - i0 : hi - i0]
    return frames, buf


def bench_window(args: argparse.Namespace) -> dict[str, Any]:
    from avssl.data import _pyav
    from avssl.data.media import MediaReader, read_av_window

    torch.set_num_threads(1)
    paths = make_media(args.dir)
    rng = np.random.default_rng(0)
    with av.open(paths[0]) as c:
        dur = float(c.duration / av.time_base)
    jobs = [(paths[int(rng.integers(len(paths)))], float(rng.uniform(0, dur - WIN - 0.1))) for _ in range(args.windows)]
    out: dict[str, Any] = {"mode": "window", "windows": args.windows, "size": args.size}

    def plain_reopen(p: str, s: float) -> None:  # FFmpeg's default threading, as read_av_window has
        with av.open(p) as c:
            plain_pyav(c, s, args.size)

    def avssl_reopen(p: str, s: float) -> None:
        read_av_window(p, s, WIN, fps=FPS, size=args.size, sample_rate=SR)

    readers = {p: MediaReader(p, threads=1) for p in paths}
    conts = {p: av.open(p) for p in paths}
    for c in conts.values():
        for st in c.streams:
            st.codec_context.thread_count = 1
    for p in paths:  # open and probe both before timing
        readers[p].read(0.0, WIN, fps=FPS, size=args.size)
        plain_pyav(conts[p], 0.0, args.size)

    def plain_open(p: str, s: float) -> None:
        plain_pyav(conts[p], s, args.size)

    rf = av.video.reformatter.VideoReformatter()

    def plain_open_same_scaler(p: str, s: float) -> None:  # the tighter floor: avssl's own conversion
        plain_pyav(conts[p], s, args.size, rf)

    def avssl_open(p: str, s: float) -> None:
        readers[p].read(s, WIN, fps=FPS, size=args.size, sample_rate=SR)

    def avssl_open_decode_all(p: str, s: float) -> None:  # like for like: every picture decoded, as plain PyAV
        _pyav.SKIP_UNSHOWN = False
        try:
            readers[p].read(s, WIN, fps=FPS, size=args.size, sample_rate=SR)
        finally:
            _pyav.SKIP_UNSHOWN = True

    # interleaved window by window, alternating which goes first; wall and process CPU time
    for name, pair in (("reopen", (plain_reopen, avssl_reopen)), ("kept_open", (plain_open, avssl_open)),
                       ("kept_open_decode_all", (plain_open, avssl_open_decode_all)),
                       ("tight_floor_decode_all", (plain_open_same_scaler, avssl_open_decode_all))):
        wall, cpu = [0.0, 0.0], [0.0, 0.0]
        for i, (p, s) in enumerate(jobs):
            for which in ((0, 1) if i % 2 == 0 else (1, 0)):
                t0, c0 = time.perf_counter(), time.process_time()
                pair[which](p, s)
                wall[which] += time.perf_counter() - t0
                cpu[which] += time.process_time() - c0
        out[name] = {"plain_win_per_s": round(len(jobs) / wall[0], 2), "avssl_win_per_s": round(len(jobs) / wall[1], 2),
                     "ratio": round(wall[0] / wall[1], 3), "plain_win_per_cpu_s": round(len(jobs) / cpu[0], 2),
                     "avssl_win_per_cpu_s": round(len(jobs) / cpu[1], 2), "ratio_cpu": round(cpu[0] / cpu[1], 3)}
    for r in readers.values():
        r.close()
    for c in conts.values():
        c.close()
    return {**out, **versions()}


def table(path: str) -> str:
    """The Markdown table of docs/decoders.md from the saved JSON lines (medians over runs of each code)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]

    def med(xs: list[float]) -> float:
        return float(np.median(xs)) if xs else float("nan")

    def who(r: dict[str, Any]) -> str:
        return "after" if "site-packages" in r["avssl_file"] else "before"

    out = ["| measure | before (main 5e1f92d) | after | after / before |", "| --- | --- | --- | --- |"]
    for key, label in (("clips_per_s", "`data=folder` clips/s (wall)"),
                       ("clips_per_cpu_s", "`data=folder` clips per CPU-second")):
        b = med([r[key] for r in rows if r["mode"] == "folder" and who(r) == "before"])
        a = med([r[key] for r in rows if r["mode"] == "folder" and who(r) == "after"])
        out.append(f"| {label} | {b:.1f} | {a:.1f} | {a / b:.2f}x |")
    for size in sorted({r["size"] for r in rows if r["mode"] == "window"}):
        for pair, label in (("reopen", "read_av_window / plain PyAV, reopening"),
                            ("kept_open", "MediaReader.read / plain PyAV, kept open"),
                            ("tight_floor_decode_all", "MediaReader.read (decode all) / plain PyAV with its scaler")):
            vals = {w: med([r[pair]["ratio_cpu"] for r in rows if r["mode"] == "window" and r["size"] == size
                            and who(r) == w]) for w in ("before", "after")}
            out.append(f"| {label}, {size} px (CPU time ratio) | {vals['before']:.3f} | {vals['after']:.3f} | |")
    for r in rows:
        if r["mode"] == "decode-size":
            c, w = r["clips_per_cpu_s"], r["clips_per_s"]
            out.append(f"| in one process: decode_size auto / null, clips/s wall (CPU) | {w['null']:.1f} "
                       f"({c['null']:.1f}) | {w['auto']:.1f} ({c['auto']:.1f}) | {r['auto_over_null']:.2f}x "
                       f"({r['auto_over_null_cpu']:.2f}x) |")
    loads = [r["load_avg"][0] for r in rows]
    dates = sorted(r["date"] for r in rows if "date" in r)
    when = f", {dates[0]} to {dates[-1]}" if dates else ""
    out.append(f"\nLoad average (1 min) at the end of the runs: {min(loads):.1f}-{max(loads):.1f} on "
               f"{os.cpu_count()} cores; {len(rows)} runs{when}.")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["folder", "window", "decode-size", "table"])
    ap.add_argument("--dir", default="/tmp/avssl_bench_raw", help="the generated media (made once)")
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--windows", type=int, default=120)
    ap.add_argument("--size", type=int, default=112)
    ap.add_argument("--override", action="append", default=[], help="a config override (repeatable)")
    ap.add_argument("--json", default=None, help="also append the result to this JSON-lines file")
    args = ap.parse_args()
    if args.mode == "table":
        print(table(args.json))
        return
    fn = {"folder": bench_folder, "window": bench_window, "decode-size": bench_decode_size}[args.mode]
    res = fn(args)
    line = json.dumps(res)
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
