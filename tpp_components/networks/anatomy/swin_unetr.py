"""MONAI ``SwinUNETR``: the ``swinViT`` encoder, whose last stage is 32 times coarser than the input."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import SwinUNETR

from tpp_components.networks.anatomy.base import Anatomy, register

__all__ = ["SwinUNETRAnatomy"]


@register(SwinUNETR)
class SwinUNETRAnatomy(Anatomy):
    """The ``swinViT`` encoder; everything else (encoders of skips, decoder, output) is the head."""

    def encoder_modules(self, network: nn.Module) -> list[str]:
        return ["swinViT"]

    def feature_map(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return network.swinViT(x, network.normalize)[-1]

    def channels(self, network: nn.Module) -> int:
        return network.swinViT.layers4[0].downsample.reduction.out_features

    def stride(self, network: nn.Module) -> int:
        return 32  # a patch embedding of 2 and four patch-merging stages of 2
