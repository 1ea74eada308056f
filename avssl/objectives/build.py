"""Build the pretraining model from plain config dicts (no Lightning): used by training (avssl.lit), by
export/loading (avssl.export) and by users (``build_pretrain_model(cfg.model, cfg.objective, preprocessing)``
with a composed ``train`` config gives the model ``avssl-train`` trains), so a checkpoint is always rebuilt
exactly as it was trained."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

INPUT_SIZE_KWARGS = {
    # encoder keyword -> preprocessing value it takes by default (set unless the model config gives it)
    "video": {"num_frames": ("video_input_shape", 1), "img_size": ("video_input_shape", 2)},
    "audio": {"num_frames": ("audio_input_shape", 1), "num_mels": ("audio_input_shape", 2)},
}


def encoder_kwargs(model_cfg: Mapping[str, Any], modality: str, preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of one encoder: the model config's, with input sizes filled from the preprocessing."""
    kwargs = dict((model_cfg.get(modality) or {}).get("kwargs") or {})
    for key, (prep_key, axis) in INPUT_SIZE_KWARGS[modality].items():
        if key not in kwargs and prep_key in preprocessing:
            kwargs[key] = int(preprocessing[prep_key][axis])
    return kwargs


def build_pretrain_model(
    model_cfg: Mapping[str, Any],
    objective_cfg: Mapping[str, Any],
    preprocessing: Mapping[str, Any],
    *,
    gather_distributed: bool | None = None,
) -> nn.Module:
    """Create both encoders from the registry and wrap them in ``AVPretrainModel`` with the objective's terms.
    ``gather_distributed=None`` takes ``model_cfg["gather_distributed"]`` (default True)."""
    from avssl.models import create_encoder
    from avssl.objectives.pretrain import AVPretrainModel

    encoders = {}
    for modality in ("video", "audio"):
        name = (model_cfg.get(modality) or {}).get("name")
        if not name:
            raise ValueError(f"model.{modality}.name is not set: name an encoder of avssl.models.list_encoders()")
        kwargs = encoder_kwargs(model_cfg, modality, preprocessing)
        for key in ("pretrained", "pretrained_format"):  # model.<modality>.pretrained: a local file to start from
            value = (model_cfg.get(modality) or {}).get(key)
            if value is not None:
                kwargs[key] = value
        try:
            encoders[modality] = create_encoder(name, **kwargs)
        except (TypeError, ValueError) as e:
            raise ValueError(f"model.{modality}: cannot build encoder {name!r} with {kwargs}: {e}") from e
    if gather_distributed is None:
        gather_distributed = bool(model_cfg.get("gather_distributed", True))
    weights = {k: float(v) for k, v in (objective_cfg.get("weights") or {}).items() if float(v) != 0.0}
    objective = {k: v for k, v in objective_cfg.items() if k not in ("name", "kwargs")} | {"weights": weights}
    heads = {k: model_cfg.get(k) for k in ("embed_dim", "proj_hidden", "proj_layers", "proj_norm")}
    try:
        return AVPretrainModel(encoders["video"], encoders["audio"], objective=objective, model=heads,
                               gather_distributed=gather_distributed)
    except (TypeError, ValueError) as e:
        raise ValueError(f"objective {objective_cfg.get('name')!r}: {e}") from e


__all__ = ["INPUT_SIZE_KWARGS", "build_pretrain_model", "encoder_kwargs"]
