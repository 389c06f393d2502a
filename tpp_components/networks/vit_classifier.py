"""MONAI ``ViT`` classifier that returns only the logits, with the pooling its pretraining trained."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import ViT

from tpp_components.networks.head_norm import HeadNorm

__all__ = ["ViTClassifier", "POOLING_CHOICES"]

#: how the token sequence becomes one feature vector
POOLING_CHOICES = ("mean", "cls")


class ViTClassifier(ViT):
    """``monai.networks.nets.ViT`` with ``classification=True`` whose ``forward`` returns the logits.

    MONAI's ``ViT`` returns ``(logits, hidden_states)`` and classifies its class token. Masked
    image modelling (MAE, SimMIM) never trains the class token's last-layer output, so the head
    reads the mean of the normalised patch tokens by default, as MAE fine-tunes; ``pooling="cls"``
    is for backbones that trained the class token (supervised or DINO checkpoints).

    ``head_norm=True`` puts a non-affine ``BatchNorm1d`` before the linear head, MAE's
    linear-probe recipe: frozen features have no common scale, and the normalisation lets one
    learning rate fit them. The head is then ``classification_head.0`` (norm) and ``.1`` (linear).
    Its running statistics are a cumulative average (``momentum=None``).

    Without ``head_norm`` the module tree and state-dict keys are exactly those of ``ViT``, so
    weights move between the two with ``strict=True``.

    Args:
        pooling: ``"mean"`` (patch tokens) or ``"cls"`` (class token).
        head_norm: non-affine batch norm before the linear head (linear probe).
        post_activation: as ``ViT``; default ``"none"`` (a plain linear head giving logits).
        kwargs: as :class:`monai.networks.nets.ViT`; ``classification`` is always True.

    Example::

        >>> net = ViTClassifier(in_channels=1, img_size=(64, 64), patch_size=8, num_classes=3, spatial_dims=2)
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 3])
        >>> ViTClassifier(in_channels=1, img_size=(32,) * 3, patch_size=8, num_classes=2, pooling="cls")
    """

    def __init__(self, pooling: str = "mean", head_norm: bool = False, post_activation: str = "none", **kwargs) -> None:
        if pooling not in POOLING_CHOICES:
            raise ValueError(f"pooling must be one of {POOLING_CHOICES}, got '{pooling}'.")
        kwargs["classification"] = True
        super().__init__(post_activation=post_activation, **kwargs)
        self.pooling = pooling
        self.head_norm = bool(head_norm)
        if self.head_norm:
            if not isinstance(self.classification_head, nn.Linear):
                raise ValueError("head_norm needs a linear head (post_activation='none').")
            linear = self.classification_head
            # momentum=None: a cumulative average, exact after one epoch over frozen features, so an
            # early best-metric checkpoint does not carry half-warmed statistics
            norm = HeadNorm(linear.in_features)
            self.classification_head = nn.Sequential(norm, linear)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # ViT.forward spelled out (TorchScript cannot script a call to super().forward), so that
        # ``monai.bundle ckpt_export`` can script the merged network
        x = self.patch_embedding(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        features = x[:, 0] if self.pooling == "cls" else x[:, 1:].mean(dim=1)
        return self.classification_head(features)
