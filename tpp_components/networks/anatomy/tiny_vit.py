"""Our ``TinyViT`` (LiteMedSAM's encoder): the only kind with a patch-embedding hook for a learned mask token."""

from __future__ import annotations

import torch
import torch.nn as nn

from tpp_components.networks.anatomy.base import Anatomy, register
from tpp_components.networks.tiny_vit import TinyViT

__all__ = ["TinyViTAnatomy"]


@register(TinyViT)
class TinyViTAnatomy(Anatomy):
    """``patch_embed``, ``layers`` and ``neck`` are the encoder; a classifier's head or a segmenter's decoder the
    head."""

    def encoder_modules(self, network: nn.Module) -> list[str]:
        return ["patch_embed", "layers", "neck"]

    def feature_map(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return network.forward_features(x)[-1]

    def channels(self, network: nn.Module) -> int:
        return network.embed_dims[-1]

    def stride(self, network: nn.Module) -> int:
        return network.stride

    def embedding_channels(self, network: nn.Module) -> int | None:
        return network.embed_dims[0]

    def embedding_stride(self, network: nn.Module) -> int:
        return network.embed_stride

    def masked_feature_map(
        self, network: nn.Module, x: torch.Tensor, embedding_mask: torch.Tensor, mask_token: torch.Tensor
    ) -> torch.Tensor:
        return network.forward_features(x, embedding_mask, mask_token)[-1]
