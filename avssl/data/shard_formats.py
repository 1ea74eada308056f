"""Shard sample representations (format version 2): how a sample's frames, audio and log-mel are stored as bytes
and decoded again from memory. The writer (``avssl.data_tools.shards``) and the reader (``avssl.data.shards``)
both go through this module, so each representation is written and read by one pair of functions.

Video (``VIDEO_FORMATS``), frames stored at the training fps and size, in presentation order:

- ``h264``: an H.264 elementary stream (Annex B, SPS/PPS before every keyframe) with a short GOP, x264 set up by
  ``avssl.data.encoding.add_h264_stream``; the json lists every packet's size, pts and keyframe flag (decode
  order), so a reader feeds the packets of the GOPs it needs to a decoder with no container and no probe;
- ``h264_intra``: the same, every frame a keyframe (GOP 1);
- ``jpeg``: one baseline JPEG per frame (libjpeg-turbo through ``torchvision.io.encode_jpeg``), concatenated (an
  MJPEG stream); the json lists their sizes.

Audio (``AUDIO_CODECS``), mono at the shard's sample rate, int16 (``round(x * 32768)``, clamped):

- ``pcm``: raw little-endian int16 samples;
- ``flac``: a FLAC file of the same samples (lossless: decodes to the identical int16 values).

Log-mel (optional): the raw (not normalised) log-mel of the whole stored waveform as float32 ``[F, M]``,
computed by ``avssl.data.features.log_mel`` with the settings stored beside it.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import warnings
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch

from avssl.data.encoding import add_h264_stream
from avssl.data.features import FbankConfig, log_mel

VIDEO_FORMATS = ("h264", "h264_intra", "jpeg")
AUDIO_CODECS = ("pcm", "flac")
VIDEO_MEMBER = {"h264": "h264", "h264_intra": "h264", "jpeg": "mjpeg"}  # tar member extension per format
AUDIO_MEMBER = {"pcm": "pcm", "flac": "flac"}
LOGMEL_MEMBER = "logmel"
JPEG_SOI, JPEG_EOI = b"\xff\xd8", b"\xff\xd9"

__all__ = [
    "AUDIO_CODECS",
    "AUDIO_MEMBER",
    "LOGMEL_MEMBER",
    "VIDEO_FORMATS",
    "VIDEO_MEMBER",
    "FormatError",
    "compute_logmel",
    "decode_audio",
    "decode_frames",
    "decode_jpegs",
    "encode_audio",
    "encode_frames",
    "jpeg_tensors",
    "logmel_matches",
    "logmel_settings",
    "quantize_audio",
    "runs",
    "runs_to_mask",
]


# torchvision 0.29 marks its image codecs deprecated in favour of TorchCodec, whose wheels need CUDA libraries and
# system FFmpeg (docs/decoders.md): libjpeg-turbo through torchvision stays the JPEG codec here until that changes.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class FormatError(ValueError):
    """Stored bytes do not decode as their json says (the reader turns it into a ``MediaError``)."""


# ----------------------------------------------------------------------------------------------------- video


def encode_frames(frames: np.ndarray, fmt: str, fps: float, *, gop: int = 8, crf: int = 23,
                  jpeg_quality: int = 90) -> tuple[bytes, dict[str, Any]]:
    """uint8 frames ``[N, H, W, 3]`` (N >= 1) -> (bytes, json description) in representation ``fmt``."""
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"shard video format must be one of {VIDEO_FORMATS}, got {fmt!r}")
    if frames.ndim != 4 or frames.shape[0] < 1 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"encode_frames: expected uint8 frames [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if fmt == "jpeg":
        from torchvision.io import encode_jpeg

        chw = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        parts = [bytes(encode_jpeg(chw[i].contiguous(), quality=int(jpeg_quality)).numpy()) for i in range(n)]
        return b"".join(parts), {"format": fmt, "quality": int(jpeg_quality), "sizes": [len(p) for p in parts]}
    rate = Fraction(fps).limit_denominator(1001)
    packets: list[tuple[bytes, int, bool]] = []
    with av.open(io.BytesIO(), mode="w", format="h264") as c:  # raw Annex B: no container to parse when reading
        vs = add_h264_stream(c, fps=rate, width=w, height=h, gop=gop, crf=crf, intra_only=fmt == "h264_intra")
        for i in range(n):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            vf.pts, vf.time_base = i, 1 / rate
            for pkt in vs.encode(vf):
                packets.append((bytes(pkt), int(pkt.pts or 0), bool(pkt.is_keyframe)))
        for pkt in vs.encode():
            packets.append((bytes(pkt), int(pkt.pts or 0), bool(pkt.is_keyframe)))
    if sorted(p for _, p, _ in packets) != list(range(n)) or not packets[0][2]:
        raise RuntimeError(f"encode_frames: the H.264 encoder returned packets {[p for _, p, _ in packets]} for "
                           f"{n} frames")
    desc = {"format": fmt, "gop": 1 if fmt == "h264_intra" else int(gop), "crf": int(crf),
            "sizes": [len(b) for b, _, _ in packets], "pts": [p for _, p, _ in packets],
            "keyframes": [i for i, (_, _, k) in enumerate(packets) if k]}
    return b"".join(b for b, _, _ in packets), desc


def _split(data: bytes, sizes: Sequence[int], what: str) -> list[bytes]:
    if sum(sizes) != len(data):
        raise FormatError(f"{what}: {len(data)} bytes stored, the json lists {sum(sizes)}")
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos : pos + s])
        pos += s
    return out


def jpeg_tensors(data: bytes, desc: dict[str, Any], wanted: Sequence[int]) -> list[torch.Tensor]:
    """The JPEGs of stored frames ``wanted`` as uint8 byte tensors (what ``torchvision.io.decode_jpeg`` takes),
    each checked for its start/end markers (a truncated or foreign member fails here, in the worker)."""
    offsets = [0, *itertools.accumulate(int(s) for s in desc["sizes"])]
    if offsets[-1] != len(data):
        raise FormatError(f"jpeg frames: {len(data)} bytes stored, the json lists {offsets[-1]}")
    wanted = [int(i) for i in wanted]
    if not wanted:
        return []
    # one copy of the bytes from the first wanted frame to the last (a clip's frames are close together; most of
    # the member is not used), of which each frame is a view
    base, end = offsets[min(wanted)], offsets[max(wanted) + 1]
    span = torch.frombuffer(bytearray(memoryview(data)[base:end]), dtype=torch.uint8)
    out = []
    for i in wanted:
        lo, hi = offsets[i], offsets[i + 1]
        if hi - lo < 4 or data[lo : lo + 2] != JPEG_SOI or data[hi - 2 : hi] != JPEG_EOI:
            raise FormatError(f"jpeg frame {i}: not a JPEG image (no start/end marker)")
        out.append(span[lo - base : hi - base])
    return out


def decode_jpegs(tensors: Sequence[torch.Tensor], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """``torchvision.io.decode_jpeg`` of a list in one call (batched on CUDA) -> RGB ``[3, H, W]`` tensors."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not tensors:
        return []
    try:
        return list(decode_jpeg(list(tensors), mode=ImageReadMode.RGB, device=device))
    except RuntimeError as e:
        raise FormatError(f"jpeg frames do not decode: {e}") from e


def decode_frames(data: bytes, desc: dict[str, Any], wanted: Sequence[int], *, threads: int = 1) -> np.ndarray:
    """uint8 RGB ``[len(wanted), H, W, 3]``: stored frames ``wanted`` (positions in presentation order, sorted,
    distinct) decoded from memory. H.264: the packets of the GOPs holding them are fed to a fresh decoder."""
    if not wanted:
        raise ValueError("decode_frames: no frames wanted")
    fmt = desc["format"]
    if fmt == "jpeg":
        imgs = decode_jpegs(jpeg_tensors(data, desc, wanted))
        return torch.stack(imgs).permute(0, 2, 3, 1).numpy()
    if fmt not in VIDEO_FORMATS:
        raise FormatError(f"unknown shard video format {fmt!r}")
    parts = _split(data, desc["sizes"], "h264 packets")
    pts, keys = desc["pts"], list(desc["keyframes"]) + [len(parts)]
    # closed GOPs: GOP g holds the packets keys[g] .. keys[g+1]-1 and the frames pts[keys[g]] .. pts[keys[g+1]]-1
    first = [pts[k] for k in keys[:-1]]
    g0 = int(np.searchsorted(first, wanted[0], side="right")) - 1
    g1 = int(np.searchsorted(first, wanted[-1], side="right")) - 1
    if g0 < 0:
        raise FormatError(f"h264: frame {wanted[0]} lies before the first keyframe")
    ctx = av.CodecContext.create("h264", "r")
    ctx.thread_count = int(threads)
    need = {int(i): j for j, i in enumerate(wanted)}
    out: list[np.ndarray | None] = [None] * len(wanted)
    try:
        decoded: list[Any] = []
        for k in range(keys[g0], keys[g1 + 1]):
            pkt = av.Packet(parts[k])
            pkt.pts = pts[k]
            decoded += ctx.decode(pkt)
        decoded += ctx.decode(None)
    except av.FFmpegError as e:
        raise FormatError(f"h264 frames do not decode: {e}") from e
    for f in decoded:
        j = need.get(int(f.pts)) if f.pts is not None else None
        if j is not None:
            out[j] = f.to_ndarray(format="rgb24")
    missing = [int(wanted[j]) for j, a in enumerate(out) if a is None]
    if missing:
        raise FormatError(f"h264: frames {missing[:5]} did not decode")
    return np.stack(out)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------- audio


def quantize_audio(wave: np.ndarray) -> np.ndarray:
    """float [-1, 1] -> int16 ``round(x * 32768)`` clamped (the values the shard stores)."""
    return np.clip(np.round(np.asarray(wave, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def encode_audio(pcm: np.ndarray, codec: str, sample_rate: int) -> bytes:
    """int16 mono samples -> bytes in ``codec`` (``pcm``: raw little-endian; ``flac``: a FLAC file)."""
    if codec not in AUDIO_CODECS:
        raise ValueError(f"shard audio codec must be one of {AUDIO_CODECS}, got {codec!r}")
    pcm = np.ascontiguousarray(pcm, dtype="<i2")
    if codec == "pcm":
        return pcm.tobytes()
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="flac", container_options={"fflags": "+bitexact"}) as c:
        st = c.add_stream("flac", rate=int(sample_rate), layout="mono")
        st.codec_context.flags |= av.codec.context.Flags.bitexact
        st.codec_context.format = "s16"
        for a in range(0, len(pcm), 4096):
            af = av.AudioFrame.from_ndarray(pcm[None, a : a + 4096].copy(), format="s16", layout="mono")
            af.sample_rate, af.pts, af.time_base = int(sample_rate), a, Fraction(1, int(sample_rate))
            for pkt in st.encode(af):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    return buf.getvalue()


def decode_audio(data: bytes, codec: str, num_samples: int) -> np.ndarray:
    """Stored audio -> float32 ``[num_samples]`` (int16 / 32768). Raises ``FormatError`` on bad bytes."""
    if codec == "pcm":
        if len(data) != 2 * num_samples:
            raise FormatError(f"pcm audio: {len(data)} bytes stored for {num_samples} samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    if codec != "flac":
        raise FormatError(f"unknown shard audio codec {codec!r}")
    try:
        with av.open(io.BytesIO(data), mode="r", format="flac") as c:
            parts = [f.to_ndarray().reshape(-1) for f in c.decode(audio=0)]
    except (av.FFmpegError, IndexError, ValueError) as e:
        raise FormatError(f"flac audio does not decode: {e}") from e
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    if pcm.dtype != np.int16 or len(pcm) != num_samples:
        raise FormatError(f"flac audio: decoded {len(pcm)} {pcm.dtype} samples, the json says {num_samples} int16")
    return pcm.astype(np.float32) / 32768.0


def runs(mask: np.ndarray) -> list[list[int]]:
    """``[[lo, hi), ...]`` of the True runs of a bool mask (how audio validity is stored)."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return [[int(a), int(b)] for a, b in zip(d[::2], d[1::2])]


def runs_to_mask(rs: Sequence[Sequence[int]], n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    for lo, hi in rs:
        out[int(lo) : int(hi)] = True
    return out


# ----------------------------------------------------------------------------------------------------- log-mel

_NOT_FEATURE = ("mean", "std", "norm_scale")  # normalisation: applied by the reader, not baked into the log-mel


def logmel_settings(fbank: FbankConfig) -> dict[str, Any]:
    """The fbank fields that shape a stored log-mel (normalisation statistics left out)."""
    return {k: v for k, v in dataclasses.asdict(fbank).items() if k not in _NOT_FEATURE}


def logmel_matches(stored: dict[str, Any], fbank: FbankConfig) -> str | None:
    """None when a log-mel stored with ``stored`` settings equals what ``fbank`` computes per segment; else why not.

    Slices of a whole-waveform log-mel equal per-segment ones only for Kaldi frames (snip edges: each frame reads
    its own samples), without dither, and where the waveform's mean removal is undone by each frame's DC removal.
    """
    want = logmel_settings(fbank)
    diff = sorted(k for k in set(want) | set(stored) if want.get(k) != stored.get(k))
    if diff:
        return "fbank settings differ from the stored log-mel's: " + ", ".join(
            f"{k} {stored.get(k)!r} != {want.get(k)!r}" for k in diff)
    if fbank.kind != "kaldi":
        return f"fbank kind {fbank.kind!r}: centred frames of a segment differ from slices of the whole log-mel"
    if fbank.dither != 0:
        return "dither > 0 draws new noise per segment"
    if fbank.remove_mean and not fbank.remove_dc_offset:
        return "remove_mean without remove_dc_offset makes each segment's log-mel depend on its own mean"
    return None


def compute_logmel(wave: np.ndarray, fbank: FbankConfig) -> np.ndarray:
    """float32 ``[F, M]`` raw log-mel of the whole stored waveform (``avssl.data.features.log_mel``)."""
    return log_mel(torch.from_numpy(np.asarray(wave, np.float32)), fbank).numpy().astype(np.float32)
