"""Scale-out helpers: Lightning strategies from config, batch-norm synchronisation, shard epochs and exact resume.

Everything distributed runs on established engines: Lightning's ``DDPStrategy`` / ``FSDPStrategy`` (torch DDP and
FSDP underneath), ``SyncBatchNorm``, ``torchrun`` / SLURM (Hydra's submitit launcher) for launching. Nothing here
implements communication itself; see docs/scaling.md.
"""

from __future__ import annotations

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
    epoch plan: samples per rank and what was dropped or repeated to keep ranks even."""

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


# ---------------------------------------------------------------------------------------------------- resume


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position in the epoch is saved in checkpoints and restored on resume.

    Lightning stores ``state_dict()`` of a train loader that has one and calls ``load_state_dict`` when resuming;
    the state is plain ints (``weights_only``-loadable). The next epoch's iterator then skips the batches already
    trained on: map-style data through a sampler with ``skip`` (``EpochSampler``), streaming data through the
    dataset's ``skip_batches``. Batches are counted as they leave the loader, so prefetching does not matter.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume_batches = 0

    def _target(self) -> Any:
        for obj in (self.dataset, self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if obj is not None and hasattr(obj, "skip_batches"):
                return obj
        return None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        target = self._target()
        skip, self._resume_batches = self._resume_batches, 0
        if skip and target is None:
            raise RuntimeError("ResumableDataLoader: neither the dataset nor the sampler can skip batches")
        if target is not None:
            # read (and reset) by the target's own __iter__; worker processes take their copy at start-up
            target.skip_batches, target.skip_batch_size = skip, self.batch_size
        self._yielded = skip
        it = super().__iter__()
        if target is not None and target is self.dataset and self.num_workers > 0:
            setattr(target, "skip_batches", 0)  # noqa: B010 - the workers hold it now; the next epoch starts from its beginning
        for batch in it:
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"batches_yielded": int(self._yielded)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._resume_batches = int(state.get("batches_yielded", 0))


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


class ExactResumeCallback(Callback):
    """Saves every process's RNG states and the train loader's position in checkpoints; on resume it puts the
    loader back at its position before the epoch's iterator is made, and restores the RNG states just before the
    first batch, so data order and random draws (masks, dropout) continue exactly as in an uninterrupted run.

    (Lightning restores a stateful loader itself only when the loader is built after the checkpoint is loaded; it
    is built earlier when the LR schedule asks for the number of steps, hence this callback.)
    """

    def __init__(self) -> None:
        self._pending_rng: dict[str, Any] | None = None
        self._pending_loader: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"rng": rng_state()}
        loader = self._trainer.train_dataloader if self._trainer is not None else None
        if isinstance(loader, ResumableDataLoader):
            state["loader"] = loader.state_dict()
            if getattr(self._trainer.fit_loop.epoch_loop, "done", False):  # type: ignore[union-attr]
                state["loader"] = {"batches_yielded": 0}  # saved at the epoch's end: resume at the next one
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_rng = state_dict.get("rng")
        self._pending_loader = state_dict.get("loader")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # (on_train_epoch_start is not called when Lightning resumes mid-epoch)
        loader = trainer.train_dataloader
        if self._pending_loader is not None and isinstance(loader, ResumableDataLoader):
            loader.load_state_dict(self._pending_loader)
        self._pending_loader = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None


__all__ = [
    "ExactResumeCallback",
    "ResumableDataLoader",
    "STRATEGY_NAMES",
    "ShardEpochCallback",
    "block_classes",
    "build_strategy",
    "convert_sync_batchnorm",
    "has_batchnorm",
    "rng_state",
    "set_rng_state",
]
