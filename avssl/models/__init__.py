"""Encoders (registry + factory), projection heads and token-grid helpers. Plain nn.Modules only."""

from avssl.models.base import Encoder
from avssl.models.cnn import AudioCNN, CNNEncoder, VideoCNN
from avssl.models.factory import create_encoder
from avssl.models.heads import ProjectionHead
from avssl.models.patching import (
    interpolate_pos_embed,
    patchify,
    random_mask,
    sincos_pos_embed,
    tube_mask,
    unpatchify,
)
from avssl.models.registry import encoder_modality, list_encoders, register_encoder
from avssl.models.vit import AudioViT, TransformerBlock, VideoViT, ViTEncoder

__all__ = [
    "Encoder",
    "ViTEncoder",
    "VideoViT",
    "AudioViT",
    "TransformerBlock",
    "CNNEncoder",
    "VideoCNN",
    "AudioCNN",
    "ProjectionHead",
    "create_encoder",
    "list_encoders",
    "register_encoder",
    "encoder_modality",
    "patchify",
    "unpatchify",
    "random_mask",
    "tube_mask",
    "sincos_pos_embed",
    "interpolate_pos_embed",
]
