"""MONAI ``ViT`` and ``UNETR``: a token-sequence encoder (``UNETR.vit``), the only kind MAE drops tokens from."""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import UNETR, ViT

from tpp_components.networks.anatomy.base import Anatomy, anatomy_of, register

__all__ = ["ViTAnatomy", "UNETRAnatomy", "vit_of", "vit_patch_size", "vit_tokens"]


def vit_of(network: nn.Module) -> ViT:
    """The ``ViT`` inside ``network``, as its anatomy's :meth:`~Anatomy.token_encoder` gives it."""
    vit = anatomy_of(network).token_encoder(network)
    if not isinstance(vit, ViT):
        raise TypeError(f"{type(network).__name__} has no ViT encoder; expected a MONAI ViT or UNETR.")
    return vit


def vit_patch_size(vit: ViT) -> tuple[int, ...]:
    """The patch size of a MONAI ``ViT`` (read from its convolutional patch embedding)."""
    conv = vit.patch_embedding.patch_embeddings
    if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        return tuple(int(k) for k in conv.kernel_size)
    raise TypeError("only MONAI ViTs with proj_type='conv' are supported by the pretext tasks.")


def vit_tokens(vit: ViT, x: torch.Tensor, keep: torch.Tensor | None = None, keep_cls: bool = False) -> torch.Tensor:
    """Run a MONAI ViT encoder and return its normalised tokens.

    Args:
        vit: the encoder.
        x: images ``(B, C, *spatial)``.
        keep: optional indices ``(B, K)`` of the patch tokens to keep (MAE token dropping).
        keep_cls: keep the class token first in the output (MAE's decoder reads it); by
            default only the patch tokens are returned.
    """
    tokens = vit.patch_embedding(x)
    if keep is not None:
        tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    has_cls = hasattr(vit, "cls_token")
    if has_cls:
        tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    for block in vit.blocks:
        tokens = block(tokens)
    tokens = vit.norm(tokens)
    return tokens[:, 1:] if has_cls and not keep_cls else tokens


@register(ViT)
class ViTAnatomy(Anatomy):
    """A MONAI ``ViT``: everything but the classification head is the encoder."""

    def encoder_modules(self, network: nn.Module) -> list[str]:
        return [name for name, _ in network.named_children() if name != "classification_head"]

    def token_encoder(self, network: nn.Module) -> nn.Module:
        return network

    def feature_map(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        tokens = vit_tokens(vit_of(network), x)
        grid = [s // self.stride(network) for s in x.shape[2:]]
        return tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], *grid)

    def channels(self, network: nn.Module) -> int:
        return vit_of(network).norm.normalized_shape[0]

    def stride(self, network: nn.Module) -> int:
        patch = vit_patch_size(vit_of(network))
        if len(set(patch)) != 1:
            raise ValueError(f"anisotropic patch size {patch} is not supported by the pretext decoders.")
        return patch[0]


@register(UNETR)
class UNETRAnatomy(ViTAnatomy):
    """A MONAI ``UNETR``: its ``vit`` is the encoder, the convolutional decoder the head."""

    def encoder_modules(self, network: nn.Module) -> list[str]:
        return ["vit"]

    def token_encoder(self, network: nn.Module) -> nn.Module:
        return network.vit
