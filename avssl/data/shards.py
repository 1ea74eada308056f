"""Sharded A/V data: WebDataset tar shards of pre-cut segments stored at the training fps and size, written from a
manifest and streamed.

Why WebDataset (not LitData): shards are plain POSIX tar files (``tar tf`` lists them, any tool can copy or
inspect them), written and read by a small, widely used library whose ``gopen`` streams from local disk, HTTP(S),
``gs://`` or any command (``pipe:aws s3 cp s3://bucket/x.tar -``), with no server, database or format-specific
index to keep in step. See docs/scaling.md. Reading parses the tars with ``avssl.data.tarstream`` (WebDataset's
sample grouping and ``gopen``; about 4x less CPU than ``tarfile`` per sample).

Layout of a shard folder (``write_shards``, format version 2)::

    index.json                      format version, write settings, per split: shards and their sample counts
    <split>-000000.tar              samples: <key>.json  (source, start, end, split, metadata, ordinal, and
                                                          everything needed to decode the members below)
                                             <key>.mjpeg (format jpeg: one JPEG per frame) or <key>.h264
                                                          (formats h264 / h264_intra: H.264 elementary stream)
                                             <key>.pcm / <key>.flac (int16 mono audio), [<key>.logmel]
    <split>-000000.tar.json         sidecar: the shard's keys and the segments that failed

The representations are defined in ``avssl.data.shard_formats``. Format version 1 shards (``<key>.mp4``: H.264 +
AAC, written before the representations existed) still read. Each sample is one manifest segment (or a piece of at
most ``max_segment_duration`` s of it); its frames are those on screen at ``start + k / fps`` (file clock), its
audio the file's samples from ``round(start * sr)``; stream parts the source does not cover are left out (frames)
or marked invalid (audio), so the reader marks them invalid again. Every shard is written to a temporary name and
renamed; a re-run skips finished shards, so an interrupted job resumes where it stopped.

Reading (``ShardedClipDataset``) plans each epoch with ``plan_epoch``: the shard list is shuffled by
``(seed, epoch)`` (the same on every rank), dealt round-robin to ranks and then to DataLoader workers; each worker
streams its shards through a seeded shuffle buffer and cuts one random clip of S segments from each sample,
decoding from memory only the frames the clip shows, through the one cutter (``avssl.data.preprocess``). With
``even="drop"`` (default) or ``"pad"`` every rank gets the same number of full batches (the plan reports what it
drops or repeats); with ``even="none"`` every sample is yielded exactly once per epoch.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin

import av
import numpy as np
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from avssl.data import _pyav
from avssl.data.errors import MediaError
from avssl.data.features import FbankConfig, frame_geometry
from avssl.data.media import select_frames
from avssl.data.preprocess import (
    PreprocessSpec,
    SegmentCut,
    audio_window,
    clip_inputs,
    cut_audio,
    cut_audio_valid,
    cut_video,
    select_latest,
    video_key,
)
from avssl.data.sampling import ClipSpec, audio_offsets, clip_start, hash_uniform, video_id
from avssl.data.shard_formats import (
    AUDIO_MEMBER,
    LOGMEL_MEMBER,
    VIDEO_MEMBER,
    FormatError,
    decode_audio,
    decode_frames,
    decode_jpegs,
    jpeg_tensors,
    logmel_matches,
    runs_to_mask,
)
from avssl.data.tarstream import TarError, iter_tar_samples
from avssl.data.transforms import CropParams, VideoTransform

log = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 2  # 1: one MP4 (H.264 + AAC) per sample; 2: avssl.data.shard_formats
INDEX_NAME = "index.json"
Even = Literal["drop", "pad", "none"]
EVEN_MODES = ("drop", "pad", "none")


class ShardError(RuntimeError):
    """A shard folder, index or shard is missing, inconsistent or unreadable (the message names it)."""


# ---------------------------------------------------------------------------------------------------- reading


@dataclass
class ShardIndex:
    """The shards of one split: ``urls`` and their sample counts, plus the writer's settings."""

    urls: list[str]
    counts: list[int]
    config: dict[str, Any]
    classes: dict[str, list[str]]
    source: str

    @property
    def num_samples(self) -> int:
        return sum(self.counts)

    @classmethod
    def load(cls, location: str | os.PathLike[str], split: str = "train", url_template: str | None = None
             ) -> ShardIndex:
        """Read ``index.json`` from a folder, a local file or any URL WebDataset's ``gopen`` opens.

        Shard URLs are the index's folder joined with each shard name, or ``url_template.format(name=...)``
        (e.g. ``"pipe:aws s3 cp s3://bucket/shards/{name} -"``).
        """
        import webdataset as wds

        loc = os.fspath(location)
        if "://" not in loc and not loc.startswith("pipe:") and os.path.isdir(loc):
            loc = os.path.join(loc, INDEX_NAME)
        try:
            with wds.gopen(loc, "rb") as f:
                index = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError, UnicodeDecodeError) as e:
            raise ShardError(f"{loc}: cannot read the shard index ({e})") from e
        if index.get("format") != "avssl-shards":
            raise ShardError(f"{loc}: not an avssl shard index (no format 'avssl-shards')")
        if int(index.get("version", 0)) > SHARD_FORMAT_VERSION:
            raise ShardError(f"{loc}: shard format version {index['version']} is newer than this avssl reads "
                             f"({SHARD_FORMAT_VERSION})")
        if split not in index["splits"]:
            raise ShardError(f"{loc}: no split {split!r}; the index has {sorted(index['splits'])}")
        shards = index["splits"][split]["shards"]
        if not shards:
            raise ShardError(f"{loc}: split {split!r} has no shards")
        if url_template is not None:
            urls = [url_template.format(name=s["name"]) for s in shards]
        elif "://" in loc:
            urls = [urljoin(loc, s["name"]) for s in shards]
        else:
            urls = [os.path.join(os.path.dirname(loc), s["name"]) for s in shards]
        return cls(urls, [int(s["num_samples"]) for s in shards], index["config"], index.get("classes", {}), loc)


# ---------------------------------------------------------------------------------------------------- planning


@dataclass
class EpochPlan:
    """Which shards each (rank, worker) streams in one epoch and how many samples it yields.

    ``shards[r][w]``: shard positions; ``quota[r][w]``: samples (a multiple of ``batch_size`` unless
    ``even="none"``); ``batches_per_rank`` equal on every rank unless ``even="none"``; ``dropped`` / ``padded``:
    samples left out / repeated this epoch to keep ranks even (over all ranks).
    """

    epoch: int
    shards: list[list[list[int]]]
    quota: list[list[int]]
    samples_per_rank: list[int]
    batches_per_rank: list[int]
    total: int
    dropped: int
    padded: int

    def describe(self) -> str:
        return (f"epoch {self.epoch}: {self.total} samples over {len(self.quota)} rank(s) x "
                f"{len(self.quota[0])} worker(s); {self.samples_per_rank[0]} per rank, dropped {self.dropped}, "
                f"padded {self.padded}")


def plan_epoch(counts: Sequence[int], *, epoch: int, seed: int, world_size: int, num_workers: int,
               batch_size: int, even: Even = "drop", shuffle: bool = True) -> EpochPlan:
    """Deal the shards to ranks and workers for ``epoch`` (a pure function: every process computes the same)."""
    if even not in EVEN_MODES:
        raise ValueError(f"even must be one of {EVEN_MODES}, got {even!r}")
    if world_size < 1 or num_workers < 1 or batch_size < 1:
        raise ValueError(f"bad world_size={world_size}, num_workers={num_workers}, batch_size={batch_size}")
    n = len(counts)
    if n < world_size:
        raise ShardError(f"{n} shard(s) cannot be split over {world_size} ranks: write smaller shards "
                         f"(samples_per_shard) so there are at least world_size x num_workers of them")
    order = list(range(n))
    if shuffle:
        random.Random(int(hash_uniform("shards", seed, epoch) * 2**53)).shuffle(order)
    shards = [[order[r::world_size][w::num_workers] for w in range(num_workers)] for r in range(world_size)]
    avail = [[sum(counts[s] for s in ws) for ws in rs] for rs in shards]
    total = sum(counts)
    if even == "none":
        quota = avail
        per_rank = [sum(q) for q in quota]
        batches = [sum(math.ceil(q / batch_size) for q in qs) for qs in quota]
        return EpochPlan(epoch, shards, quota, per_rank, batches, total, 0, 0)
    if even == "drop":
        full = [[a // batch_size for a in rs] for rs in avail]
        target = min(sum(f) for f in full)
        if target == 0:
            raise ShardError(f"a rank has no full batch of {batch_size} this epoch (samples per rank and worker: "
                             f"{avail}); lower the batch size or the number of workers/ranks")
        for f in full:
            while sum(f) > target:  # take batches from the worker holding the most
                f[max(range(len(f)), key=lambda w: (f[w], -w))] -= 1
    else:
        full = [[math.ceil(a / batch_size) for a in rs] for rs in avail]
        target = max(sum(f) for f in full)
        for r, f in enumerate(full):
            can = [w for w in range(len(f)) if avail[r][w] > 0]
            if not can:
                raise ShardError(f"rank {r} has no samples to pad from this epoch")
            while sum(f) < target:  # give extra batches to the worker holding the fewest
                f[min(can, key=lambda w: (f[w], w))] += 1
    quota = [[b * batch_size for b in f] for f in full]
    used = sum(min(q, a) for qs, rs in zip(quota, avail) for q, a in zip(qs, rs))
    padded = sum(max(0, q - a) for qs, rs in zip(quota, avail) for q, a in zip(qs, rs))
    return EpochPlan(epoch, shards, quota, [target * batch_size] * world_size, [target] * world_size, total,
                     total - used, padded)


def _dist_info(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


# ---------------------------------------------------------------------------------------------------- reading


def plan_counts(counts: Sequence[int], shards: Sequence[int]) -> list[int]:
    """Sample counts of the shards at positions ``shards``."""
    return [int(counts[s]) for s in shards]


def check_shard_settings(index: ShardIndex, *, fps: float, frame_size: int, sample_rate: int) -> None:
    """Refuse shards written at another frame rate, frame size or sample rate than training reads at: reading
    them would resample already re-encoded media silently. ``ShardError`` names every setting that differs."""
    cfg = index.config
    diffs = []
    if "fps" in cfg and abs(float(cfg["fps"]) - float(fps)) > 1e-6:
        diffs.append(f"fps: shards written at {float(cfg['fps']):g}, data.fps={float(fps):g}")
    if "size" in cfg and int(cfg["size"]) != int(frame_size):
        diffs.append(f"size: shards written with short side {int(cfg['size'])} px, data.frame_size={int(frame_size)}")
    if "sample_rate" in cfg and int(cfg["sample_rate"]) != int(sample_rate):
        diffs.append(f"sample rate: shards written at {int(cfg['sample_rate'])} Hz, "
                     f"data.fbank.sample_rate={int(sample_rate)}")
    if diffs:
        raise ShardError(f"{index.source}: shards disagree with the training config: " + "; ".join(diffs)
                         + ". Write shards with matching settings (avssl-shards --fps/--size) or set data.fps / "
                         "data.frame_size / data.fbank.sample_rate to the shards' values")


def iter_shard_samples(urls: Sequence[str], zero_copy: bool = False) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__``, ``__url__`` and the members' bytes: ``json``, ``mjpeg`` / ``h264`` / ``mp4``, ...)
    of the shards, in order (``avssl.data.tarstream``: WebDataset's sample grouping and URL opening, with a lean
    tar parser; ``zero_copy``: local shards memory-mapped, members ``memoryview`` s). Raises ShardError naming the
    shard when one does not read."""
    try:
        yield from iter_tar_samples(urls, zero_copy=zero_copy)
    except TarError as e:
        raise ShardError(f"reading shards: {e}") from e


class ShardedClipDataset(IterableDataset[dict[str, Any]]):
    """Clips of S segments streamed from shards; samples follow the dict of docs/architecture.md (``path`` is the
    source file, ``index`` the sample's ordinal in its split, plus ``num_skipped`` and ``key``).

    Each clip is cut from its sample exactly as ``AVClipDataset`` (mode ``random``) cuts it from a manifest row, its
    random start a function of ``(seed, epoch, ordinal)``. ``num_workers`` must equal the DataLoader's; ``rank`` /
    ``world_size`` default to torch.distributed's (or ``RANK`` / ``WORLD_SIZE``). Call ``set_epoch`` every epoch
    (``avssl.lit.distributed.ShardEpochCallback`` does) and keep DataLoader workers non-persistent.

    ``defer_video`` (jpeg shards): workers leave the frames as JPEG bytes (``video_jpeg``, with each clip's frame
    map and crop); batch with :meth:`collate` and call :meth:`finish_batch` in the main process, which decodes the
    whole batch in one ``decode_jpeg`` call on a device (CUDA) and crops / normalises there. ``use_logmel``: use a
    stored log-mel where its settings equal ``fbank`` (clips then start on the log-mel's frame grid, 10 ms by
    default); otherwise, or with ``False``, the log-mel is computed from the stored audio.

    ``batch_video`` (format 2 shards, a ``VideoTransform`` with ``share_params=True``): a sample holds its decoded
    frames and drawn crop as a :class:`PendingVideo` (``video_pending``) instead of its ``video`` /
    ``video_uint8`` tensor, and :meth:`collate` writes each clip's crop straight into its slot of the batch tensor
    (in shared memory, in a DataLoader worker): one copy of each clip's pixels, where a per-clip tensor costs a
    stack of the whole frames, the crop and the batch copy. The batches are identical (``AVDataModule`` turns it
    on: ``data.shards.batch_video``); samples taken from the dataset by hand then need :meth:`collate`.
    """

    def __init__(
        self,
        index: ShardIndex,
        *,
        clip: ClipSpec,
        fps: float = 8.0,
        frame_size: int = 64,
        fbank: FbankConfig | None = None,
        video_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        audio_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        even: Even = "drop",
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        seed: int = 0,
        label_column: str | None = "label",
        classes: Sequence[str] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        decode: bool = True,
        defer_video: bool = False,
        use_logmel: bool = True,
        batch_video: bool = False,
    ) -> None:
        if even not in EVEN_MODES:
            raise ValueError(f"ShardedClipDataset: even must be one of {EVEN_MODES}, got {even!r}")
        self.index, self.clip, self.fps, self.frame_size = index, clip, float(fps), int(frame_size)
        self.fbank = fbank or FbankConfig(sample_rate=int(index.config.get("sample_rate", 16000)))
        self.spec = PreprocessSpec(segment_duration=clip.segment_duration, fps=self.fps,
                                   frame_size=(self.frame_size, self.frame_size), sample_rate=self.fbank.sample_rate,
                                   fbank=self.fbank, segment_gap=clip.segment_gap, num_segments=clip.num_segments)
        self.video_transform = video_transform or VideoTransform(self.frame_size, train=True)
        self.audio_transform = audio_transform
        if defer_video and not (isinstance(self.video_transform, VideoTransform) and self.video_transform.share_params):
            raise ValueError("ShardedClipDataset: defer_video needs a VideoTransform with share_params=True")
        if defer_video and index.config.get("format", "h264") != "jpeg":
            raise ShardError(f"{index.source}: video decoding in the main process needs jpeg shards; these are "
                             f"{index.config.get('format', 'h264 (format version 1)')!r}")
        self.defer_video, self.use_logmel = bool(defer_video), bool(use_logmel)
        # (only with a VideoTransform drawing one view per clip: the crop is drawn in the worker, applied in collate)
        self.batch_video = bool(batch_video) and not self.defer_video and isinstance(
            self.video_transform, VideoTransform) and self.video_transform.share_params
        if batch_video and not self.batch_video and not self.defer_video:
            log.info("ShardedClipDataset: batch_video needs a VideoTransform with share_params=True (got %r): "
                     "clips are made one tensor each and collated as usual", self.video_transform)
        self._logmel_said: set[str] = set()
        self._logmel_why: dict[tuple[Any, ...], str | None] = {}  # stored fbank settings -> why not usable
        self.batch_size, self.num_workers, self.even = int(batch_size), int(num_workers), even
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, int(shuffle_buffer), int(seed)
        self.label_column = label_column
        if classes is None and label_column:
            classes = index.classes.get(label_column)
        self.classes = list(classes or [])
        self._class_index = {c: i for i, c in enumerate(self.classes)}
        self.rank, self.world_size = _dist_info(rank, world_size)
        self.decode = decode
        if decode:
            check_shard_settings(index, fps=self.fps, frame_size=self.frame_size,
                                 sample_rate=self.fbank.sample_rate)
        self.epoch = 0
        self.skip_batches = 0  # batches of this rank already consumed this epoch (resume)
        self.skip_batch_size = self.batch_size
        self.skip_positions: dict[int, int] = {}  # resume: next raw-stream position per worker (exact with failures)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def plan(self, epoch: int | None = None) -> EpochPlan:
        return plan_epoch(self.index.counts, epoch=self.epoch if epoch is None else epoch, seed=self.seed,
                          world_size=self.world_size, num_workers=max(1, self.num_workers),
                          batch_size=self.batch_size, even=self.even, shuffle=self.shuffle)

    def __len__(self) -> int:
        """Samples this rank yields per epoch (a multiple of the batch size unless ``even="none"``)."""
        return self.plan().samples_per_rank[self.rank]

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        if info is None:
            return 0, 1
        if info.num_workers != max(1, self.num_workers):
            raise ValueError(f"ShardedClipDataset was planned for num_workers={self.num_workers} but the "
                             f"DataLoader runs {info.num_workers}; pass the same number to both")
        return info.id, info.num_workers

    def raw_stream(self, plan: EpochPlan, worker: int) -> Iterator[dict[str, Any]]:
        """This rank's ``worker``'s raw samples for the epoch, shuffled; with ``even="drop"`` / ``"pad"`` the
        stream cycles through the worker's shards without end (``__cycle__`` numbers the pass) and the reader
        stops at its quota of good samples; with ``even="none"`` one pass."""
        urls = [self.index.urls[s] for s in plan.shards[self.rank][worker]]
        if plan.quota[self.rank][worker] == 0 or not urls:
            return
        rng = random.Random(int(hash_uniform("buffer", self.seed, plan.epoch, self.rank, worker) * 2**53))
        cycle = 0
        while True:
            stream: Iterator[dict[str, Any]] = iter_shard_samples(urls, zero_copy=True)
            if self.shuffle and self.shuffle_buffer > 1:
                from webdataset.filters import _shuffle

                stream = _shuffle(stream, self.shuffle_buffer, min(self.shuffle_buffer, 64), rng=rng)
            got = 0
            for sample in stream:
                sample["__cycle__"] = cycle
                yield sample
                got += 1
            if got == 0:
                raise ShardError(f"shards {urls} hold no samples")
            if self.even == "none":
                return
            cycle += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This worker's quota of good samples. A sample that fails to decode is replaced by the next one of the
        (deterministic) stream, so every rank yields the same number of batches whatever fails; the replacement
        is counted in ``num_replaced`` (logged as ``data/replaced``) and ``num_skipped`` (``data/bad_files``).
        With ``even="none"`` failed samples are left out (each sample at most once)."""
        worker, _ = self._worker()
        plan = self.plan()
        quota = plan.quota[self.rank][worker]
        good = self._skip_for_worker(plan, worker)  # good samples this worker already gave (resume)
        start = self.skip_positions.get(worker, good)  # raw position to continue from
        self.skip_batches, self.skip_positions = 0, {}  # a resume skips once
        if good >= quota:
            return
        one_pass = sum(plan_counts(self.index.counts, plan.shards[self.rank][worker]))
        pending, failed_in_row = 0, 0
        for pos, raw in enumerate(self.raw_stream(plan, worker)):
            if pos < start:
                continue
            if not self.decode:
                meta = json.loads(bytes(raw["json"]))
                sample = {"key": raw["__key__"], "index": torch.tensor(meta["ordinal"]),
                          "cycle": raw["__cycle__"]}
            else:
                try:
                    sample = self._decode(raw)
                except MediaError as e:
                    failed_in_row += 1
                    if failed_in_row >= one_pass:
                        raise ShardError(f"rank {self.rank} worker {worker}: none of the {one_pass} sample(s) "
                                         f"of shards {[self.index.urls[s] for s in plan.shards[self.rank][worker]]}"
                                         f" decodes (last: {e})") from e
                    log.warning("shards: replacing undecodable sample %s (%s)", raw.get("__key__"), e)
                    pending += 1
                    continue
                sample["num_skipped"] = torch.tensor(pending, dtype=torch.int64)
                sample["num_replaced"] = torch.tensor(pending if self.even != "none" else 0,
                                                      dtype=torch.int64)
            pending, failed_in_row = 0, 0
            sample["stream_pos"] = torch.tensor(pos, dtype=torch.int64)
            sample["stream_worker"] = torch.tensor(worker, dtype=torch.int64)
            yield sample
            good += 1
            if good >= quota:
                return

    def _skip_for_worker(self, plan: EpochPlan, worker: int) -> int:
        """Samples ``worker`` skips to resume after ``skip_batches`` batches (the DataLoader takes batches from its
        workers in turn, passing over exhausted ones)."""
        if self.skip_batches <= 0:
            return 0
        left = [math.ceil(q / self.batch_size) for q in plan.quota[self.rank]]  # (even="none": a last part batch)
        taken = [0] * len(left)
        w, n = 0, self.skip_batches
        while n > 0 and any(x > 0 for x in left):
            if left[w] > 0:
                left[w] -= 1
                taken[w] += 1
                n -= 1
            w = (w + 1) % len(left)
        return min(taken[worker] * self.batch_size, plan.quota[self.rank][worker])

    # ------------------------------------------------------------------------------------------ one sample

    def clip_times(self, meta: dict[str, Any], cycle: int = 0) -> tuple[list[float], list[float]]:
        """Video and audio segment starts of the clip cut from a sample this epoch: the clip ``AVClipDataset``
        (mode ``random``) cuts from the sample's row ``[start, end)`` of its source file with seed
        ``hash_uniform("shard-sample", seed, ordinal)``, epoch ``epoch * 1000 + cycle`` and index 0 (file clock;
        format-1 samples: the sample's own clock, 0 = its start)."""
        seed, epoch = self._sample_key(meta, cycle)
        lo, hi = (0.0, float(meta["duration"])) if _version(meta) == 1 else (float(meta["start"]), float(meta["end"]))
        if hi - lo + 1e-9 < self.clip.clip_duration:
            raise MediaError(meta["source"], f"shard sample {meta.get('key')} lasts {hi - lo:.3f} s, shorter than "
                             f"one clip ({self.clip.clip_duration:.3f} s)")
        start = clip_start(lo, hi, self.clip, "random", seed=seed, epoch=epoch, index=0)
        video = self.spec.segment_starts(start)
        offs = audio_offsets(self.clip, seed=seed, epoch=epoch, index=0)
        return video, [v + o for v, o in zip(video, offs)]

    def _sample_key(self, meta: dict[str, Any], cycle: int) -> tuple[int, int]:
        return int(hash_uniform("shard-sample", self.seed, int(meta["ordinal"])) * 2**53), self.epoch * 1000 + cycle

    def _logmel_plan(self, meta: dict[str, Any], raw: dict[str, Any], cycle: int
                     ) -> tuple[list[float], list[float], list[int]] | None:
        """Segment starts moved to the stored log-mel's frame grid and each segment's first log-mel frame, or
        None (the log-mel is then computed from the audio; the first reason of each kind is logged once)."""
        md, ad = meta.get("logmel"), meta.get("audio")
        if not self.use_logmel or not md or not ad or LOGMEL_MEMBER not in raw:
            return None
        why = self._logmel_usable(md["fbank"])
        if why is not None:
            if why not in self._logmel_said:
                self._logmel_said.add(why)
                log.info("shards: computing log-mel from the audio, not using the stored one: %s", why)
            return None
        step = frame_geometry(self.fbank).step
        sr, base = self.fbank.sample_rate, round(float(ad["start"]) * self.fbank.sample_rate)
        lo, hi = float(meta["start"]), float(meta["end"])
        video, audio = self.clip_times(meta, cycle)
        k = round((round(video[0] * sr) - base) / step)
        for shift in (0, -1, 1):  # the nearest grid start that keeps the clip inside the sample
            c = (base + (k + shift) * step) / sr
            if c >= lo - 1e-9 and c + self.clip.clip_duration <= hi + 1e-9:
                break
        else:
            return None
        moved = c - video[0]
        video = self.spec.segment_starts(c)
        audio = [(base + round((round((a + moved) * sr) - base) / step) * step) / sr for a in audio]
        if self.clip.audio_jitter == 0:
            audio = list(video)
        first = [(round(a * sr) - base) // step for a in audio]
        if min(first) < 0 or max(first) + self.spec.audio_frames_per_segment > int(md["frames"]):
            return None  # (a jittered segment reaching past the stored audio)
        return video, audio, first

    def _logmel_usable(self, stored: dict[str, Any]) -> str | None:
        """Why a log-mel stored with fbank settings ``stored`` cannot give this reader's features, or None (the
        answer kept per distinct settings: a shard's samples share them)."""
        key = tuple(sorted(stored.items()))  # (plain json values)
        if key not in self._logmel_why:
            why = logmel_matches(stored, self.fbank)
            step = frame_geometry(self.fbank).step if why is None else 0
            if why is None and self.clip.audio_jitter == 0 and (
                    round(self.clip.segment_stride * self.fbank.sample_rate) % step):
                why = (f"the segment stride {self.clip.segment_stride:g} s is not a whole number of fbank frame "
                       f"shifts ({step} samples)")
            self._logmel_why[key] = why
        return self._logmel_why[key]

    def _decode(self, raw: dict[str, Any]) -> dict[str, Any]:
        """One raw shard sample -> the clip dict (see the class docstring). Raises MediaError (counted and
        replaced by the caller) when its bytes do not decode."""
        key = raw.get("__key__", "?")
        if "json" not in raw:
            raise ShardError(f"{raw.get('__url__')}: sample {key} lacks its json member")
        meta = json.loads(bytes(raw["json"]))
        cycle = int(raw.get("__cycle__", 0))
        try:
            if _version(meta) == 1:
                cut, v_local = self._cut_v1(raw, meta, cycle)
                v_starts = [s + float(meta["start"]) for s in v_local]  # back on the source clock
                sample = self._finish(meta, cut, v_starts, cycle, None, None)
            else:
                sample = self._decode_v2(raw, meta, cycle)
        except FormatError as e:
            raise MediaError(meta.get("source", key), f"shard sample {key}: {e}") from e
        except MediaError as e:
            raise MediaError(meta.get("source", key), f"shard sample {key}: {e.problem}") from e
        sample["key"] = key
        return sample

    def _decode_v2(self, raw: dict[str, Any], meta: dict[str, Any], cycle: int) -> dict[str, Any]:
        vd, ad = meta["video"], meta.get("audio")
        member = VIDEO_MEMBER.get(vd["format"])
        if member is None or member not in raw:
            raise FormatError(f"no {vd['format']!r} video member ({member})")
        plan = self._logmel_plan(meta, raw, cycle)
        v_starts, a_starts = self.clip_times(meta, cycle) if plan is None else plan[:2]
        # video: which stored frames the segments show (the one cutter, on frame positions), then only those
        fps, t0 = float(meta["fps"]), float(meta["start"])
        slots = np.asarray(vd["index"], np.float64)
        times = t0 + slots / fps
        idx, _ = select_latest(times, self.spec.frame_targets(v_starts))
        need = np.unique(idx.numpy())
        last = int(need[-1]) == len(slots) - 1
        pos, video_valid = cut_video(self.spec, torch.arange(len(need)).view(-1, 1, 1, 1),
                                     torch.from_numpy(times[need]), v_starts, frame_step=1.0 / fps if last else None)
        pos = pos.view(len(v_starts), -1)
        # audio
        n_samples = int(ad["num_samples"]) if ad else 0
        a0 = float(ad["start"]) if ad else t0
        if not ad:
            valid: torch.Tensor | None = torch.zeros(0, dtype=torch.bool)
        elif [[int(a), int(b)] for a, b in ad["valid"]] == [[0, n_samples]]:
            valid = None  # all real (the common case): the cutter marks what the stored audio covers
        else:
            valid = runs_to_mask(ad["valid"], n_samples)
        if plan is not None:  # only the validity is cut: the features are stored
            seg_wave = torch.zeros(0)
            seg_valid = cut_audio_valid(self.spec, n_samples, a0, a_starts, valid)
        else:
            if ad:
                data = raw.get(AUDIO_MEMBER.get(ad["codec"], ""))
                if data is None:
                    raise FormatError(f"no {ad['codec']!r} audio member")
                wave = torch.from_numpy(decode_audio(data, ad["codec"], n_samples))
            else:
                wave = torch.zeros(0)
            seg_wave, seg_valid = cut_audio(self.spec, wave, a0, a_starts, valid)
        mel = None
        if plan is not None:
            md = meta["logmel"]
            stored = np.frombuffer(raw[LOGMEL_MEMBER], dtype="<f4")  # read-only view: only the clip's rows are copied
            if stored.size != int(md["frames"]) * int(md["mels"]):
                raise FormatError(f"logmel: {stored.size} values stored, the json says {md['frames']}x{md['mels']}")
            rows = stored.reshape(int(md["frames"]), int(md["mels"]))
            f = self.spec.audio_frames_per_segment
            mel = torch.from_numpy(np.stack([rows[k : k + f] for k in plan[2]]).astype(np.float32, copy=False))
        if self.defer_video:
            if vd["format"] != "jpeg":
                raise FormatError(f"video decoding in the main process needs jpeg shards, not {vd['format']!r}")
            jpegs = jpeg_tensors(raw[member], vd, [int(i) for i in need])
            return self._finish(meta, SegmentCut(torch.zeros(0), video_valid, seg_wave, seg_valid), v_starts, cycle,
                                mel, (jpegs, pos, int(vd["height"]), int(vd["width"])))
        if vd["format"] == "jpeg":
            images = [im.permute(1, 2, 0) for im in decode_jpegs(jpeg_tensors(raw[member], vd, [int(i) for i in need]))]
        else:
            images = list(torch.from_numpy(decode_frames(raw[member], vd, [int(i) for i in need])).unbind(0))
        if self.batch_video:
            cut = SegmentCut(torch.zeros(0), video_valid, seg_wave, seg_valid)
            return self._finish(meta, cut, v_starts, cycle, mel, None, (images, pos))
        cut = SegmentCut(clip_frames(images, pos, channels_last=True), video_valid, seg_wave, seg_valid)
        return self._finish(meta, cut, v_starts, cycle, mel, None)

    def _cut_v1(self, raw: dict[str, Any], meta: dict[str, Any], cycle: int
                ) -> tuple[SegmentCut, list[float]]:
        """Format 1 (an MP4 of H.264 + AAC per sample): decoded from memory with the file decoder's functions, cut
        on the sample's own clock."""
        if "mp4" not in raw:
            raise FormatError("no mp4 member")
        v_local, a_local = self.clip_times(meta, cycle)
        w0, wdur = audio_window(self.spec, v_local, a_local)
        targets = self.spec.frame_targets(v_local)
        try:
            with av.open(io.BytesIO(raw["mp4"]), mode="r", metadata_errors="ignore") as c:
                origin = _pyav.container_origin(c)
                vs = c.streams.video[0]
                span = _pyav.decode_video_span(meta["source"], c, vs, origin, float(targets.min()),
                                               float(targets.max()), keep_before=True)
                if not span.frames:
                    raise FormatError("no video frame decodes")
                if c.streams.audio:
                    a = _pyav.decode_audio_window(meta["source"], c, c.streams.audio[0], origin, w0, wdur,
                                                  self.fbank.sample_rate, True)
                    audio, avalid = torch.from_numpy(a.audio[0]), torch.from_numpy(a.valid)
                else:
                    n = round(wdur * self.fbank.sample_rate)
                    audio, avalid = torch.zeros(n), torch.zeros(n, dtype=torch.bool)
                # the frames on screen at the targets, as MediaReader.read(frame_times=...) selects them
                idx, shown, _, valid = select_frames(span.times, w0, wdur, None, at_stream_start=span.at_stream_start,
                                                     at_stream_end=span.at_stream_end, frame_step=span.frame_step,
                                                     targets=targets.reshape(-1))
                f0 = span.frames[0]
                rgb = np.stack([_pyav.frame_to_rgb(span.frames[int(i)], f0.width, f0.height, 0) for i in idx])
        except av.FFmpegError as e:
            raise FormatError(f"mp4 does not decode: {e}") from e
        frames, fvalid = cut_video(self.spec, torch.from_numpy(rgb), torch.from_numpy(shown), v_local,
                                   valid=torch.from_numpy(valid))
        wave, wvalid = cut_audio(self.spec, audio, w0, a_local, avalid)
        return SegmentCut(frames, fvalid, wave, wvalid), v_local

    def _finish(self, meta: dict[str, Any], cut: SegmentCut, v_starts: list[float], cycle: int,
                mel: torch.Tensor | None, deferred: tuple[list[torch.Tensor], torch.Tensor, int, int] | None,
                pending: tuple[list[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
        """Transforms, features and the sample dict, exactly as ``AVClipDataset._load`` makes them (``pending``:
        decoded ``[H, W, 3]`` images and the clip's frame map, cropped later by :meth:`collate`)."""
        seed, epoch = self._sample_key(meta, cycle)
        gen = torch.Generator().manual_seed(int(hash_uniform("view", seed, epoch, 0) * 2.0**53))
        tf = self.video_transform
        sample: dict[str, Any]
        if pending is not None:
            assert isinstance(tf, VideoTransform)
            images, pos = pending
            p = tf.sample_params(int(images[0].shape[0]), int(images[0].shape[1]), gen)  # the transform's draw
            sample = {"video_pending": PendingVideo(tf, images, pos, p), "video_valid": cut.frames_valid,
                      **clip_inputs(self.spec, cut, video_transform=None, audio_transform=self.audio_transform,
                                    generator=gen, modalities=("audio",), mel=mel)}
        elif deferred is None:
            sample = clip_inputs(self.spec, cut, video_transform=tf, audio_transform=self.audio_transform,
                                 generator=gen, mel=mel)
        else:
            assert isinstance(tf, VideoTransform)
            jpegs, pos, h, w = deferred
            p = tf.sample_params(h, w, gen)  # the draw VideoTransform makes for a whole clip
            sample = {"video_jpeg": jpegs, "video_pos": pos,
                      "video_crop": torch.tensor([p.top, p.left, p.height, p.width, int(p.flip)], dtype=torch.int64),
                      "video_valid": cut.frames_valid,
                      **clip_inputs(self.spec, cut, video_transform=None, audio_transform=self.audio_transform,
                                    generator=gen, modalities=("audio",), mel=mel)}
        label = -1
        if self.label_column:
            label = self._class_index.get(str(meta.get("meta", {}).get(self.label_column) or ""), -1)
        sample.update({
            "segment_starts": torch.tensor(v_starts, dtype=torch.float64),
            "label": torch.tensor(label, dtype=torch.int64),
            "index": torch.tensor(int(meta["ordinal"]), dtype=torch.int64),
            "path": meta["source"],
            "video_id": torch.tensor(video_id(meta["source"]), dtype=torch.int64),
        })
        return sample

    # ------------------------------------------------------------------------------------------ batches

    @staticmethod
    def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
        """``default_collate``, except that deferred JPEG frames (``video_jpeg``, byte tensors of different
        lengths) stay a list per sample, and pending clips (``video_pending``, ``batch_video``) are cropped straight
        into one batch tensor ``video`` / ``video_uint8`` (in shared memory in a worker, as ``default_collate``
        allocates its batches)."""
        jpegs = [s.pop("video_jpeg") for s in samples if "video_jpeg" in s]
        pending = [s.pop("video_pending") for s in samples if "video_pending" in s]
        if pending and len(pending) != len(samples):
            raise ValueError("ShardedClipDataset.collate: some samples hold a pending clip and some do not")
        batch = default_collate(samples)
        if jpegs:
            batch["video_jpeg"] = jpegs
        if pending:
            shapes = {pv.shape for pv in pending}
            if len(shapes) != 1 or len({pv.dtype for pv in pending}) != 1:
                raise ValueError(f"ShardedClipDataset.collate: clips of different shapes {sorted(shapes)}")
            out = batch_tensor((len(pending), *pending[0].shape), pending[0].dtype)
            for b, pv in enumerate(pending):
                pv.write(out[b])
            batch[pending[0].key] = out
        return batch

    def finish_batch(self, batch: dict[str, Any], device: str | torch.device = "cpu") -> dict[str, Any]:
        """Decode a batch's deferred JPEG frames on ``device`` in one ``torchvision.io.decode_jpeg`` call and
        crop / resize / normalise them there (with each clip's crop drawn in its worker): ``batch["video"]``
        becomes ``[B, S, 3, T, h, w]`` on ``device``, as the workers would have made it. Other batches pass."""
        if "video_jpeg" not in batch:
            return batch
        tf = self.video_transform
        assert isinstance(tf, VideoTransform)
        groups = batch.pop("video_jpeg")
        try:
            images = decode_jpegs([t for g in groups for t in g], device=device)
        except FormatError as e:
            raise ShardError(f"shard samples {list(batch.get('key', []))}: {e}") from e
        out, i = [], 0
        for b, g in enumerate(groups):
            clip = clip_frames(images[i : i + len(g)], batch["video_pos"][b])
            i += len(g)
            top, left, h, w, flip = (int(x) for x in batch["video_crop"][b])
            v = tf(clip, params=CropParams(top, left, h, w, bool(flip)))
            out.append(tf.normalize(v) if v.dtype == torch.uint8 else v.float())
        batch["video"] = torch.stack(out)
        del batch["video_pos"], batch["video_crop"]
        return batch


@dataclass
class PendingVideo:
    """A clip's decoded frames (uint8 ``[H, W, 3]`` images), frame map ``pos`` ``[S, T]`` and drawn crop, left for
    :meth:`ShardedClipDataset.collate` to write into its batch slot (``batch_video``)."""

    transform: VideoTransform
    images: list[torch.Tensor]
    pos: torch.Tensor
    params: CropParams

    @property
    def key(self) -> str:
        """The batch key the clip goes to (``avssl.data.preprocess.video_key``, the rule every sample follows)."""
        return video_key(self.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.transform.output_shape(int(self.pos.shape[0]), int(self.pos.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.transform.output_dtype

    def write(self, out: torch.Tensor) -> torch.Tensor:
        """The clip the transform makes, written into ``out`` (shaped :attr:`shape`)."""
        return self.transform.apply_images(self.images, self.pos, self.params, out=out)


def batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker in shared memory, as ``default_collate``
    allocates its batches, so handing it to the main process copies nothing."""
    if get_worker_info() is not None:
        elem = torch.empty(0, dtype=dtype)
        storage = elem._typed_storage()._new_shared(math.prod(shape), device=elem.device)
        return elem.new(storage).resize_(*shape)
    return torch.empty(tuple(shape), dtype=dtype)


def clip_frames(images: Sequence[torch.Tensor], pos: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """Decoded RGB images ``[3, H, W]`` (``channels_last``: ``[H, W, 3]``) and a clip's frame map ``pos``
    ``[S, T]`` (indices into ``images``) -> contiguous uint8 ``[S, T, H, W, 3]`` (the transform's layout), on the
    images' device. ``decode_jpeg`` hands out ``[3, H, W]`` views of interleaved ``[H, W, 3]`` pixels on the CPU,
    so this is one plain copy of each."""
    s, t = pos.shape
    flat = torch.stack([images[int(i)] if channels_last else images[int(i)].permute(1, 2, 0)
                        for i in pos.reshape(-1).tolist()])
    return flat.view(s, t, *flat.shape[1:])


def _version(meta: dict[str, Any]) -> int:
    return int(meta.get("version", 1))


# the writer lives with the data tools (avssl.data_tools.shards)
_MOVED = frozenset({"SegmentJob", "ShardWriteConfig", "ShardWriteResult", "encode_segment", "plan_segments",
                    "shard_name", "write_shards"})


def __getattr__(name: str) -> Any:  # compatible aliases of the names that moved to avssl.data_tools.shards
    if name in _MOVED:
        from avssl.data_tools import shards as writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EVEN_MODES",
    "INDEX_NAME",
    "SHARD_FORMAT_VERSION",
    "EpochPlan",
    "PendingVideo",
    "ShardError",
    "ShardIndex",
    "ShardedClipDataset",
    "check_shard_settings",
    "iter_shard_samples",
    "plan_epoch",
]
