"""Aligned-window read speed of avssl.data.media against a plain-PyAV floor (not a test).

    PYTHONPATH=. taskset -c 0 python benchmarks/bench_media.py [--windows 200] [--mem-reads 5000] [--hour]

Windows: 2 s, 16 frames at 8 fps resized to 224 short side, 16 kHz mono audio + its log-mel. Files are generated
(640x480, 30 fps, H.264 with a 2 s GOP, AAC 16 kHz) and cached under /tmp/avssl_bench.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import time
from fractions import Fraction

import av
import numpy as np
import torch
from plain_floor import frames_on_screen

from avssl.data.media import MediaReader

CACHE = "/tmp/avssl_bench"
WIN, FPS, SIZE, SR = 2.0, 8, 224, 16000


def make_file(
    path: str, seconds: float, preset: str = "veryfast", width: int = 640, height: int = 480
) -> str:
    """640x480 (default) 30 fps H.264 (GOP 2 s) + AAC 16 kHz; a moving bar over a few cycled backgrounds (cheap)."""
    if os.path.exists(path):
        return path
    tmp = path + ".part.mp4"
    with av.open(tmp, "w") as out:
        vs = out.add_stream("libx264", rate=30)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.codec_context.gop_size = 60
        vs.codec_context.options = {"preset": preset, "crf": "23"}
        ast = out.add_stream("aac", rate=SR)
        ast.codec_context.layout = "mono"
        rng = np.random.default_rng(0)
        bases = [
            rng.integers(0, 255, (height // 16, width // 16, 3), dtype=np.uint8).repeat(16, 0).repeat(16, 1)
            for _ in range(4)
        ]
        n_frames = int(seconds * 30)
        apos = 0
        for i in range(n_frames):
            img = bases[(i // 90) % 4].copy()
            x = (i * 7) % (width - 40)
            img[:, x : x + 40] = 255
            fr = av.VideoFrame.from_ndarray(img, format="rgb24")
            fr.pts = i
            fr.time_base = Fraction(1, 30)
            for p in vs.encode(fr):
                out.mux(p)
            while apos < (i + 1) * SR / 30:
                t = (apos + np.arange(1024)) / SR
                a = (0.1 * np.sin(2 * np.pi * 440 * t) * (1 + np.sin(t))).astype(np.float32)[None]
                af = av.AudioFrame.from_ndarray(a, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = SR, apos, Fraction(1, SR)
                for p in ast.encode(af):
                    out.mux(p)
                apos += 1024
        for s in (vs, ast):
            for p in s.encode(None):
                out.mux(p)
    os.replace(tmp, path)
    return path


def make_long_file(path: str, source: str, repeats: int) -> str:
    """An hour-long file at no encoding cost: the packets of ``source`` repeated with shifted timestamps."""
    if os.path.exists(path):
        return path
    tmp = path + ".part.mp4"
    with av.open(source) as src, av.open(tmp, "w") as out:
        ins = [src.streams.video[0], src.streams.audio[0]]
        outs = [out.add_stream_from_template(s) for s in ins]
        lo: dict[int, int] = {}
        hi: dict[int, int] = {}
        for pkt in src.demux(ins):  # each stream's dts span, so that repeats keep dts increasing
            if pkt.dts is not None:
                i = pkt.stream.index
                lo[i] = min(lo.get(i, pkt.dts), pkt.dts)
                hi[i] = max(hi.get(i, pkt.dts), pkt.dts + max(pkt.duration or 0, 1))
        span = {i: hi[i] - lo[i] for i in lo}
        for r in range(repeats):
            src.seek(0)
            for pkt in src.demux(ins):
                if pkt.dts is None:
                    continue
                off = r * span[pkt.stream.index]
                pkt.pts = None if pkt.pts is None else pkt.pts + off
                pkt.dts += off
                pkt.stream = outs[ins.index(pkt.stream)]
                out.mux(pkt)
    os.replace(tmp, path)
    return path


def log_mel(wave: torch.Tensor) -> torch.Tensor:
    try:
        from avssl.data.features import log_mel as lm  # project default (Kaldi fbank, 16 kHz)
    except ImportError:
        lm = None
    if lm is not None:
        return lm(wave)
    else:
        import torchaudio

        w = wave[None] - wave.mean()
        return torchaudio.compliance.kaldi.fbank(
            w,
            htk_compat=True,
            sample_frequency=SR,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=128,
            dither=0.0,
            frame_shift=10,
        )


def floor_read(container, start: float) -> tuple[np.ndarray, np.ndarray]:
    """Plain PyAV: the same seeks, the same packets/frames, the same resize and resampling; no bookkeeping."""
    vs, ast = container.streams.video[0], container.streams.audio[0]
    targets = start + np.arange(int(WIN * FPS)) / FPS
    container.seek(int(start / vs.time_base), stream=vs, backward=True)
    chosen = frames_on_screen(container.decode(vs), targets)
    h = SIZE
    w = int(round(640 * SIZE / 480))
    frames = np.stack(
        [f.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray() for f in chosen]
    )
    container.seek(int(max(start - 0.5, 0) / ast.time_base), stream=ast, backward=True)
    rs = av.AudioResampler(format="fltp", layout="mono", rate=SR)
    buf = np.zeros(int(WIN * SR), np.float32)
    for f in container.decode(ast):
        t = float(f.pts * f.time_base)
        if t > start + WIN + 0.1:
            break
        for o in rs.resample(f):
            i0 = int(round((float(o.pts * o.time_base) - start) * SR))
            a = o.to_ndarray()[0]
            lo, hi = max(i0, 0), min(i0 + len(a), len(buf))
            if hi > lo:
                buf[lo:hi] = a[lo - i0 : hi - i0]
    return frames, buf


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_file(path: str, n: int, seed: int = 0) -> dict:
    torch.set_num_threads(1)
    with av.open(path) as c:
        dur = float(c.duration / av.time_base)
    starts = np.random.default_rng(seed).uniform(0, dur - WIN - 0.1, n)
    res: dict = {"file": path, "duration_s": round(dur, 1), "windows": n}
    # opening cost
    t0 = time.perf_counter()
    for _ in range(20):
        with av.open(path) as c:
            pass
    res["open_pyav_ms"] = (time.perf_counter() - t0) / 20 * 1e3
    t0 = time.perf_counter()
    for _ in range(20):
        with MediaReader(path) as r:
            _ = r.info
    res["open_probe_ms"] = (time.perf_counter() - t0) / 20 * 1e3
    # floor and avssl, both with the container kept open, interleaved window by window (the machine is noisy)
    t_floor = t_avssl = 0.0
    with av.open(path) as c, MediaReader(path, threads=1) as r:
        for st in c.streams:
            st.codec_context.thread_count = 1
        for s in starts:
            t0 = time.perf_counter()
            frames, wave = floor_read(c, float(s))
            log_mel(torch.from_numpy(wave))
            t1 = time.perf_counter()
            w = r.read(float(s), WIN, fps=FPS, size=SIZE, sample_rate=SR)
            log_mel(w.audio)
            t2 = time.perf_counter()
            t_floor += t1 - t0
            t_avssl += t2 - t1
    res["floor_win_per_s"] = n / t_floor
    res["avssl_win_per_s"] = n / t_avssl
    # avssl, reopening for every window (read_av_window path)
    t0 = time.perf_counter()
    for s in starts[: max(n // 2, 1)]:
        with MediaReader(path, threads=1) as r:
            w = r.read(float(s), WIN, fps=FPS, size=SIZE, sample_rate=SR)
    res["avssl_reopen_win_per_s"] = max(n // 2, 1) / (time.perf_counter() - t0)
    res["overhead_pct"] = 100 * (res["floor_win_per_s"] / res["avssl_win_per_s"] - 1)
    return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()}


def bench_memory(path: str, reads: int) -> dict:
    with av.open(path) as c:
        dur = float(c.duration / av.time_base)
    starts = np.random.default_rng(1).uniform(0, dur - WIN - 0.1, reads)
    r = MediaReader(path, threads=1)
    r.read(0.0, WIN, fps=FPS, size=SIZE)
    gc.collect()
    base = rss_mb()
    marks = {}
    for i, s in enumerate(starts, 1):
        r.read(float(s), WIN, fps=FPS, size=SIZE)
        if i in (reads // 10, reads // 2, reads):
            gc.collect()
            marks[i] = round(rss_mb() - base, 1)
    r.close()
    return {"file": path, "reads": reads, "rss_start_mb": round(base, 1), "rss_growth_mb": marks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--windows", type=int, default=100)
    ap.add_argument("--mem-reads", type=int, default=0)
    ap.add_argument(
        "--hour", action="store_true", help="also benchmark a generated 1-hour file (slow to make)"
    )
    args = ap.parse_args()
    os.makedirs(CACHE, exist_ok=True)
    versions = {
        "av": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
        "torch": torch.__version__,
    }
    print(json.dumps({"versions": versions}))
    short = make_file(os.path.join(CACHE, "bench_60s.mp4"), 60)
    print(json.dumps(bench_file(short, args.windows)))
    if args.hour:
        long = make_long_file(os.path.join(CACHE, "bench_1h.mp4"), short, 60)
        print(json.dumps(bench_file(long, max(args.windows // 2, 10))))
    if args.mem_reads:  # a small file, so that 5,000 reads finish in minutes on a shared machine
        small = make_file(os.path.join(CACHE, "bench_60s_160.mp4"), 60, width=160, height=128)
        print(json.dumps(bench_memory(small, args.mem_reads)))


if __name__ == "__main__":
    main()
