"""Masked autoencoder (He et al., CVPR 2022) around the ViT encoder of a MONAI ViT or UNETR."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

from tpp_components.pretext.decoder import load_decoder
from tpp_components.networks.anatomy import vit_of, vit_patch_size, vit_tokens
from tpp_components.pretext.patches import patchify, random_patch_mask

__all__ = ["MaskedAutoencoder"]


class MaskedAutoencoder(nn.Module):
    """MAE pretext: drop a random ``mask_ratio`` of patch tokens, encode the rest, reconstruct the dropped ones.

    The light decoder exists only in this module; the encoder is the one inside ``network``, so
    the same module trains a whole backbone (stage 0) or only the injected target parameters (TPP).
    As in MAE and MONAI's ``MaskedAutoEncoderViT``, the class token goes through the decoder, so
    its last-layer output gets a gradient too.

    Args:
        network: a MONAI ``ViT`` or ``UNETR`` (2D or 3D), possibly with PEFT injected.
        mask_ratio: fraction of patches dropped.
        decoder_hidden: decoder width.
        decoder_layers: decoder transformer blocks.
        decoder_heads: decoder attention heads.
        norm_pix_loss: reconstruct per-patch normalised pixels.
        decoder_weights: a decoder saved by stage 0 (``pretext_decoder.pt``) to start from
            (see :func:`tpp_components.pretext.load_decoder`); None starts a fresh decoder.

    Example::

        >>> net = ViT(1, (64, 64), 8, hidden_size=192, num_layers=6, num_heads=3, spatial_dims=2)
        >>> out = MaskedAutoencoder(net)(torch.rand(2, 1, 64, 64))
        >>> out["loss"].backward()
    """

    def __init__(
        self,
        network: nn.Module,
        mask_ratio: float = 0.75,
        decoder_hidden: int = 128,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        norm_pix_loss: bool = True,
        decoder_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        vit = vit_of(network)
        patch = vit_patch_size(vit)
        if len(set(patch)) != 1:
            raise ValueError(f"MAE needs an isotropic patch size, got {patch}.")
        self.patch = patch[0]
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        hidden = vit.norm.normalized_shape[0]
        num_patches = vit.patch_embedding.position_embeddings.shape[1]
        self.has_cls = hasattr(vit, "cls_token")
        in_channels = vit.patch_embedding.patch_embeddings.in_channels
        self.decoder_embed = nn.Linear(hidden, decoder_hidden)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden))
        self.decoder_pos = nn.Parameter(torch.randn(1, num_patches + int(self.has_cls), decoder_hidden) * 0.02)
        self.decoder_blocks = nn.ModuleList(
            [TransformerBlock(decoder_hidden, decoder_hidden * 4, decoder_heads) for _ in range(decoder_layers)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_hidden)
        self.decoder_pred = nn.Linear(decoder_hidden, self.patch ** len(patch) * in_channels)
        nn.init.normal_(self.mask_token, std=0.02)
        if decoder_weights:
            load_decoder(self, decoder_weights)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``loss`` (mean squared error on the masked patches), ``pred`` and ``mask``."""
        vit = vit_of(self.network)
        b = images.shape[0]
        c = int(self.has_cls)
        n = self.decoder_pos.shape[1] - c
        mask = random_patch_mask(b, n, self.mask_ratio, images.device)
        keep = (~mask).nonzero()[:, 1].reshape(b, -1)
        latent = self.decoder_embed(vit_tokens(vit, images, keep=keep, keep_cls=True))
        # under autocast the encoder's tokens come in its compute dtype (bf16): the mask tokens follow
        tokens = self.mask_token.to(latent.dtype).expand(b, n, -1).clone()
        tokens[~mask] = latent[:, c:].reshape(-1, tokens.shape[-1])
        tokens = torch.cat([latent[:, :c], tokens], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            tokens = block(tokens)
        pred = self.decoder_pred(self.decoder_norm(tokens))[:, c:].float()  # the loss in fp32, also under autocast
        target = patchify(images, self.patch)
        if self.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)
        loss = (per_patch * mask).sum() / mask.sum()
        return {"loss": loss, "pred": pred, "mask": mask}
