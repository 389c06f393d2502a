"""TinyViT classifier: mean-pooled last-stage features and a linear head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from tpp_components.networks.head_norm import HeadNorm
from tpp_components.networks.tiny_vit import TinyViT

__all__ = ["TinyViTClassifier"]


class TinyViTClassifier(TinyViT):
    """:class:`TinyViT` whose ``forward`` returns class logits.

    The head reads the spatial mean of the last stage (320 channels for LiteMedSAM), not SAM's
    256-channel neck: on frozen LiteMedSAM features a probe found the last stage slightly
    better, and skipping the neck saves its compute. ``head_norm=True`` puts a non-affine
    ``BatchNorm1d`` (cumulative average) before the linear layer, the linear-probe head of
    :class:`tpp_components.networks.ViTClassifier`; the head is then ``classification_head.0``
    (norm) and ``.1`` (linear).

    Args:
        num_classes: number of classes.
        head_norm: non-affine batch norm before the linear head (linear probe).
        kwargs: as :class:`TinyViT`; ``neck_channels`` defaults to None here (no neck).

    Example::

        >>> net = TinyViTClassifier(num_classes=3, **{k: v for k, v in LITEMEDSAM_ENCODER.items() if k != "neck_channels"})
        >>> net(torch.rand(2, 3, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, num_classes: int, head_norm: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("neck_channels", None)
        super().__init__(**kwargs)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}.")
        features = self.embed_dims[-1]
        linear = nn.Linear(features, num_classes)
        self.head_norm = bool(head_norm)
        if self.head_norm:
            self.classification_head: nn.Module = nn.Sequential(
                HeadNorm(features), linear
            )
        else:
            self.classification_head = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        features = self.forward_features(x)[-1]
        return self.classification_head(features.mean(dim=(2, 3)))
