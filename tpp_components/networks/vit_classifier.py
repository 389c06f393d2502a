"""MONAI ``ViT`` classifier that returns only the logits."""

from __future__ import annotations

import torch
from monai.networks.nets import ViT

__all__ = ["ViTClassifier"]


class ViTClassifier(ViT):
    """``monai.networks.nets.ViT`` with ``classification=True`` whose ``forward`` returns the logits.

    MONAI's ``ViT`` returns ``(logits, hidden_states)``; losses, inferers, MONAI Label and
    ``verify_net_in_out`` expect one tensor. The module tree and state-dict keys are exactly
    those of ``ViT``, so weights move between the two with ``strict=True``.

    Args:
        kwargs: as :class:`monai.networks.nets.ViT`; ``classification`` is always True and
            ``post_activation`` defaults to ``"none"`` (a plain linear head giving logits).

    Example::

        >>> net = ViTClassifier(in_channels=1, img_size=(64, 64), patch_size=8, num_classes=3, spatial_dims=2)
        >>> net(torch.rand(2, 1, 64, 64)).shape
        torch.Size([2, 3])
    """

    def __init__(self, post_activation: str = "none", **kwargs) -> None:
        kwargs["classification"] = True
        super().__init__(post_activation=post_activation, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # ViT.forward spelled out (TorchScript cannot script a call to super().forward), so that
        # ``monai.bundle ckpt_export`` can script the merged network
        x = self.patch_embedding(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.classification_head(self.norm(x)[:, 0])
