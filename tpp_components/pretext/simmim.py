"""SimMIM-style masked image modelling (Xie et al., CVPR 2022) for any supported encoder.

Random patches of the input are masked. Encoders with a patch-embedding hook (TinyViT) see the
masked embeddings replaced by a learned mask token, as in SimMIM; the others (ViT, UNETR,
SwinUNETR) see the masked pixels replaced by a learned per-channel value. Two targets:

- ``"pixels"`` (SimMIM): the last feature map is decoded by one 1x1 convolution and pixel
  shuffle; L1 on the masked pixels.
- ``"features"`` (masked feature prediction): the target is the encoder's own last feature map
  of the *unmasked* image computed with the target parameters at their values when the module
  was built (for TPP, the method's standard initialisation, i.e. the pretrained encoder);
  squared error between the layer-normed maps on the masked cells. No decoder is learned: the
  target parameters learn to restore the pretrained representation on the downstream images.
- ``"distill"`` (self-distillation, DINO-like): the same frozen reference encoder on the unmasked
  image is the teacher, the masked view the student; DINO's centred, sharpened cross-entropy over
  the pooled feature maps (:class:`~tpp_components.pretext.distill.DistillationHead`, a throwaway head).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.networks.utils import pixelshuffle

from tpp_components.networks.anatomy import anatomy_of

from tpp_components.peft.inject import get_peft_method, unwrap
from tpp_components.pretext.decoder import load_decoder
from tpp_components.pretext.distill import DistillationHead
from tpp_components.pretext.patches import random_patch_mask, upsample_patch_mask

__all__ = ["SimMIM", "SIMMIM_TARGETS"]

#: what the masked positions are trained to predict
SIMMIM_TARGETS = ("pixels", "features", "distill")


def _channel_layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.movedim(1, -1), x.shape[1:2]).movedim(-1, 1)


class SimMIM(nn.Module):
    """SimMIM pretext around the encoder of a MONAI ``ViT``, ``UNETR``, ``SwinUNETR`` or a ``TinyViT``.

    Args:
        network: the (possibly injected) network.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        mask_patch: side of a masked patch in pixels (a multiple of the encoder stride).
        mask_ratio: fraction of masked patches.
        decoder_weights: a decoder saved by stage 0 to start from; None starts a fresh one.
        target: ``"pixels"``, ``"features"`` or ``"distill"`` (see the module docstring); ``"features"``
            and ``"distill"`` need an injected PEFT method (its target parameters define the reference
            encoder, the teacher).

    Example::

        >>> net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2)
        >>> SimMIM(net, spatial_dims=2, in_channels=1)(torch.rand(2, 1, 64, 64))["loss"]
    """

    def __init__(
        self, network: nn.Module, spatial_dims: int, in_channels: int, mask_patch: int | None = None, mask_ratio: float = 0.6,
        decoder_weights: str | None = None, target: str = "pixels",
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if target not in SIMMIM_TARGETS:
            raise ValueError(f"SimMIM target must be one of {SIMMIM_TARGETS}, got '{target}'.")
        self.network = network
        self.anatomy = anatomy_of(network)
        self.spatial_dims = spatial_dims
        self.target = target
        self.stride = self.anatomy.stride(network)
        self.mask_patch = mask_patch or self.stride
        if self.mask_patch % self.stride:
            raise ValueError(f"mask_patch {self.mask_patch} must be a multiple of the encoder stride {self.stride}.")
        self.mask_ratio = mask_ratio
        token_channels = self.anatomy.embedding_channels(network)
        if token_channels is not None:
            self.embed_stride = self.anatomy.embedding_stride(network)
            self.mask_token = nn.Parameter(torch.zeros(token_channels))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        else:
            self.mask_value = nn.Parameter(torch.zeros(1, in_channels, *([1] * spatial_dims)))
        if target == "pixels":
            out = in_channels * self.stride**spatial_dims
            self.decoder = Conv[Conv.CONV, spatial_dims](self.anatomy.channels(network), out, kernel_size=1)
        else:
            try:
                method = get_peft_method(unwrap(network))
            except (TypeError, ValueError, AttributeError) as err:
                raise ValueError(
                    f"SimMIM target='{target}' learns from the pretrained encoder's features, which are defined by "
                    f"the target parameters at their initial values; the network has no PEFT method injected ({err})."
                ) from None
            names = set(method.target_names)
            # the reference encoder: these values substituted for the target parameters
            self._reference = {n: p.detach().clone() for n, p in network.named_parameters() if n in names}
            if target == "distill":
                self.distill = DistillationHead(self.anatomy.channels(network))
        if decoder_weights:
            load_decoder(self, decoder_weights)

    def _mask(self, images: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        spatial = images.shape[2:]
        if any(s % self.mask_patch for s in spatial):
            raise ValueError(f"image size {tuple(spatial)} must be divisible by the mask patch {self.mask_patch}.")
        grid = [s // self.mask_patch for s in spatial]
        n = int(torch.tensor(grid).prod())
        return random_patch_mask(images.shape[0], n, self.mask_ratio, images.device), grid

    @torch.no_grad()
    def _reference_features(self, images: torch.Tensor) -> torch.Tensor:
        """The unmasked images' feature map with the target parameters at their reference values."""
        params = dict(self.network.named_parameters())
        current = {n: params[n].detach().clone() for n in self._reference}
        try:
            for name, value in self._reference.items():
                params[name].copy_(value)
            return self.anatomy.feature_map(self.network, images)
        finally:
            for name, value in current.items():
                params[name].copy_(value)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``loss``, ``mask`` (pixel mask) and, for the pixel target, ``pred`` (the reconstruction)."""
        patch_mask, grid = self._mask(images)
        mask = upsample_patch_mask(patch_mask, grid, self.mask_patch)
        # the reference features first: they swap parameter values, which must precede the graph
        wanted = self._reference_features(images) if self.target != "pixels" else None
        if hasattr(self, "mask_token"):
            token_mask = upsample_patch_mask(patch_mask, grid, self.mask_patch // self.embed_stride)
            features = self.anatomy.masked_feature_map(self.network, images, token_mask, self.mask_token)
        else:
            features = self.anatomy.feature_map(self.network, images * (1 - mask) + self.mask_value * mask)
        if self.target == "distill":
            return {"loss": self.distill(features, wanted), "mask": mask}
        if wanted is not None:
            cell_mask = upsample_patch_mask(patch_mask, grid, self.mask_patch // self.stride)
            # the loss in fp32, also under autocast
            error = (_channel_layer_norm(features.float()) - _channel_layer_norm(wanted.float())).pow(2).mean(dim=1, keepdim=True)
            loss = (error * cell_mask).sum() / cell_mask.sum()
            return {"loss": loss, "mask": mask}
        pred = pixelshuffle(self.decoder(features), self.spatial_dims, self.stride).float()  # the loss in fp32
        per_pixel = (pred - images).abs() * mask
        loss = per_pixel.sum() / (mask.sum() * images.shape[1])
        return {"loss": loss, "pred": pred, "mask": mask}
