"""Sharded A/V data: WebDataset tar shards of pre-cut, re-encoded segments, written from a manifest and streamed.

Why WebDataset (not LitData): shards are plain POSIX tar files (``tar tf`` lists them, any tool can copy or
inspect them), written and read by a small, widely used library whose ``gopen`` streams from local disk, HTTP(S),
``gs://`` or any command (``pipe:aws s3 cp s3://bucket/x.tar -``), with no server, database or format-specific
index to keep in step. See docs/scaling.md.

Layout of a shard folder (``write_shards``)::

    index.json                      format version, write settings, per split: shards and their sample counts
    <split>-000000.tar              samples: <key>.mp4 (H.264 + AAC, short side ``size`` px, ``gop`` frames GOP)
    <split>-000000.tar.json                   <key>.json (source path, start, end, split, metadata, ordinal)

Each sample is one manifest segment (or a piece of at most ``max_segment_duration`` s of it) re-encoded on its own
clock (0 = segment start). Stream parts the source does not cover are left out of the re-encoded file, so the
reader marks them invalid again. Every shard is written to a temporary name and renamed; a re-run skips finished
shards, so an interrupted job resumes where it stopped.

Reading (``ShardedClipDataset``) plans each epoch with ``plan_epoch``: the shard list is shuffled by
``(seed, epoch)`` (the same on every rank), dealt round-robin to ranks and then to DataLoader workers; each worker
streams its shards through a seeded shuffle buffer and cuts one random clip of S segments from each sample. With
``even="drop"`` (default) or ``"pad"`` every rank gets the same number of full batches (the plan reports what it
drops or repeats); with ``even="none"`` every sample is yielded exactly once per epoch.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urljoin

import torch
from torch.utils.data import IterableDataset, get_worker_info

from avssl.data.datasets import AVClipDataset
from avssl.data.errors import MediaError
from avssl.data.features import FbankConfig
from avssl.data.manifest import ManifestRow
from avssl.data.sampling import ClipSpec, hash_uniform

log = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 1
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


def iter_shard_samples(urls: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__``, ``mp4`` bytes, ``json`` bytes) of the shards, in order, through WebDataset."""
    import webdataset as wds

    def reraise(exn: Exception) -> bool:
        raise ShardError(f"reading shards {list(urls)[:3]}...: {exn}") from exn

    pipeline = wds.DataPipeline(wds.SimpleShardList(list(urls)), wds.tarfile_to_samples(handler=reraise))
    yield from pipeline


class ShardedClipDataset(IterableDataset[dict[str, Any]]):
    """Clips of S segments streamed from shards; samples follow the dict of docs/architecture.md (``path`` is the
    source file, ``index`` the sample's ordinal in its split, plus ``num_skipped`` and ``key``).

    Each clip is cut from its sample exactly as ``AVClipDataset`` (mode ``random``) cuts it from a manifest row, its
    random start a function of ``(seed, epoch, ordinal)``. ``num_workers`` must equal the DataLoader's; ``rank`` /
    ``world_size`` default to torch.distributed's (or ``RANK`` / ``WORLD_SIZE``). Call ``set_epoch`` every epoch
    (``avssl.lit.distributed.ShardEpochCallback`` does) and keep DataLoader workers non-persistent.
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
    ) -> None:
        if even not in EVEN_MODES:
            raise ValueError(f"ShardedClipDataset: even must be one of {EVEN_MODES}, got {even!r}")
        self.index, self.clip, self.fps, self.frame_size = index, clip, float(fps), int(frame_size)
        self.fbank = fbank or FbankConfig(sample_rate=int(index.config.get("sample_rate", 16000)))
        self.video_transform, self.audio_transform = video_transform, audio_transform
        self.batch_size, self.num_workers, self.even = int(batch_size), int(num_workers), even
        self.shuffle, self.shuffle_buffer, self.seed = shuffle, int(shuffle_buffer), int(seed)
        self.label_column = label_column
        if classes is None and label_column:
            classes = index.classes.get(label_column)
        self.classes = list(classes or [])
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
            stream: Iterator[dict[str, Any]] = iter_shard_samples(urls)
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
        tmp = tempfile.mkdtemp(prefix="avssl-shard-")
        try:
            pending, failed_in_row = 0, 0
            for pos, raw in enumerate(self.raw_stream(plan, worker)):
                if pos < start:
                    continue
                if not self.decode:
                    meta = json.loads(raw["json"])
                    sample = {"key": raw["__key__"], "index": torch.tensor(meta["ordinal"]),
                              "cycle": raw["__cycle__"]}
                else:
                    try:
                        sample = self._decode(raw, tmp)
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
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

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

    def _decode(self, raw: dict[str, Any], tmp: str) -> dict[str, Any]:
        key = raw.get("__key__", "?")
        if "mp4" not in raw or "json" not in raw:
            raise ShardError(f"{raw.get('__url__')}: sample {key} lacks its mp4 or json member")
        meta = json.loads(raw["json"])
        path = os.path.join(tmp, "segment.mp4")
        with open(path, "wb") as f:
            f.write(raw["mp4"])
        row = ManifestRow(path=path, start=0.0, end=float(meta["duration"]), split=meta["split"],
                          meta={k: str(v) for k, v in meta.get("meta", {}).items()})
        sample_seed = int(hash_uniform("shard-sample", self.seed, int(meta["ordinal"])) * 2**53)
        ds = AVClipDataset([row], clip=self.clip, fps=self.fps, frame_size=self.frame_size,
                           sample_rate=self.fbank.sample_rate, fbank=self.fbank,
                           video_transform=self.video_transform, audio_transform=self.audio_transform,
                           mode="random", seed=sample_seed, split=None, label_column=self.label_column,
                           classes=self.classes, allow_missing_audio=True)
        if len(ds) == 0:
            raise MediaError(meta["source"], f"shard sample {key} lasts {meta['duration']:.3f} s, shorter than "
                             f"one clip ({self.clip.clip_duration:.3f} s)")
        ds.set_epoch(self.epoch * 1000 + int(raw.get("__cycle__", 0)))
        try:
            sample = ds._load(0)
        except MediaError as e:
            raise MediaError(meta["source"], f"shard sample {key}: {e.problem}") from e
        sample["index"] = torch.tensor(int(meta["ordinal"]), dtype=torch.int64)
        sample["path"] = meta["source"]
        sample["key"] = key
        sample["segment_starts"] = sample["segment_starts"] + float(meta["start"])  # back on the source clock
        return sample


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
    "ShardError",
    "ShardIndex",
    "ShardedClipDataset",
    "check_shard_settings",
    "iter_shard_samples",
    "plan_epoch",
]
