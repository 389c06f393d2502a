"""TinyViT segmenter: the (pretrained) TinyViT encoder with a light multi-scale decoder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UnetOutBlock, UnetResBlock

from tpp_components.networks.tiny_vit import TinyViT

__all__ = ["TinyViTDecoder", "TinyViTSegmenter"]


class TinyViTDecoder(nn.Module):
    """A light FPN-style decoder for the four TinyViT stage maps.

    Each stage map is projected to ``channels`` (1x1 convolution), resized to the finest map and
    summed; a residual block refines the sum, which is upsampled to the input size and joined
    with a full-resolution stem on the image itself (as UNETR's first encoder block), so that
    boundaries finer than the encoder's stride can be drawn; a last residual block and a 1x1
    convolution give the logits.

    Args:
        in_channels: image channels (for the full-resolution stem).
        feature_channels: channels of the four stage maps.
        out_channels: classes (background included).
        channels: decoder width.
        norm_name: MONAI norm of the decoder blocks.
    """

    def __init__(
        self,
        in_channels: int,
        feature_channels: Sequence[int],
        out_channels: int,
        channels: int = 64,
        norm_name: str | tuple = "instance",
    ) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            Convolution(2, c, channels, kernel_size=1, norm=norm_name, act="PRELU") for c in feature_channels
        )
        self.fuse = UnetResBlock(2, channels, channels, kernel_size=3, stride=1, norm_name=norm_name)
        self.stem = UnetResBlock(2, in_channels, channels // 2, kernel_size=3, stride=1, norm_name=norm_name)
        self.refine = UnetResBlock(2, channels + channels // 2, channels // 2, kernel_size=3, stride=1, norm_name=norm_name)
        self.out = UnetOutBlock(2, channels // 2, out_channels)

    def forward(self, image: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        size = [int(s) for s in features[0].shape[2:]]
        fused = image.new_zeros(0)
        for i, lateral in enumerate(self.lateral):  # written for TorchScript: no generator, no sum()
            projected = lateral(features[i])
            if [int(s) for s in projected.shape[2:]] != size:
                projected = F.interpolate(projected, size=size, mode="bilinear", align_corners=False)
            fused = projected if i == 0 else fused + projected
        full = [int(s) for s in image.shape[2:]]
        fused = F.interpolate(self.fuse(fused), size=full, mode="bilinear", align_corners=False)
        return self.out(self.refine(torch.cat([fused, self.stem(image)], dim=1)))


class TinyViTSegmenter(TinyViT):
    """:class:`TinyViT` whose ``forward`` returns segmentation logits ``(B, out_channels, H, W)``.

    The encoder's parameter names are :class:`TinyViT`'s, so LiteMedSAM's weights load with the
    ``litemedsam_trunk`` key map and PEFT targets the same layers as in the classifier; the
    ``decoder`` is the task head (trained in full during fine-tuning, unused by the pretext).

    Args:
        out_channels: classes, background included (2 for lesion vs background).
        decoder_channels: width of :class:`TinyViTDecoder`.
        decoder_norm: MONAI norm name of the decoder blocks.
        kwargs: as :class:`TinyViT`; ``neck_channels`` defaults to None (no SAM neck).

    Example::

        >>> net = TinyViTSegmenter(out_channels=2)
        >>> net(torch.rand(1, 3, 64, 64)).shape
        torch.Size([1, 2, 64, 64])
    """

    def __init__(self, out_channels: int, decoder_channels: int = 64, decoder_norm: str | tuple = "instance", **kwargs: Any) -> None:
        kwargs.setdefault("neck_channels", None)
        super().__init__(**kwargs)
        if out_channels < 1:
            raise ValueError(f"out_channels must be >= 1, got {out_channels}.")
        feature_channels = [*self.embed_dims[1:], self.embed_dims[-1]]
        self.decoder = TinyViTDecoder(self.in_channels, feature_channels, out_channels, decoder_channels, decoder_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.decoder(x, self.forward_features(x))
