"""The shard reader against its floor: clips/s of one thread (CPU time) for each shard representation and frame
size, beside the plainest decoding of the same frames and audio from the same bytes. Prints one JSON line.

    python benchmarks/bench_shard_reader.py [--sizes 112 224] [--rounds 5] [--crop full rrc] [--profile CASE]

Media: ``--files`` synthetic recordings (320x240, 25 fps H.264, 16 kHz PCM; textured, moving) are written once
under ``--cache`` and cut into shards by ``avssl.data_tools.shards.write_shards`` (format jpeg, audio pcm, with and
without a stored log-mel) at each size. Clips: 4 x 0.5 s segments at 8 fps, a 128-bin Kaldi log-mel, the training
``VideoTransform`` with one of two crops: ``full`` (the config default ``augment.crop_scale: [1, 1]``,
``crop_ratio: [1, 1]``: the square at the training size, no resize) or ``rrc`` (random resized crop, scale
[0.2, 1], ratio [3/4, 4/3]); horizontal flip 0.5.

- reader: ``ShardedClipDataset._decode`` on every sample, its bytes already in memory (what a worker does with each
  sample WebDataset hands it): frames decoded, cut, cropped, normalised, log-mel (computed or stored), the dict;
  each sample is dropped once made (``--batch B``: collated in batches of B first);
- floor: the same samples' bytes, the same clip's frames decoded in one ``torchvision.io.decode_jpeg`` call and its
  audio window sliced from the int16 PCM to float (or its stored log-mel rows sliced); nothing else;
- bound: the floor's decode plus only the work a clip needs and the floor leaves out, with avssl's kernels and
  none of the reader's bookkeeping (``bound_clip``: the crop, flip and output type written into a batch slot, the
  normalised log-mel computed or sliced): the most any reader can reach with these kernels.

Reader and floor passes alternate, ``--rounds`` times (each round a new epoch: new clips, the same for both); the
figures are medians over rounds, ``ratio`` the median of per-round ``floor CPU s / reader CPU s`` (1 = at the
floor). CPU time of this thread (``time.thread_time``) with ``torch.set_num_threads(1)``: robust to a shared machine's
load, which is printed too. ``--profile CASE`` (e.g. ``112-pcm-full``) prints the reader's cProfile (CPU time) to
stderr. Page faults per clip are reported beside: a fresh float video per clip is first touched page by page, and
whether its pages are fresh depends on the allocator (``--malloc retain`` keeps freed memory for reuse).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

SEGMENTS, SEG_DUR, FPS, SR, MELS = 4, 0.5, 8.0, 16000, 128
VIDEO_MEAN, VIDEO_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
CROPS = {"full": ((1.0, 1.0), (1.0, 1.0)), "rrc": ((0.2, 1.0), (3 / 4, 4 / 3))}


# ------------------------------------------------------------------------------------------------ media


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise (a few octaves, bilinear upsampling) in 0..255: compresses like a natural picture."""
    out = np.zeros((h, w, 3), np.float64)
    for cell, amp in ((32, 1.0), (8, 0.5), (2, 0.25)):
        g = rng.random((h // cell + 2, w // cell + 2, 3))
        yi, xi = np.arange(h) / cell, np.arange(w) / cell
        y0, x0 = yi.astype(int), xi.astype(int)
        fy, fx = (yi - y0)[:, None, None], (xi - x0)[None, :, None]
        a, b = g[y0][:, x0], g[y0][:, x0 + 1]
        c, d = g[y0 + 1][:, x0], g[y0 + 1][:, x0 + 1]
        out += amp * ((1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d))
    out -= out.min()
    return (255 * out / out.max()).astype(np.uint8)


def make_recording(path: Path, index: int, seconds: float, size: tuple[int, int] = (320, 240), fps: int = 25) -> None:
    """A panning texture with a moving square and noise plus tone bursts (the same bytes for the same index)."""
    import av

    from avssl.data.encoding import add_h264_stream

    rng = np.random.default_rng(index)
    w, h = size
    tex = _texture(rng, 2 * h, 2 * w)
    n = round(seconds * fps)
    t = np.arange(round(seconds * SR)) / SR
    wave = 0.05 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 440 * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    pcm = np.clip(np.round(wave * 32767), -32768, 32767).astype(np.int16)
    tmp = path.with_suffix(".tmp.mkv")
    with av.open(str(tmp), "w") as c:
        vs = add_h264_stream(c, fps=Fraction(fps), width=w, height=h, gop=2 * fps)
        st = c.add_stream("pcm_s16le", rate=SR, layout="mono")
        for i in range(n):
            y, x = int(h / 2 * (1 + np.sin(i / 40))), int(w / 2 * (1 + np.cos(i / 55)))
            img = tex[y : y + h, x : x + w].copy()
            sy, sx = int((h - 40) * (0.5 + 0.5 * np.sin(i / 9))), int((w - 40) * (0.5 + 0.5 * np.cos(i / 13)))
            img[sy : sy + 40, sx : sx + 40] = (255, 40, 40)
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for pkt in vs.encode(vf):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        for a in range(0, pcm.size, 1600):
            af = av.AudioFrame.from_ndarray(pcm[None, a : a + 1600].copy(), format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = SR, a, Fraction(1, SR)
            for pkt in st.encode(af):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    os.replace(tmp, path)


def ensure_shards(cache: Path, files: int, seconds: float, size: int, logmel: bool) -> Path:
    """Media (once) and the jpeg+pcm shards of them at ``size`` (with a stored log-mel when ``logmel``)."""
    from avssl.data.manifest import ManifestRow, write_manifest
    from avssl.data_tools.shards import ShardWriteConfig, write_shards

    media = cache / f"media-{files}x{seconds:g}s"
    media.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(files):
        p = media / f"rec{i:03d}.mkv"
        if not p.exists():
            make_recording(p, i, seconds)
        rows.append(ManifestRow(path=str(p), start=0.0, end=seconds))
    out = cache / f"shards-{files}x{seconds:g}s-{size}{'-logmel' if logmel else ''}"
    if not (out / "index.json").exists():
        write_manifest(media / "manifest.csv", rows)
        cfg = ShardWriteConfig(samples_per_shard=16, max_segment_duration=3.0, min_segment_duration=2.0, size=size,
                               fps=FPS, splits=("train",), format="jpeg", audio="pcm", logmel=logmel,
                               fbank={"num_mel_bins": MELS})
        res = write_shards(media / "manifest.csv", out, cfg)
        if not res.complete or res.failed:
            raise RuntimeError(f"{out}: shards not written ({res})")
    return out


# ------------------------------------------------------------------------------------------------ floor


def floor_clip(raw: dict[str, Any], starts: Sequence[float]) -> None:
    """The plainest decode of one clip from a shard sample's bytes: its frames (one ``decode_jpeg`` call on the
    JPEGs on screen at the segments' frame instants) and its audio (int16 PCM window to float32, or the stored
    log-mel rows of the window). No crop, no normalisation, no log-mel computed."""
    from torchvision.io import decode_jpeg

    meta = json.loads(raw["json"])
    vd, ad, md = meta["video"], meta.get("audio"), meta.get("logmel")
    times = float(meta["start"]) + np.asarray(vd["index"], np.float64) / float(meta["fps"])
    inst = (np.asarray(starts, np.float64)[:, None] + np.arange(round(SEG_DUR * FPS))[None, :] / FPS).ravel()
    wanted = sorted({max(0, int(np.searchsorted(times, t + 1e-6, side="right")) - 1) for t in inst})
    off = np.concatenate([[0], np.cumsum(vd["sizes"])])
    buf = torch.frombuffer(bytearray(raw["mjpeg"]), dtype=torch.uint8)
    decode_jpeg([buf[int(off[i]) : int(off[i + 1])] for i in wanted])
    dur = SEGMENTS * SEG_DUR
    if md and "logmel" in raw:
        per_s = 1000.0 / float(md["fbank"].get("frame_shift_ms", 10.0))
        f0 = max(0, int(round((starts[0] - float(ad["start"])) * per_s)))
        mel = np.frombuffer(raw["logmel"], dtype="<f4").reshape(int(md["frames"]), int(md["mels"]))
        torch.from_numpy(np.array(mel[f0 : f0 + int(dur * per_s)]))
    elif ad:
        lo = max(0, int(round((starts[0] - float(ad["start"])) * SR)))
        pcm = np.frombuffer(raw["pcm"], dtype="<i2")[lo : lo + int(round(dur * SR))]
        torch.from_numpy(pcm.astype(np.float32) / 32768.0)


def bound_clip(raw: dict[str, Any], starts: Sequence[float], ds: Any, out: torch.Tensor,
               gen: torch.Generator) -> None:
    """The floor's decode plus only the work a clip cannot do without, with avssl's own kernels and none of
    the reader's bookkeeping: the crop (resized for ``rrc``), flip and output type of the dataset's
    ``VideoTransform`` written into a preallocated batch slot ``out`` (``VideoTransform.apply_images``), and
    the normalised log-mel of each segment (``PreprocessSpec.audio_features``: computed from the PCM, or from
    the stored rows). Its rate is the most any reader can reach with these kernels: the reader's ratio to the
    floor cannot exceed this pass's."""
    from torchvision.io import decode_jpeg

    meta = json.loads(raw["json"])
    vd, ad, md = meta["video"], meta.get("audio"), meta.get("logmel")
    times = float(meta["start"]) + np.asarray(vd["index"], np.float64) / float(meta["fps"])
    inst = (np.asarray(starts, np.float64)[:, None] + np.arange(round(SEG_DUR * FPS))[None, :] / FPS).ravel()
    shown = np.maximum(0, np.searchsorted(times, inst + 1e-6, side="right") - 1)
    wanted, pos = np.unique(shown, return_inverse=True)
    off = np.concatenate([[0], np.cumsum(vd["sizes"])])
    buf = torch.frombuffer(bytearray(raw["mjpeg"]), dtype=torch.uint8)
    images = [im.permute(1, 2, 0) for im in decode_jpeg([buf[int(off[i]) : int(off[i + 1])] for i in wanted])]
    tf = ds.video_transform
    params = tf.sample_params(int(images[0].shape[0]), int(images[0].shape[1]), gen)
    tf.apply_images(images, torch.from_numpy(pos.reshape(len(starts), -1)), params, out=out)
    spec = ds.spec
    if md and "logmel" in raw:
        per_s = 1000.0 / float(md["fbank"].get("frame_shift_ms", 10.0))
        f, f0 = spec.audio_frames_per_segment, max(0, int(round((starts[0] - float(ad["start"])) * per_s)))
        rows = np.frombuffer(raw["logmel"], dtype="<f4").reshape(int(md["frames"]), int(md["mels"]))
        mel = torch.from_numpy(np.stack([rows[f0 + k * f : f0 + (k + 1) * f] for k in range(len(starts))]))
        spec.audio_features(torch.zeros(0), None, mel=mel)
    elif ad:
        n = int(round(SEG_DUR * SR))
        lo = max(0, int(round((starts[0] - float(ad["start"])) * SR)))
        pcm = np.frombuffer(raw["pcm"], dtype="<i2")[lo : lo + n * len(starts)]
        spec.audio_features(torch.from_numpy(pcm.astype(np.float32) / 32768.0).view(len(starts), n))


# ------------------------------------------------------------------------------------------------ timing


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _cpu(fn: Callable[[], Any]) -> tuple[Any, float]:
    t = time.thread_time()
    out = fn()
    return out, time.thread_time() - t


def make_dataset(shard_dir: Path, size: int, crop: str, output: str = "float", batch_video: bool = False) -> Any:
    from avssl.data.features import FbankConfig
    from avssl.data.sampling import ClipSpec
    from avssl.data.shards import ShardedClipDataset, ShardIndex
    from avssl.data.transforms import VideoTransform

    scale, ratio = CROPS[crop]
    tf = VideoTransform(size, train=True, scale=scale, ratio=ratio, hflip_p=0.5, mean=VIDEO_MEAN, std=VIDEO_STD,
                        output=output)
    return ShardedClipDataset(ShardIndex.load(shard_dir, "train"), clip=ClipSpec(SEGMENTS, SEG_DUR), fps=FPS,
                              frame_size=size, fbank=FbankConfig(num_mel_bins=MELS), video_transform=tf,
                              even="none", shuffle=False, seed=0, batch_video=batch_video)


def measure(ds: Any, raws: list[dict[str, Any]], rounds: int, profile: bool, batch: int = 1) -> dict[str, Any]:
    per_round = []
    prof = cProfile.Profile(time.thread_time) if profile else None
    tf = ds.video_transform
    slot = torch.empty(tf.output_shape(SEGMENTS, round(SEG_DUR * FPS)), dtype=tf.output_dtype)  # a batch slot
    for r in range(rounds):
        ds.set_epoch(r)

        def reader() -> list[list[float]]:
            """Each sample made and dropped (kept only its segment starts, for the floor), or collated in
            batches of ``batch`` as a DataLoader without workers does."""
            if batch <= 1:
                return [ds._decode(raw)["segment_starts"].tolist() for raw in raws]
            out: list[list[float]] = []
            for b in range(0, len(raws), batch):
                got = ds.collate([ds._decode(raw) for raw in raws[b : b + batch]])
                out += got["segment_starts"].tolist()
            return out

        if prof is not None:
            prof.enable()
        f0 = _faults()
        starts, cpu = _cpu(reader)
        f1 = _faults()
        if prof is not None:
            prof.disable()
        _, fcpu = _cpu(lambda starts=starts: [floor_clip(raw, st) for raw, st in zip(raws, starts)])
        gen = torch.Generator().manual_seed(r)
        _, bcpu = _cpu(lambda starts=starts, gen=gen: [bound_clip(raw, st, ds, slot, gen) for raw, st in zip(raws, starts)])
        per_round.append({"clips": len(raws), "cpu_s": cpu, "floor_cpu_s": fcpu, "bound_cpu_s": bcpu,
                          "faults_per_clip": (f1 - f0) / len(raws), "floor_faults_per_clip": (_faults() - f1) / len(raws)})
    if prof is not None:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(os.environ.get("BENCH_SORT", "tottime")).print_stats(int(os.environ.get("BENCH_TOP", "25")))
        print(s.getvalue(), file=sys.stderr)
    med = statistics.median
    return {
        "clips_per_cpu_s": med(x["clips"] / x["cpu_s"] for x in per_round),
        "floor_clips_per_cpu_s": med(x["clips"] / x["floor_cpu_s"] for x in per_round),
        "ratio": med(x["floor_cpu_s"] / x["cpu_s"] for x in per_round),
        "bound_clips_per_cpu_s": med(x["clips"] / x["bound_cpu_s"] for x in per_round),
        "bound_ratio": med(x["floor_cpu_s"] / x["bound_cpu_s"] for x in per_round),
        "faults_per_clip": med(x["faults_per_clip"] for x in per_round),
        "floor_faults_per_clip": med(x["floor_faults_per_clip"] for x in per_round),
        "rounds": per_round,
    }


def retain_freed_memory() -> None:
    """What ``data.worker_retain_memory`` does in DataLoader workers (``avssl.data._malloc``), here in this
    process: a clip's output tensors reuse the pages of the last clip's instead of faulting in fresh ones."""
    from avssl.data._malloc import retain_freed_memory as retain

    if not retain():
        raise RuntimeError("mallopt is not available here (not glibc)")


def versions() -> dict[str, str]:
    import av
    import torchvision

    import avssl

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "av": av.__version__, "avssl": getattr(avssl, "__version__", "?")}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    p.add_argument("--crop", nargs="+", default=["full", "rrc"], choices=sorted(CROPS))
    p.add_argument("--audio", nargs="+", default=["pcm", "logmel"], choices=["pcm", "logmel"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--files", type=int, default=8)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("AVSSL_CACHE", "~/.cache/avssl")).expanduser()
                   / "bench_shard_reader")
    p.add_argument("--profile", default=None, help="case to profile, e.g. 112-pcm-full")
    p.add_argument("--batch", type=int, default=1,
                   help="collate the reader's samples in batches of this size (with data.shards.batch_video, as "
                        "avssl-train does: each clip's crop is written into the batch by the collate)")
    p.add_argument("--malloc", choices=["default", "retain"], default="default",
                   help="retain: glibc keeps freed memory (mallopt), so a new sample's output tensors reuse pages "
                        "instead of faulting in fresh ones")
    p.add_argument("--output", choices=["float", "uint8"], default="float",
                   help="uint8: the reader stops before the normalisation (data.normalise_video=device: the "
                        "training device normalises the batch), as a worker feeding a GPU does")
    p.add_argument("--save", action="store_true",
                   help="also write the JSON under benchmarks/results/ (docs/benchmarks.md is generated from it)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.malloc == "retain":
        retain_freed_memory()
    from avssl.data.shards import iter_shard_samples

    load_before = list(os.getloadavg())
    cases = []
    for size in args.sizes:
        for audio in args.audio:
            shard_dir = ensure_shards(args.cache, args.files, args.seconds, size, audio == "logmel")
            ds0 = make_dataset(shard_dir, size, args.crop[0])
            raws = list(iter_shard_samples(ds0.index.urls))
            for crop in args.crop:
                name = f"{size}-{audio}-{crop}"
                ds = make_dataset(shard_dir, size, crop, args.output, batch_video=args.batch > 1)
                ds._decode(raws[0])  # warm-up (imports, caches)
                floor_clip(raws[0], ds._decode(raws[0])["segment_starts"].tolist())
                r = measure(ds, raws, args.rounds, args.profile == name, args.batch)
                cases.append({"case": name, "size": size, "audio": audio, "crop": crop, **r})
                print(f"{name}: {r['clips_per_cpu_s']:.1f} clips/CPU-s, floor {r['floor_clips_per_cpu_s']:.1f}, "
                      f"ratio {r['ratio']:.2f}, bound {r['bound_clips_per_cpu_s']:.1f} (ratio "
                      f"{r['bound_ratio']:.2f}), page faults per clip {r['faults_per_clip']:.0f} (floor "
                      f"{r['floor_faults_per_clip']:.0f})", file=sys.stderr)
    doc = {"bench": "shard_reader", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "load_before": load_before,
                       "load_after": list(os.getloadavg())},
           "versions": versions(),
           "settings": {"segments": SEGMENTS, "segment_duration": SEG_DUR, "fps": FPS, "sample_rate": SR,
                        "mels": MELS, "rounds": args.rounds, "files": args.files, "seconds": args.seconds,
                        "samples": len(raws) if args.sizes else 0, "batch": args.batch, "malloc": args.malloc,
                        "output": args.output},
           "argv": list(sys.argv[1:] if argv is None else argv), "cases": cases}
    print(json.dumps(doc))
    if args.save:  # benchmarks/results/shard_reader_<malloc>[_uint8][_b<batch>]_<date>.json, read by benchmarks/report.py
        mode = args.malloc + ("_uint8" if args.output == "uint8" else "") + (f"_b{args.batch}" if args.batch > 1 else "")
        out = Path(__file__).resolve().parent / "results" / \
            f"shard_reader_{mode}_{doc['date'].replace('-', '').replace(':', '')}.json"
        tmp = out.with_name(out.name + ".part")
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        tmp.replace(out)
        print(f"wrote {out}", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
