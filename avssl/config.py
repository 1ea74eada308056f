"""Typed schemas of the `avssl-train` config, registered in Hydra's ConfigStore.

The YAML files in ``avssl/conf`` fill these schemas; Hydra composes them with struct mode on, so a misspelt key
or a value of the wrong type fails at launch with a message naming it. Defaults live in the YAML files; the
dataclass defaults below only give each field a type (and a neutral value where YAML may leave it out).
"""

# ruff: noqa: UP045  (OmegaConf 2.3 reads `Optional[X]` in structured configs, not `X | None`)
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

# --- data ------------------------------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """The generated demo dataset: ``avssl.data_tools.demo.ensure_demo_dataset(cache_dir, **params)``."""

    cache_dir: Optional[str] = None  # None: $AVSSL_CACHE/demo or ~/.cache/avssl/demo
    num_videos: int = 80
    duration: float = 8.0
    seed: int = 0
    size: int = 96
    fps: int = 24
    sample_rate: int = 16000
    val_fraction: float = 0.2
    min_gap: float = 0.15
    max_gap: float = 0.4
    # transfer labels (docs/transfer.md), off by default: the default dataset and its cache key are unchanged
    pitch_bands: int = 0  # >= 2: each video's pitches in one of N bands, manifest column pitch_band
    distractors: bool = False  # a soundless moving bar per video, manifest column distractor (visual-only label)


@dataclass
class AugmentConfig:
    """Training augmentations (validation always sees the plain centre view)."""

    crop_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random resized crop: area fraction
    crop_ratio: list[float] = field(default_factory=lambda: [1.0, 1.0])  # ... and aspect ratio range
    hflip_p: float = 0.0
    freq_mask: int = 0  # SpecAugment: widest frequency mask (mel bins); 0 = off
    time_mask: int = 0  # SpecAugment: widest time mask (frames); 0 = off
    num_masks: int = 0  # SpecAugment: masks of each kind per segment


@dataclass
class ShardWriteSettings:
    """What ``avssl-shards`` writes by default (avssl/data_tools/shards.py ``ShardWriteConfig``)."""

    format: str = "jpeg"  # jpeg | h264 | h264_intra
    audio: str = "pcm"  # pcm | flac
    jpeg_quality: int = 90
    gop: int = 8
    crf: int = 23
    logmel: bool = False
    samples_per_shard: int = 64
    max_segment_duration: Optional[float] = 10.0
    min_segment_duration: float = 1.0


@dataclass
class ShardsConfig:
    """data.source=shards: WebDataset shards written by ``avssl-shards`` (avssl/data/shards.py)."""

    url_template: Optional[str] = None  # e.g. "pipe:aws s3 cp s3://bucket/shards/{name} -"; None: next to the index
    even: str = "drop"  # keep ranks even: drop | pad | none (none: exactly once, ranks may differ)
    shuffle_buffer: int = 256  # samples in each worker's shuffle buffer
    decode_device: str = "auto"  # JPEG frames: auto | cpu (in the workers) | cuda (batched, in the main process)
    batch_video: bool = True  # workers crop decoded frames straight into the batch tensor (collate)
    write: ShardWriteSettings = field(default_factory=ShardWriteSettings)  # avssl-shards defaults


@dataclass
class DataConfig:
    """Where clips come from, how they are cut, preprocessed and batched."""

    source: str = "demo"  # demo | manifest | folder
    path: Optional[str] = None  # manifest file (source=manifest) or media folder (source=folder)
    demo: DemoConfig = field(default_factory=DemoConfig)
    shards: ShardsConfig = field(default_factory=ShardsConfig)  # source=shards: path is the index folder or URL
    train_split: str = "train"
    val_split: str = "val"
    val_fraction: float = 0.1  # source=folder only: share of files held out for validation
    # source=folder only: seed of that split (null: the run's `seed`); fixed, so a seed sweep keeps one validation
    # set and one training set and only the training randomness changes
    split_seed: Optional[int] = 0
    label_column: Optional[str] = "label"
    # clip geometry (avssl.data.sampling.ClipSpec): `num_segments` segments of `segment_duration` seconds
    num_segments: int = 4
    segment_duration: float = 0.5
    segment_gap: float = 0.0
    audio_jitter: float = 0.0  # train only: per-segment audio shift of up to this many seconds
    clips_per_file: Any = "auto"  # train: random clips per row per epoch: an integer, or "auto" (as many as fit)
    val_clips_per_file: Optional[int] = None  # val: evenly spaced clips per row; None: back-to-back grid
    val_order: str = "shuffled"  # val batches: "shuffled" (one fixed permutation) | "sequential"
    # video preprocessing
    fps: float = 8.0
    frame_size: int = 64
    # short side frames are scaled to inside the decoder (swscale, before RGB): auto (the smallest size the
    # crop/resize policy loses nothing at, avssl.data.preprocess.decode_size) | null (full size) | an integer
    decode_size: Any = None
    video_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    video_std: list[float] = field(default_factory=lambda: [0.25, 0.25, 0.25])
    # audio preprocessing: avssl.data.features.FbankConfig fields (checked at launch), including the sample
    # rate audio is decoded at and the log-mel normalisation statistics
    fbank: dict[str, Any] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # loading
    batch_size: int = 16
    val_batch_size: int = 16  # retrieval_top1 is defined at this batch size
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    # glibc: workers keep freed memory for the next clip's buffers (avssl/data/_malloc.py; 2x at 224 px shards)
    worker_retain_memory: bool = True
    # where uint8 frames become normalised float: workers | device (workers hand uint8, a quarter of the bytes;
    # AVDataModule.on_after_batch_transfer normalises on the training device) | auto (device when on CUDA)
    normalise_video: str = "auto"
    allow_missing_audio: bool = True  # files without audio: silent, masked spectrograms instead of an error
    max_bad_fraction: float = 0.1  # give up when more than this share of the items tried cannot be decoded


# --- model -----------------------------------------------------------------------------------------------------


@dataclass
class EncoderConfig:
    """One encoder: a registry name for ``avssl.models.create_encoder`` and its keyword arguments."""

    name: str = MISSING
    kwargs: dict[str, Any] = field(default_factory=dict)
    # a local weights file to start from (avssl bundle/checkpoint, timm, AudioMAE, transformers AST/VideoMAE,
    # CAV-MAE; never downloaded) and its layout: auto | avssl | timm | audiomae | hf_videomae | hf_ast | cav_mae
    pretrained: Optional[str] = None
    pretrained_format: Optional[str] = None


@dataclass
class ModelConfig:
    """Encoders and projection heads of ``avssl.objectives.pretrain.AVPretrainModel``."""

    family: str = MISSING  # a label: vit | cnn
    video: EncoderConfig = field(default_factory=EncoderConfig)
    audio: EncoderConfig = field(default_factory=EncoderConfig)
    embed_dim: int = 128  # output width of the projection heads (the contrastive space)
    proj_hidden: Optional[int] = None  # hidden width of the projection heads; None: a linear head
    proj_layers: Optional[int] = None
    proj_norm: str = "none"  # none | batch (BatchNorm in the heads, MoCo v3 style: what ViT pairs need)
    gather_distributed: bool = True  # gather embeddings across DDP ranks before the contrastive losses


# --- objective -------------------------------------------------------------------------------------------------


def _objective_schema() -> tuple[type, type]:
    """``ObjectiveWeights`` (a float per registered loss term, 0 = off) and ``ObjectiveConfig`` (``name``,
    ``weights`` and one optional options block per registered objective, typed by its ``Options``), made from the
    objective registry (``avssl.objectives``), so a new objective needs no edit here. The values live in
    ``conf/objective/*.yaml`` only: an objective's block is set by its YAML (``objective=<name>``)."""
    from dataclasses import make_dataclass

    from avssl.objectives import OBJECTIVES, all_terms

    weights = make_dataclass("ObjectiveWeights", [(t, float, field(default=0.0)) for t in sorted(all_terms())])
    fields: list[Any] = [("name", str, field(default=MISSING)), ("weights", weights, field(default_factory=weights))]
    fields += [(name, Optional[cls.Options], field(default=None)) for name, cls in sorted(OBJECTIVES.items())]
    return weights, make_dataclass("ObjectiveConfig", fields)


ObjectiveWeights, ObjectiveConfig = _objective_schema()


# --- optimisation ----------------------------------------------------------------------------------------------


@dataclass
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: Optional[int] = None  # absolute; overrides warmup_fraction when set
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    no_decay_keywords: list[str] = field(
        default_factory=lambda: ["pos_embed", "cls_token", "mask_token", "temperature", "logit_scale"]
    )


@dataclass
class TrainerConfig:
    """Arguments of ``lightning.Trainer`` (those avssl exposes)."""

    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: Any = "auto"  # a Lightning name, or {name: ddp|fsdp, ...options} (avssl.lit.distributed)
    sync_batchnorm: bool = False  # SyncBatchNorm in the CNN encoders under DDP (GPU only in PyTorch)
    precision: str = "auto"  # auto: bf16-mixed on GPUs that support it, else 16-mixed on GPU, 32-true on CPU
    max_epochs: int = 10
    max_steps: int = -1
    max_time: Optional[str] = None  # "DD:HH:MM:SS"
    gradient_clip_val: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    check_val_every_n_epoch: int = 1
    val_check_interval: Optional[float] = None
    log_every_n_steps: int = 10
    limit_train_batches: Optional[float] = None
    limit_val_batches: Optional[float] = None
    num_sanity_val_steps: int = 0
    overfit_batches: float = 0.0
    fast_dev_run: bool = False
    deterministic: bool = False
    benchmark: bool = False
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    compile: bool = False  # torch.compile the pretraining model


@dataclass
class LoggerConfig:
    name: str = "csv"  # csv | tensorboard | none
    version: Optional[str] = None


@dataclass
class CheckpointConfig:
    enabled: bool = True
    monitor: str = "auto"  # auto: the objective's (AVPretrainModel.default_monitor)
    mode: str = "auto"
    save_last: bool = True
    save_top_k: int = 1
    every_n_epochs: int = 1
    every_n_train_steps: Optional[int] = None  # also write last.ckpt every N optimizer steps (pre-emptible jobs)


@dataclass
class CallbacksConfig:
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    lr_monitor: bool = True
    early_stopping_patience: Optional[int] = None  # epochs without improvement of checkpoint.monitor


# --- top level -------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """The whole `avssl-train` config."""

    task_name: str = "pretrain"
    seed: int = 0
    output_dir: Optional[str] = None  # None: Hydra's job directory (or ./outputs/<task_name> outside Hydra)
    ckpt_path: Optional[str] = None  # resume from this Lightning checkpoint ("last" = output_dir/checkpoints/last.ckpt,
    # "auto" = the newest checkpoint of output_dir if any, else start fresh)
    validate_only: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # type: ignore[valid-type]
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    callbacks: CallbacksConfig = field(default_factory=CallbacksConfig)
    # free-form tags: experiment name, notes (kept in the checkpoint's hparams)
    tags: dict[str, Any] = field(default_factory=dict)


_REGISTERED = False


def register_configs() -> None:
    """Register the schemas in Hydra's ConfigStore (idempotent).

    ``train_schema`` is the root schema, the first entry of ``train.yaml``'s defaults list.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    _REGISTERED = True


__all__ = [
    "CallbacksConfig",
    "CheckpointConfig",
    "AugmentConfig",
    "DataConfig",
    "DemoConfig",
    "EncoderConfig",
    "LoggerConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "ObjectiveWeights",
    "OptimizerConfig",
    "TrainConfig",
    "TrainerConfig",
    "register_configs",
]
