"""Benchmark avssl-prep on generated media: probe throughput, normalisation speed beside the simplest PyAV loop,
the measuring pass of ``normalise.enabled=false`` beside a decode-only loop, and the cost of reading a window from a long normalised recording versus a cut file.

    PYTHONPATH=. python benchmarks/bench_prep.py [--seconds 20] [--size 640x360] [--long-s 600]

Prints a Markdown table (paste into docs/benchmarks.md, section "Preprocessing"). Single process, one core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from avssl.data.media import probe, read_av_window
from avssl.data_tools.discover import probe_all
from avssl.data_tools.normalise import NormaliseOptions, normalise_recording


def make_media(path: Path, seconds: float, w: int, h: int, fps: int = 30, sr: int = 48000, gop: int = 30) -> None:
    """A moving gradient with a tone; H.264 (ultrafast) + AAC in MP4."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.options = {"preset": "ultrafast", "g": str(gop)}
        a = out.add_stream("aac", rate=sr, layout="stereo")
        n = int(seconds * fps)
        for k in range(n):
            img = np.roll(base, 4 * k, axis=1)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = k, Fraction(1, fps)
            out.mux(vs.encode(f))
        out.mux(vs.encode(None))
        t = np.arange(int(seconds * sr)) / sr
        y = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for i in range(0, len(y), 1024):
            c = y[i:i + 1024]
            af = av.AudioFrame.from_ndarray(np.stack([c, c]), format="fltp", layout="stereo")
            af.sample_rate, af.pts, af.time_base = sr, i, Fraction(1, sr)
            out.mux(a.encode(af))
        out.mux(a.encode(None))


def plain_loop(src: Path, dst: Path, short: int = 256, fps: int = 30, sr: int = 16000) -> None:
    """The simplest PyAV transcode with the same target (no CFR logic, no stats, no placement by timestamps)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        v, a = inp.streams.video[0], inp.streams.audio[0]
        w = int(round(v.width * short / v.height / 2) * 2)
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, short, "yuv420p"
        vs.codec_context.thread_count = 1
        vs.codec_context.options = {"preset": "veryfast", "crf": "23", "x264-params": "keyint=30:threads=1"}
        aus = out.add_stream("aac", rate=sr, layout="mono")
        rs = av.AudioResampler(format="fltp", layout="mono", rate=sr)
        k = 0
        for pkt in inp.demux(v, a):
            for fr in pkt.decode():
                if isinstance(fr, av.VideoFrame):
                    g = fr.reformat(width=w, height=short, format="yuv420p")
                    g.pts, g.time_base = k, Fraction(1, fps)
                    k += 1
                    out.mux(vs.encode(g))
                else:
                    for r in rs.resample(fr):
                        out.mux(aus.encode(r))
        out.mux(vs.encode(None))
        out.mux(aus.encode(None))


def decode_only(src: Path) -> None:
    """The floor of a measuring pass: demux and decode both streams, nothing else."""
    with av.open(str(src)) as inp:
        for pkt in inp.demux(inp.streams.video[0], inp.streams.audio[0]):
            pkt.decode()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the normalisation test file")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--files", type=int, default=40, help="files for the probe throughput test")
    ap.add_argument("--long-s", type=float, default=600.0, help="length of the long recording (window cost)")
    args = ap.parse_args(argv)
    w, h = (int(x) for x in args.size.split("x"))
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        src = tmp / "src.mp4"
        make_media(src, args.seconds, w, h)
        (tmp / "many").mkdir()
        make_media(tmp / "many" / "f0.mp4", 5.0, 160, 120)
        for i in range(1, args.files):
            os.link(tmp / "many" / "f0.mp4", tmp / "many" / f"f{i}.mp4")
        rels = [f"f{i}.mp4" for i in range(args.files)]
        t0 = time.perf_counter()
        probe_all(tmp / "many", rels, tmp / "cache", workers=1)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        probe_all(tmp / "many", rels, tmp / "cache", workers=1)
        warm = time.perf_counter() - t0
        rows += [("probe, cold (files/s, 1 core)", f"{args.files / cold:.0f}"),
                 ("probe, cached (files/s)", f"{args.files / warm:.0f}")]

        info = probe(src)
        t0 = time.perf_counter()
        normalise_recording(src, tmp / "norm.mp4", info, NormaliseOptions())
        t_norm = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain_loop(src, tmp / "plain.mp4")
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        normalise_recording(src, tmp / "measured", info, NormaliseOptions(), encode=False)
        t_measure = time.perf_counter() - t0
        t0 = time.perf_counter()
        decode_only(src)
        t_decode = time.perf_counter() - t0
        rows += [(f"normalise {w}x{h} 30 fps -> short side 256 (x real time, 1 core)", f"{args.seconds / t_norm:.1f}"),
                 ("simplest PyAV loop, same target (x real time, 1 core)", f"{args.seconds / t_plain:.1f}"),
                 ("normalise.enabled=false: measuring pass only (x real time, 1 core)", f"{args.seconds / t_measure:.1f}"),
                 ("decode both streams, nothing else (x real time, 1 core)", f"{args.seconds / t_decode:.1f}")]

        long_src = tmp / "long.mp4"
        make_media(long_src, args.long_s, 160, 96)
        long_norm = tmp / "long_norm.mp4"
        normalise_recording(long_src, long_norm, probe(long_src), NormaliseOptions(short_side=96))
        cut_src, cut = tmp / "cut_src.mp4", tmp / "cut.mp4"
        make_media(cut_src, 60.0, 160, 96)
        normalise_recording(cut_src, cut, probe(cut_src), NormaliseOptions(short_side=96))  # same codec settings
        rng = np.random.default_rng(0)
        for name, path, span in (("long", long_norm, args.long_s), ("cut 60 s", cut, 60.0)):
            starts = rng.uniform(0, span - 2.5, 30)
            t0 = time.perf_counter()
            for s in starts:
                read_av_window(path, float(s), 2.0, fps=8.0)
            rows.append((f"2 s window from a {span:.0f} s file ({name}), ms", f"{(time.perf_counter() - t0) / 30 * 1e3:.1f}"))
            t0 = time.perf_counter()
            for _ in range(30):
                with av.open(str(path)):
                    pass
            rows.append((f"open a {span:.0f} s file ({name}), ms", f"{(time.perf_counter() - t0) / 30 * 1e3:.2f}"))
    print(f"| measure (PyAV {av.__version__}, Python {sys.version.split()[0]}) | value |")
    print("| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
