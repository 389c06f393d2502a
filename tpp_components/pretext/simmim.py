"""SimMIM-style masked image modelling (Xie et al., CVPR 2022) for any supported encoder.

Random patches of the input are replaced by a learnable per-channel value (pixel-space masking,
so it works for ViT, UNETR and SwinUNETR alike); the encoder's last feature map is decoded by a
single 1x1 convolution and pixel shuffle, and the loss is L1 on the masked pixels only.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.layers import Conv
from monai.networks.utils import pixelshuffle

from tpp_components.pretext.decoder import load_decoder
from tpp_components.pretext.encoders import encoder_channels, encoder_feature_map, encoder_stride
from tpp_components.pretext.patches import random_patch_mask, upsample_patch_mask

__all__ = ["SimMIM"]


class SimMIM(nn.Module):
    """SimMIM pretext around the encoder of a MONAI ``ViT``, ``UNETR`` or ``SwinUNETR``.

    Args:
        network: the (possibly injected) network.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        mask_patch: side of a masked patch in pixels (a multiple of the encoder stride).
        mask_ratio: fraction of masked patches.
        decoder_weights: a decoder saved by stage 0 to start from; None starts a fresh one.

    Example::

        >>> net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)
        >>> SimMIM(net, spatial_dims=2, in_channels=1)(torch.rand(2, 1, 64, 64))["loss"]
    """

    def __init__(
        self, network: nn.Module, spatial_dims: int, in_channels: int, mask_patch: int | None = None, mask_ratio: float = 0.6,
        decoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        self.network = network
        self.spatial_dims = spatial_dims
        self.stride = encoder_stride(network)
        self.mask_patch = mask_patch or self.stride
        if self.mask_patch % self.stride:
            raise ValueError(f"mask_patch {self.mask_patch} must be a multiple of the encoder stride {self.stride}.")
        self.mask_ratio = mask_ratio
        self.mask_value = nn.Parameter(torch.zeros(1, in_channels, *([1] * spatial_dims)))
        out = in_channels * self.stride**spatial_dims
        self.decoder = Conv[Conv.CONV, spatial_dims](encoder_channels(network), out, kernel_size=1)
        if decoder_weights:
            load_decoder(self, decoder_weights)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (L1 on masked pixels), ``pred`` (the reconstruction) and ``mask`` (pixel mask)."""
        spatial = images.shape[2:]
        if any(s % self.mask_patch for s in spatial):
            raise ValueError(f"image size {tuple(spatial)} must be divisible by the mask patch {self.mask_patch}.")
        grid = [s // self.mask_patch for s in spatial]
        n = int(torch.tensor(grid).prod())
        mask = upsample_patch_mask(random_patch_mask(images.shape[0], n, self.mask_ratio, images.device), grid, self.mask_patch)
        masked = images * (1 - mask) + self.mask_value * mask
        features = encoder_feature_map(self.network, masked)
        pred = pixelshuffle(self.decoder(features), self.spatial_dims, self.stride)
        per_pixel = (pred - images).abs() * mask
        loss = per_pixel.sum() / (mask.sum() * images.shape[1])
        return {"loss": loss, "pred": pred, "mask": mask}
