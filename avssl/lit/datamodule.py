"""LightningDataModule over ``avssl.data.AVClipDataset``: demo data, a manifest or a folder of videos.

Train clips start at random times that are a pure function of ``(seed, epoch, index)``: the sampler yields
``(epoch, index)`` keys, so every DataLoader worker (persistent or not, on any rank) cuts the same clips for the
same epoch without sharing state. Validation clips lie on a fixed uniform grid, batched in a fixed order.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, Sampler

from avssl.data._malloc import retain_in_worker
from avssl.data.datasets import AVClipDataset
from avssl.data.features import FbankConfig, num_frames
from avssl.data.manifest import ManifestRow
from avssl.data.sampling import ClipSpec, hash_uniform
from avssl.data.sources import get_source, source_rows
from avssl.data.transforms import SpecAugment, VideoTransform
from avssl.lit.distributed import ResumableDataLoader

log = logging.getLogger(__name__)

VAL_ORDER_SEED = 0  # the fixed permutation of validation clips (val_order=shuffled)


def fbank_config(data_cfg: dict[str, Any]) -> FbankConfig:
    """``FbankConfig`` from ``data.fbank``; unknown keys or bad values raise naming ``data.fbank``."""
    fields = {f.name for f in dataclasses.fields(FbankConfig)}
    given = dict(data_cfg.get("fbank") or {})
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"data.fbank: unknown key(s) {unknown}; FbankConfig fields: {sorted(fields)}")
    try:
        return FbankConfig(**given)
    except (TypeError, ValueError) as e:
        raise ValueError(f"data.fbank: {e}") from e


def decode_size_setting(data_cfg: dict[str, Any]) -> int | str | None:
    """``data.decode_size``: ``auto``, ``null`` (decode at full size) or a short side in pixels."""
    v = data_cfg.get("decode_size")
    if v is None or v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v > 0):
        return v
    raise ValueError(f"data.decode_size must be 'auto', null or a positive integer (short side), got {v!r}")


def clip_spec(data_cfg: dict[str, Any], train: bool) -> ClipSpec:
    return ClipSpec(
        num_segments=int(data_cfg["num_segments"]),
        segment_duration=float(data_cfg["segment_duration"]),
        segment_gap=float(data_cfg.get("segment_gap", 0.0)),
        audio_jitter=float(data_cfg.get("audio_jitter", 0.0)) if train else 0.0,
    )


def preprocessing_from_data(data_cfg: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to turn media into encoder inputs, as plain values (stored in checkpoints).

    Keys: ``num_segments``, ``segment_duration``, ``segment_gap``, ``fps``, ``frames_per_segment``, ``frame_size``,
    ``video_mean``, ``video_std``, ``sample_rate``, ``samples_per_segment``, ``fbank`` (all FbankConfig fields,
    normalisation statistics included), ``audio_frames_per_segment``, ``num_mel_bins``, ``video_input_shape``
    ``[C, T, H, W]``, ``audio_input_shape`` ``[1, F, M]``, ``val_batch_size``.
    """
    fb = fbank_config(data_cfg)
    dur, fps = float(data_cfg["segment_duration"]), float(data_cfg["fps"])
    t = max(1, round(dur * fps))
    n_samples = round(dur * fb.sample_rate)
    f = num_frames(n_samples, fb)
    size = int(data_cfg["frame_size"])
    return {
        "num_segments": int(data_cfg["num_segments"]),
        "segment_duration": dur,
        "segment_gap": float(data_cfg.get("segment_gap", 0.0)),
        "fps": fps,
        "frames_per_segment": t,
        "frame_size": size,
        "video_mean": [float(x) for x in data_cfg["video_mean"]],
        "video_std": [float(x) for x in data_cfg["video_std"]],
        "sample_rate": int(fb.sample_rate),
        "samples_per_segment": int(n_samples),
        "fbank": dataclasses.asdict(fb),
        "audio_frames_per_segment": int(f),
        "num_mel_bins": int(fb.num_mel_bins),
        "video_input_shape": [3, t, size, size],
        "audio_input_shape": [1, int(f), int(fb.num_mel_bins)],
        "val_batch_size": int(data_cfg["val_batch_size"]),
    }


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` keys, shuffled by a generator seeded with ``(seed, epoch)``; under DDP, this
    rank's share of that order.

    The order is a pure function of ``(seed, epoch)``, the same on every rank; with ``world_size`` W it is padded
    (by repeating its first keys, as ``torch.utils.data.DistributedSampler`` does) to a multiple of W and rank r
    takes every W-th key from position r, so every rank holds the same number of keys. A resume skips this
    rank's first ``skip_batches x skip_batch_size`` keys (set by ``ResumableDataLoader``, used once). Call
    ``set_epoch`` at the start of every epoch (Lightning does).
    """

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EpochSampler: rank={rank} must lie in [0, world_size={world_size})")
        self.length, self.seed, self.shuffle, self.epoch = int(length), int(seed), shuffle, 0
        self.rank, self.world_size = int(rank), int(world_size)
        self.skip_batches, self.skip_batch_size = 0, 1  # resume: set by ResumableDataLoader, used once

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.length // self.world_size)  # keys per rank

    def order(self) -> list[int]:
        """This rank's indices for the current epoch (before any resume skip)."""
        if self.shuffle:
            g = torch.Generator().manual_seed(int(hash_uniform("order", self.seed, self.epoch) * 2**53))
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        if self.world_size > 1:
            total = len(self) * self.world_size
            order = (order * (-(-total // max(1, len(order)))))[:total]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.order()
        skip, self.skip_batches = self.skip_batches * self.skip_batch_size, 0
        return iter([(self.epoch, i) for i in order[skip:]])


class EvalBatchSampler(Sampler[list[int]]):
    """Validation batches of a fixed clip order, dealt whole to ranks: rank r evaluates batches r, r + W, ...

    Every clip is evaluated exactly once (no padding with duplicate clips) and every batch holds the clips it
    holds in a one-process run, so per-batch metrics (in-batch sync accuracy, retrieval) do not depend on the
    number of processes; Lightning's epoch-end reduction of the logged sums and batch sizes then gives the
    one-process metrics. Ranks may hold different numbers of batches (validation must not gather across ranks;
    ``avssl.lit.distributed.LocalValidationCallback`` turns the model's gather off during validation).
    """

    def __init__(self, order: list[int], batch_size: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"EvalBatchSampler: batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"EvalBatchSampler: rank={rank} must lie in [0, world_size={world_size})")
        batches = [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
        if world_size > 1:
            full = [sum(1 for b in batches[r::world_size] if len(b) == batch_size) for r in range(world_size)]
            if min(full) == 0:
                raise ValueError(f"validation: {len(order)} clip(s) make {len(batches)} batch(es) of "
                                 f"data.val_batch_size={batch_size}, so some of the {world_size} ranks would get no "
                                 "full batch; lower data.val_batch_size or use more validation data")
        self.batches = batches[rank::world_size]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter([list(b) for b in self.batches])


def clips_per_row(base: AVClipDataset, clips_per_file: int | str) -> list[int]:
    """Random clips drawn per row each epoch: the integer ``clips_per_file`` for every row, or with ``"auto"`` as
    many as the row holds back to back (``floor(row length / clip length)``, at least 1), so an epoch covers the
    data about once whatever the file lengths."""
    if clips_per_file == "auto":
        clip = base.clip.clip_duration
        return [max(1, math.floor((r.end - r.start) / clip + 1e-9)) for r in base.rows]
    if isinstance(clips_per_file, bool) or not isinstance(clips_per_file, int) or clips_per_file < 1:
        raise ValueError(f"data.clips_per_file must be 'auto' or an integer >= 1, got {clips_per_file!r}")
    return [int(clips_per_file)] * len(base)


class EpochClips(Dataset[dict[str, Any]]):
    """Random clips of a random-mode ``AVClipDataset``, ``counts[j]`` per item ``j`` (``clips_per_row``), addressed
    by ``(epoch, i)``.

    Key ``(e, i)`` is repeat ``r`` of item ``j`` (repeats in order: every item's first clip, then every second
    clip, ...); it reads item ``j`` at base epoch ``e * max(counts) + r``, so each repeat draws a different clip and
    every draw depends only on ``(seed, epoch, index)``. With equal counts ``R`` this is item ``i % n`` at base epoch
    ``e * R + i // n``.
    """

    def __init__(self, base: AVClipDataset, clips_per_file: int | str | Sequence[int] = 1):
        counts = (list(clips_per_file) if isinstance(clips_per_file, Sequence) and not isinstance(clips_per_file, str)
                  else clips_per_row(base, clips_per_file))
        if len(counts) != len(base) or any(int(c) < 1 for c in counts):
            raise ValueError(f"EpochClips: need one count >= 1 per item ({len(base)}), got {counts[:10]}")
        self.base, self.counts = base, [int(c) for c in counts]
        self.repeats = max(self.counts, default=1)
        self._keys = [(j, r) for r in range(self.repeats) for j, c in enumerate(self.counts) if c > r]

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Any]:
        epoch, i = key if isinstance(key, tuple) else (0, int(key))
        j, r = self._keys[i]
        self.base.set_epoch(epoch * self.repeats + r)
        return self.base[j]


def _init_worker(worker_id: int, rank: int, seed_workers: bool) -> None:
    """DataLoader ``worker_init_fn``: keep freed memory, then (``seed_everything(..., workers=True)``) Lightning's
    per-worker seeding, which it would have installed itself on a loader without a ``worker_init_fn``."""
    retain_in_worker(worker_id)
    if seed_workers:
        pl_worker_init_function(worker_id, rank=rank)


class AVDataModule(pl.LightningDataModule):
    """Train/val DataLoaders from the ``data`` config section (plain dict, see ``avssl.config.DataConfig``)."""

    def __init__(self, data: dict[str, Any], seed: int = 0, modalities: Sequence[str] = ("video", "audio")):
        super().__init__()
        self.cfg = dict(data)
        self.seed = int(seed)
        self.modalities = tuple(modalities)  # what the active objectives read: only these are decoded
        src = get_source(self.cfg["source"])  # the registry: demo | manifest | folder | shards
        if src.needs_path and not self.cfg.get("path"):
            raise ValueError(f"data.path must be set for data.source={src.name!r}")
        cpf = self.cfg.get("clips_per_file", 1)
        if cpf != "auto" and (isinstance(cpf, bool) or not isinstance(cpf, int) or cpf < 1):
            raise ValueError(f"data.clips_per_file must be 'auto' or an integer >= 1, got {cpf!r}")
        if self.cfg.get("val_order", "shuffled") not in ("shuffled", "sequential"):
            raise ValueError(f"data.val_order must be 'shuffled' or 'sequential', got {self.cfg['val_order']!r}")
        self.fbank = fbank_config(self.cfg)
        self.preprocessing = preprocessing_from_data(self.cfg)
        self.train_set: EpochClips | None = None
        self.val_set: AVClipDataset | None = None
        self.manifest_path: str | None = None
        self.video_normaliser: VideoTransform | None = None

    # --- datasets -------------------------------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Generate (once, cached) the demo dataset; nothing to do for other sources."""
        if self.cfg["source"] == "demo":
            self._demo_manifest()

    def _demo_manifest(self) -> str:
        rows = source_rows("demo", None, {"demo": dict(self.cfg["demo"])})
        assert rows.manifest_path is not None
        return rows.manifest_path

    def _rows(self) -> list[ManifestRow]:
        """The rows of ``data.source`` from the sources registry (``avssl.data.sources``)."""
        path = None if self.cfg.get("path") is None else os.path.expanduser(str(self.cfg["path"]))
        split_seed = self.cfg.get("split_seed", 0)
        if split_seed is not None and (isinstance(split_seed, bool) or not isinstance(split_seed, int)):
            raise ValueError(f"data.split_seed must be an integer or null (the run's seed), got {split_seed!r}")
        res = source_rows(self.cfg["source"], path, {
            "demo": dict(self.cfg["demo"]), "seed": self.seed if split_seed is None else split_seed,
            "val_fraction": float(self.cfg["val_fraction"])})
        self.manifest_path = res.manifest_path
        return res.rows

    def _dataset(self, rows: list[ManifestRow], split: str, train: bool, check_empty: bool = True) -> AVClipDataset:
        c, aug = self.cfg, self.cfg.get("augment") or {}
        video_tf = VideoTransform(
            int(c["frame_size"]), train=train,
            scale=tuple(aug.get("crop_scale", (1.0, 1.0))), ratio=tuple(aug.get("crop_ratio", (1.0, 1.0))),
            hflip_p=float(aug.get("hflip_p", 0.0)), mean=c["video_mean"], std=c["video_std"],
            output="uint8" if self._normalise_on_device() else "float",
        )
        self.video_normaliser = video_tf  # normalises the batches' uint8 frames on the device (same mean / std)
        audio_tf = None
        if train and int(aug.get("num_masks", 0)) > 0:
            audio_tf = SpecAugment(int(aug.get("freq_mask", 0)), int(aug.get("time_mask", 0)), int(aug["num_masks"]))
        ds = AVClipDataset(
            rows,
            clip=clip_spec(c, train),
            fps=float(c["fps"]),
            frame_size=int(c["frame_size"]),
            sample_rate=self.fbank.sample_rate,
            fbank=self.fbank,
            video_transform=video_tf,
            audio_transform=audio_tf,
            mode="random" if train else "uniform",
            clips_per_row=None if train else c.get("val_clips_per_file"),
            seed=self.seed,
            split=split,
            label_column=c.get("label_column"),
            allow_missing_audio=bool(c["allow_missing_audio"]),
            max_bad_fraction=float(c["max_bad_fraction"]),
            decode_size=decode_size_setting(c),
            modalities=self.modalities,
        )
        if check_empty and len(ds) == 0:
            where = self.manifest_path or self.cfg.get("path")
            raise ValueError(f"{where}: no usable clips in split {split!r} (rows missing, or all shorter than "
                             f"one clip of {ds.clip.clip_duration:.2f} s: {ds.num_short_rows} too short; a clip "
                             f"is data.num_segments x data.segment_duration plus the gaps)")
        return ds

    def _shard_dataset(self, split: str, train: bool) -> Any:
        """``ShardedClipDataset`` over ``data.path`` (an index folder or URL) for ``split``."""
        from avssl.data.shards import ShardedClipDataset, ShardIndex

        c, sh = self.cfg, dict(self.cfg.get("shards") or {})
        index = ShardIndex.load(os.path.expanduser(str(c["path"])), split, url_template=sh.get("url_template"))
        base = self._dataset([], split, train, check_empty=False)  # the same transforms as the other sources
        return ShardedClipDataset(
            index, clip=clip_spec(c, train), fps=float(c["fps"]), frame_size=int(c["frame_size"]), fbank=self.fbank,
            video_transform=base.video_transform, audio_transform=base.audio_transform,
            batch_size=int(c["batch_size"] if train else c["val_batch_size"]), num_workers=int(c["num_workers"]),
            even=sh.get("even", "drop") if train else "none", shuffle=train,
            shuffle_buffer=int(sh.get("shuffle_buffer", 256)), seed=self.seed, label_column=c.get("label_column"),
            defer_video=self._decode_on_device(index), batch_video=bool(sh.get("batch_video", True)))

    def _decode_on_device(self, index: Any) -> bool:
        """``data.shards.decode_device``: True when JPEG frames are decoded in the main process on the training
        GPU (``cuda``; ``auto`` for jpeg shards on a CUDA trainer), False when the workers decode them (``cpu``)."""
        mode = str((self.cfg.get("shards") or {}).get("decode_device", "auto"))
        if mode not in ("auto", "cpu", "cuda"):
            raise ValueError(f"data.shards.decode_device must be auto, cpu or cuda, got {mode!r}")
        device = self._device()
        if mode == "cuda" and device.type != "cuda":
            raise ValueError(f"data.shards.decode_device=cuda but training runs on {device} (use auto or cpu)")
        if mode == "cuda" and index.config.get("format") != "jpeg":
            raise ValueError(f"data.shards.decode_device=cuda needs jpeg shards; {index.source} holds "
                             f"{index.config.get('format', 'h264 (format version 1)')!r} (use auto or cpu)")
        defer = mode == "cuda" or (mode == "auto" and device.type == "cuda" and index.config.get("format") == "jpeg")
        log.info("shards: %s frames decoded %s (data.shards.decode_device=%s)", index.config.get("format", "h264"),
                 f"in the main process on {device}, one batched call per batch" if defer else "in the workers", mode)
        return defer

    def _normalise_on_device(self) -> bool:
        """``data.normalise_video``: ``device`` (workers hand cropped uint8 frames, a quarter of the bytes, and
        :meth:`on_after_batch_transfer` normalises them on the training device), ``workers`` (float from the
        workers), ``auto`` (``device`` when a Trainer trains on CUDA)."""
        mode = str(self.cfg.get("normalise_video", "auto"))
        if mode not in ("auto", "workers", "device"):
            raise ValueError(f"data.normalise_video must be auto, workers or device, got {mode!r}")
        # auto: only under a Trainer on CUDA, whose transfer hook is sure to run (a loader iterated by hand keeps
        # getting normalised float video)
        return mode == "device" or (mode == "auto" and self.trainer is not None and self._device().type == "cuda")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Batches of uint8 frames (``data.normalise_video``): ``video_uint8`` ``[B, S, T, h, w, 3]`` becomes the
        normalised float ``video`` ``[B, S, 3, T, h, w]`` where the batch now is (the training device)."""
        if isinstance(batch, dict) and "video_uint8" in batch:
            if self.video_normaliser is None:
                raise RuntimeError("AVDataModule: a batch of uint8 frames before setup() made its transforms")
            batch["video"] = self.video_normaliser.normalize(batch.pop("video_uint8"))
        return batch

    def _device(self) -> torch.device:
        trainer = self.trainer
        if trainer is not None:
            return torch.device(trainer.strategy.root_device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Shard batches whose JPEG frames were left to the main process: decode them on the training device in
        one batched call (``ShardedClipDataset.finish_batch``) before the rest of the batch moves there."""
        if isinstance(batch, dict) and "video_jpeg" in batch:
            trainer = self.trainer
            training = trainer is not None and bool(trainer.training)
            ds = self.train_set if training else self.val_set
            assert ds is not None and hasattr(ds, "finish_batch")
            batch = ds.finish_batch(batch, self._device())
        return batch

    def setup(self, stage: str | None = None) -> None:
        if self.val_set is not None:
            return
        if self.cfg["source"] == "shards":
            if stage in (None, "fit"):
                self.train_set = self._shard_dataset(self.cfg["train_split"], train=True)
            self.val_set = self._shard_dataset(self.cfg["val_split"], train=False)
            return
        rows = self._rows()
        if stage in (None, "fit"):
            base = self._dataset(rows, self.cfg["train_split"], train=True)
            self.train_set = EpochClips(base, self.cfg["clips_per_file"])
        self.val_set = self._dataset(rows, self.cfg["val_split"], train=False)
        log.info("data: %s train clips/epoch, %d val clips (%s)",
                 len(self.train_set) if self.train_set is not None else "-", len(self.val_set),
                 self.manifest_path or self.cfg.get("path"))

    # --- loaders --------------------------------------------------------------------------------------------

    def _ranks(self) -> tuple[int, int]:
        """(global rank, world size): the attached trainer's, else torch.distributed's, else (0, 1)."""
        trainer = self.trainer
        if trainer is not None:
            return int(trainer.global_rank), int(trainer.world_size)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def _loader_kwargs(self) -> dict[str, Any]:
        workers = int(self.cfg["num_workers"])
        kw: dict[str, Any] = {
            "num_workers": workers,
            "pin_memory": bool(self.cfg["pin_memory"]) and torch.cuda.is_available(),
            "persistent_workers": bool(self.cfg["persistent_workers"]) and workers > 0,
        }
        if workers > 0 and bool(self.cfg.get("worker_retain_memory", True)):
            # a clip's buffers reuse the last clip's pages (avssl/data/_malloc.py); Lightning adds its own worker
            # seeding only to loaders without a worker_init_fn, so this one runs it too when it is on
            kw["worker_init_fn"] = functools.partial(_init_worker, rank=self._ranks()[0],
                                                     seed_workers=bool(int(os.environ.get("PL_SEED_WORKERS", 0))))
        return kw

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            raise RuntimeError("AVDataModule.setup('fit') has not run")
        bs = int(self.cfg["batch_size"])
        if self.cfg["source"] == "shards":  # streaming: the dataset splits shards over ranks and workers
            kw = {**self._loader_kwargs(), "persistent_workers": False}  # workers must see each epoch's plan
            return ResumableDataLoader(self.train_set, batch_size=bs, collate_fn=self.train_set.collate,  # type: ignore[attr-defined]
                                       **kw)
        rank, world = self._ranks()
        # this module splits the data over ranks itself (build_trainer sets use_distributed_sampler=False)
        sampler = EpochSampler(len(self.train_set), self.seed, rank=rank, world_size=world)
        if len(sampler) < bs:
            per_rank = f" ({len(sampler)} per rank over {world} ranks)" if world > 1 else ""
            raise ValueError(f"data.batch_size={bs} exceeds the {len(self.train_set)} train clips per epoch"
                             f"{per_rank}; lower it or raise data.clips_per_file")
        return ResumableDataLoader(self.train_set, batch_size=bs, sampler=sampler, drop_last=True,
                                   **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            raise RuntimeError("AVDataModule.setup() has not run")
        if self.cfg["source"] == "shards":
            kw = {**self._loader_kwargs(), "persistent_workers": False}
            return DataLoader(self.val_set, batch_size=int(self.cfg["val_batch_size"]),
                              collate_fn=self.val_set.collate, **kw)  # type: ignore[attr-defined]
        n = len(self.val_set)
        if self.cfg.get("val_order", "shuffled") == "shuffled":
            order = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_ORDER_SEED)).tolist()
        else:
            order = list(range(n))
        rank, world = self._ranks()
        batches = EvalBatchSampler(order, int(self.cfg["val_batch_size"]), rank=rank, world_size=world)
        return DataLoader(self.val_set, batch_sampler=batches, **self._loader_kwargs())


__all__ = ["AVDataModule", "EpochClips", "EpochSampler", "EvalBatchSampler", "VAL_ORDER_SEED", "clip_spec", "fbank_config",
           "preprocessing_from_data"]
