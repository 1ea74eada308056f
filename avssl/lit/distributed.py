"""Scale-out helpers: Lightning strategies from config, batch-norm synchronisation, shard epochs and exact resume.

Everything distributed runs on established engines: Lightning's ``DDPStrategy`` / ``FSDPStrategy`` (torch DDP and
FSDP underneath), ``SyncBatchNorm``, ``torchrun`` / SLURM (Hydra's submitit launcher) for launching. Nothing here
implements communication itself; see docs/scaling.md.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader

log = logging.getLogger(__name__)

STRATEGY_NAMES = ("auto", "ddp", "ddp_spawn", "ddp_find_unused_parameters_true", "fsdp", "deepspeed", "single_device")


def has_batchnorm(module: nn.Module) -> bool:
    """Whether ``module`` holds batch-norm layers (the CNN encoders do; the ViTs use LayerNorm)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def block_classes(names: list[str] | tuple[str, ...]) -> set[type[nn.Module]]:
    """Module classes from dotted paths (``avssl.models.vit.TransformerBlock``): FSDP's auto-wrap units."""
    import importlib

    out: set[type[nn.Module]] = set()
    for name in names:
        mod, _, cls = str(name).rpartition(".")
        try:
            obj = getattr(importlib.import_module(mod), cls) if mod else None
        except (ImportError, AttributeError):
            obj = None
        if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
            raise ValueError(f"strategy.auto_wrap: {name!r} is not an importable nn.Module class "
                             "(give a dotted path such as avssl.models.vit.TransformerBlock)")
        out.add(obj)
    return out


def build_strategy(spec: str | Mapping[str, Any] | None) -> Any:
    """A Lightning strategy from ``trainer.strategy``: a name (``auto``, ``ddp``, ``fsdp``, ...) passes through;
    a mapping ``{name: ddp|fsdp, ...}`` builds ``DDPStrategy`` / ``FSDPStrategy`` with its options.

    DDP options: ``find_unused_parameters``, ``static_graph``, ``gradient_as_bucket_view``,
    ``process_group_backend`` (``nccl`` on GPU, ``gloo`` on CPU), ``timeout_min``.
    FSDP options: ``sharding_strategy`` (FULL_SHARD, SHARD_GRAD_OP, HYBRID_SHARD, NO_SHARD), ``auto_wrap`` (class
    dotted class paths of the transformer blocks, each wrapped as one FSDP unit), ``activation_checkpointing`` (bool: checkpoint
    those blocks), ``cpu_offload``, ``state_dict_type`` (``full``: one consolidated checkpoint file, loadable with
    ``weights_only=True``; ``sharded``: one file per rank), ``limit_all_gathers``.
    """
    if spec is None:
        return "auto"
    if isinstance(spec, str):
        return spec
    opts = dict(spec)
    name = str(opts.pop("name", "auto"))
    if name == "ddp":
        from datetime import timedelta

        from lightning.pytorch.strategies import DDPStrategy

        timeout = opts.pop("timeout_min", None)
        kw: dict[str, Any] = {k: opts.pop(k) for k in ("find_unused_parameters", "static_graph",
                                                        "gradient_as_bucket_view") if k in opts}
        backend = opts.pop("process_group_backend", None)
        _no_more(opts, name)
        if timeout:
            kw["timeout"] = timedelta(minutes=float(timeout))
        return DDPStrategy(process_group_backend=backend, **kw)
    if name == "fsdp":
        from lightning.pytorch.strategies import FSDPStrategy

        wrap = list(opts.pop("auto_wrap", []) or [])
        classes = block_classes(wrap) if wrap else None
        ckpt = bool(opts.pop("activation_checkpointing", False))
        kw = {
            "sharding_strategy": str(opts.pop("sharding_strategy", "FULL_SHARD")),
            "state_dict_type": str(opts.pop("state_dict_type", "full")),
            "cpu_offload": bool(opts.pop("cpu_offload", False)),
            "limit_all_gathers": bool(opts.pop("limit_all_gathers", True)),
        }
        _no_more(opts, name)
        return FSDPStrategy(auto_wrap_policy=classes, activation_checkpointing_policy=classes if ckpt else None,
                            **kw)
    if opts:
        raise ValueError(f"strategy {name!r} takes no options here, got {sorted(opts)}")
    return name


def _no_more(opts: Mapping[str, Any], name: str) -> None:
    if opts:
        raise ValueError(f"strategy {name!r}: unknown option(s) {sorted(opts)}")


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Batch norm synchronised over the process group (what Lightning's ``sync_batchnorm=True`` does).

    PyTorch's ``SyncBatchNorm`` runs on GPUs only; on CPU a DDP run keeps per-process statistics.
    """
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


# ---------------------------------------------------------------------------------------------------- data


class ShardEpochCallback(Callback):
    """Tells a streaming dataset (``ShardedClipDataset``) the epoch before its loader is iterated, and logs the
    epoch plan: samples per rank and what was dropped or repeated to keep ranks even. Also logs
    ``data/replaced``: undecodable shard samples replaced by good ones (summed over ranks and the epoch)."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a mid-epoch resume skips on_train_epoch_start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        ds = getattr(loader, "dataset", None)
        if ds is not None and hasattr(ds, "set_epoch") and hasattr(ds, "plan"):
            ds.set_epoch(trainer.current_epoch)
            plan = ds.plan()
            if trainer.is_global_zero:
                log.info("shards: %s", plan.describe())
            pl_module.log("data/dropped", float(plan.dropped), on_step=False, on_epoch=True, reduce_fx="max",
                          batch_size=1)
            pl_module.log("data/padded", float(plan.padded), on_step=False, on_epoch=True, reduce_fx="max",
                          batch_size=1)

    @staticmethod
    def _log_replaced(pl_module: pl.LightningModule, batch: Any) -> None:
        replaced = batch.get("num_replaced") if isinstance(batch, Mapping) else None
        if isinstance(replaced, torch.Tensor):
            pl_module.log("data/replaced", replaced.sum().float(), on_step=False, on_epoch=True, reduce_fx="sum",
                          batch_size=1, sync_dist=True)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._log_replaced(pl_module, batch)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._log_replaced(pl_module, batch)


class LocalValidationCallback(Callback):
    """Validation without cross-rank gathers: each rank evaluates whole batches of its own (see
    ``avssl.lit.datamodule.EvalBatchSampler``), so its batches are exactly those of a one-process run and ranks
    may hold different numbers of them (a gather would then hang). Lightning reduces the logged sums and batch
    sizes over ranks at the epoch's end, which gives the metrics of one process over the whole validation set."""

    def __init__(self) -> None:
        self._saved: bool | None = None

    def _model(self, pl_module: pl.LightningModule) -> Any:
        model = getattr(pl_module, "model", None)
        return model if model is not None and hasattr(model, "gather_distributed") else None

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._model(pl_module)
        if model is not None and trainer.world_size > 1:
            self._saved, model.gather_distributed = bool(model.gather_distributed), False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = self._model(pl_module)
        if model is not None and self._saved is not None:
            model.gather_distributed, self._saved = self._saved, None


# ---------------------------------------------------------------------------------------------------- resume


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in checkpoints and restored on resume.

    Lightning stores ``state_dict()`` of a train loader that has one and calls ``load_state_dict`` when resuming;
    the state is plain ints (``weights_only``-loadable). The next epoch's iterator then skips the batches already
    trained on: map-style data through a sampler with ``skip`` (``EpochSampler``, which splits the order over ranks
    itself, so each rank skips its own batches), streaming data through the dataset's ``skip_batches``. Streaming
    samples carry their position in their worker's raw stream (``stream_pos``, ``stream_worker``); the loader
    keeps the next position per worker, so a resume also passes over samples that failed to decode and were
    replaced. Batches are counted as they leave the loader, so prefetching does not matter.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume_batches = 0
        self._positions: dict[int, int] = {}
        self._resume_positions: dict[int, int] = {}

    def _target(self) -> Any:
        for obj in (self.dataset, self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if obj is not None and hasattr(obj, "skip_batches"):
                return obj
        return None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        target = self._target()
        skip, self._resume_batches = self._resume_batches, 0
        positions, self._resume_positions = self._resume_positions, {}
        if skip and target is None:
            raise RuntimeError(f"ResumableDataLoader: cannot resume after {skip} batch(es): neither the dataset "
                               f"({type(self.dataset).__name__}) nor the sampler ({type(self.sampler).__name__}) "
                               "can skip batches (use avssl.lit.datamodule.EpochSampler or a ShardedClipDataset)")
        if target is not None:
            # read (and reset) by the target's own __iter__; worker processes take their copy at start-up
            target.skip_batches, target.skip_batch_size = skip, self.batch_size
            if hasattr(target, "skip_positions"):
                target.skip_positions = dict(positions) if skip else {}
        self._yielded = skip
        self._positions = dict(positions) if skip else {}
        it = super().__iter__()
        if target is not None and target is self.dataset and self.num_workers > 0:
            setattr(target, "skip_batches", 0)  # noqa: B010 - the workers hold it now; the next epoch starts from its beginning
            if hasattr(target, "skip_positions"):
                target.skip_positions = {}
        for batch in it:
            self._yielded += 1
            self._note_position(batch)
            yield batch

    def _note_position(self, batch: Any) -> None:
        if isinstance(batch, Mapping) and isinstance(batch.get("stream_pos"), torch.Tensor):
            worker = int(batch["stream_worker"].reshape(-1)[0])  # a batch of an IterableDataset: one worker's
            self._positions[worker] = int(batch["stream_pos"].max()) + 1

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"batches_yielded": int(self._yielded)}
        if self._positions:
            state["stream_positions"] = [[int(w), int(p)] for w, p in sorted(self._positions.items())]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._resume_batches = int(state.get("batches_yielded", 0))
        self._resume_positions = {int(w): int(p) for w, p in state.get("stream_positions", [])}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as tensors and plain containers (``weights_only``-safe)."""
    py = random.getstate()
    np_state: Any = np.random.get_state()
    state: dict[Any, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [str(np_state[0]), torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_seed(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """A 63-bit seed that is a pure function of ``(seed, rank, epoch, batch_idx)`` (SHA-256 of the four ints)."""
    key = f"avssl-step|{int(seed)}|{int(rank)}|{int(epoch)}|{int(batch_idx)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def seed_step(seed: int, rank: int, epoch: int, batch_idx: int) -> int:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device's) global generators for one training batch;
    returns the seed. Ranks draw different masks, drop-path and dropout; a resumed run draws what it would have."""
    s = step_seed(seed, rank, epoch, batch_idx)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)  # also seeds every CUDA device
    return s


class ExactResumeCallback(Callback):
    """Per-rank random streams and exact resume.

    Before every training batch, the global generators (Python, NumPy, torch CPU and CUDA) are seeded from
    ``(seed, global rank, epoch, batch index)`` (:func:`seed_step`): every rank draws its own masks, drop-path and
    dropout, and the draws of a step do not depend on what ran before it, so a run resumed on any number of
    processes draws exactly what the uninterrupted run drew. Checkpoints also hold the train loader's position
    (plain ints), put back before the resumed epoch's iterator is made, and the run's data config (``data``),
    which :func:`check_resume_config` compares with the resuming run's.

    (Lightning restores a stateful loader itself only when the loader is built after the checkpoint is loaded; it
    is built earlier when the LR schedule asks for the number of steps, hence this callback.)
    """

    def __init__(self, seed: int = 0, data_config: Mapping[str, Any] | None = None) -> None:
        self.seed = int(seed)
        self.data_config = dict(data_config) if data_config is not None else None
        self._pending_loader: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"seed": self.seed}
        if self.data_config is not None:
            state["data"] = self.data_config
        loader = self._trainer.train_dataloader if self._trainer is not None else None
        if isinstance(loader, ResumableDataLoader):
            state["loader"] = loader.state_dict()
            epoch_loop = self._trainer.fit_loop.epoch_loop  # type: ignore[union-attr]
            # Lightning resumes at its count of processed batches: a checkpoint written between steps (by
            # ModelCheckpoint) has processed all it fetched; one written from a signal handler during a step
            # (SLURM auto-requeue) has not, and the interrupted batch is read and trained on again
            yielded = int(state["loader"]["batches_yielded"])
            processed = int(getattr(epoch_loop.batch_progress.current, "processed", yielded))
            if processed < yielded:
                state["loader"] = {"batches_yielded": processed}  # (stream positions would be one batch ahead)
            if getattr(epoch_loop, "done", False):
                state["loader"] = {"batches_yielded": 0}  # saved at the epoch's end: resume at the next one
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_loader = state_dict.get("loader")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (on_train_epoch_start is not called when Lightning resumes mid-epoch)
        loader = trainer.train_dataloader
        if self._pending_loader is not None and isinstance(loader, ResumableDataLoader):
            loader.load_state_dict(self._pending_loader)
        self._pending_loader = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        seed_step(self.seed, trainer.global_rank, trainer.current_epoch, batch_idx)


# ---------------------------------------------------------------------------------------------------- checks

# data settings that may change between a run and its resume: they do not change what is trained on
RESUME_FREE_DATA_KEYS = ("num_workers", "pin_memory", "persistent_workers", "worker_retain_memory", "normalise_video",
                         "path", "demo.cache_dir",
                         "shards.url_template", "shards.decode_device", "shards.batch_video",
                         "shards.write")


# data settings added after checkpoints existed, with the value that means what runs did before the key: a
# checkpoint without the key resumes when the current value is that one
RESUME_ADDED_DATA_KEYS: dict[str, Any] = {"decode_size": None}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        return {prefix[:-1]: [_plain(x) for x in obj]}
    return {prefix[:-1]: _plain(obj)}


def _plain(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return x
    if isinstance(x, (int, float)):
        return float(x) if isinstance(x, float) else int(x)
    return x


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], section: str,
                       ignore: tuple[str, ...] = (), added: Mapping[str, Any] | None = None) -> list[str]:
    """``section.key: saved -> current`` for every leaf that differs (or exists on one side only). ``added``: keys
    newer than some checkpoints, with the value an older checkpoint's absent key stands for."""
    a, b = _flatten(saved), _flatten(current)
    for key, old in (added or {}).items():
        a.setdefault(key, old)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or any(key.startswith(i + ".") for i in ignore):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool) \
                and not isinstance(vb, bool) and float(va) == float(vb):
            continue
        if va != vb:
            out.append(f"{section}.{key}: {va!r} in the checkpoint, {vb!r} now")
    return out


def check_resume_config(ckpt: Mapping[str, Any], cfg: Mapping[str, Any], preprocessing: Mapping[str, Any],
                        where: str = "checkpoint") -> None:
    """Refuse to resume a checkpoint under another model or data config: ``ValueError`` listing every setting
    that differs. Data settings in ``RESUME_FREE_DATA_KEYS`` (workers, paths) may change."""
    hp = ckpt.get("hyper_parameters") or {}
    diffs: list[str] = []
    if "model" in hp:
        diffs += config_differences(hp["model"], cfg["model"], "model")
    if "preprocessing" in hp:
        diffs += config_differences(hp["preprocessing"], preprocessing, "preprocessing")
    saved_data = None
    for key, state in (ckpt.get("callbacks") or {}).items():
        if str(key).startswith("ExactResumeCallback") and isinstance(state, Mapping) and "data" in state:
            saved_data = state["data"]
    if saved_data is not None:
        diffs += config_differences(saved_data, cfg["data"], "data", ignore=RESUME_FREE_DATA_KEYS,
                                    added=RESUME_ADDED_DATA_KEYS)
    if diffs:
        raise ValueError(f"ckpt_path={where}: the checkpoint was trained with another config; resuming would "
                         "silently change the run. Settings that differ:\n  " + "\n  ".join(diffs)
                         + "\nResume with the checkpoint's settings (its config.json), or start a new run.")


__all__ = [
    "RESUME_FREE_DATA_KEYS",
    "ExactResumeCallback",
    "LocalValidationCallback",
    "ResumableDataLoader",
    "STRATEGY_NAMES",
    "ShardEpochCallback",
    "block_classes",
    "build_strategy",
    "check_resume_config",
    "config_differences",
    "convert_sync_batchnorm",
    "has_batchnorm",
    "rng_state",
    "seed_step",
    "set_rng_state",
    "step_seed",
]
