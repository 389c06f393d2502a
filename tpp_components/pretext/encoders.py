"""Uniform access to the encoder inside MONAI ``ViT``, ``UNETR``, ``SwinUNETR`` and our ``TinyViT``.

The pretext models hold the *whole* (injected) task network and only call its encoder, so the
target parameters have the same names in the pretext model and in the task model.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.nets import UNETR, ViT, SwinUNETR

from tpp_components.networks.tiny_vit import TinyViT

__all__ = [
    "vit_of", "is_vit_like", "head_modules", "encoder_stride", "encoder_feature_map", "vit_patch_size",
    "embedding_channels", "embedding_stride", "masked_feature_map",
]


def vit_of(network: nn.Module) -> ViT:
    """The ``ViT`` inside ``network`` (itself for a ``ViT``, ``.vit`` for ``UNETR``)."""
    if isinstance(network, ViT):
        return network
    if isinstance(network, UNETR):
        return network.vit
    raise TypeError(f"{type(network).__name__} has no ViT encoder; expected a MONAI ViT or UNETR.")


def is_vit_like(network: nn.Module) -> bool:
    """Whether ``network`` is a MONAI ``ViT`` or ``UNETR`` (token-sequence encoder)."""
    return isinstance(network, (ViT, UNETR))


def head_modules(network: nn.Module) -> list[str]:
    """Names of the task-specific modules, trained in full during fine-tuning and unused by pretext.

    ``ViT``: its classification head; ``UNETR`` / ``SwinUNETR`` / ``TinyViT``: every module but the
    encoder (the classification head, or the segmenter's decoder).
    """
    if isinstance(network, ViT):
        return ["classification_head"] if hasattr(network, "classification_head") else []
    if isinstance(network, UNETR):
        return [n for n, _ in network.named_children() if n != "vit"]
    if isinstance(network, SwinUNETR):
        return [n for n, _ in network.named_children() if n != "swinViT"]
    if isinstance(network, TinyViT):
        return [n for n, _ in network.named_children() if n not in ("patch_embed", "layers", "neck")]
    raise TypeError(f"unsupported network {type(network).__name__}; expected MONAI ViT, UNETR, SwinUNETR or TinyViT.")


def vit_patch_size(vit: ViT) -> tuple[int, ...]:
    """The patch size of a MONAI ``ViT`` (read from its convolutional or linear patch embedding)."""
    conv = vit.patch_embedding.patch_embeddings
    if isinstance(conv, (nn.Conv2d, nn.Conv3d)):
        return tuple(int(k) for k in conv.kernel_size)
    raise TypeError("only MONAI ViTs with proj_type='conv' are supported by the pretext tasks.")


def encoder_stride(network: nn.Module) -> int:
    """Downsampling factor between the input and the encoder's last feature map."""
    if is_vit_like(network):
        patch = vit_patch_size(vit_of(network))
        if len(set(patch)) != 1:
            raise ValueError(f"anisotropic patch size {patch} is not supported by the pretext decoders.")
        return patch[0]
    if isinstance(network, SwinUNETR):
        return 32
    if isinstance(network, TinyViT):
        return network.stride
    raise TypeError(f"unsupported network {type(network).__name__}.")


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


def encoder_feature_map(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last feature map ``(B, F, *spatial / stride)`` for any supported network."""
    if is_vit_like(network):
        tokens = vit_tokens(vit_of(network), x)
        grid = [s // encoder_stride(network) for s in x.shape[2:]]
        return tokens.transpose(1, 2).reshape(x.shape[0], tokens.shape[-1], *grid)
    if isinstance(network, SwinUNETR):
        return network.swinViT(x, network.normalize)[-1]
    if isinstance(network, TinyViT):
        return network.forward_features(x)[-1]
    raise TypeError(f"unsupported network {type(network).__name__}.")


def encoder_channels(network: nn.Module) -> int:
    """Channels of :func:`encoder_feature_map`'s output."""
    if is_vit_like(network):
        return vit_of(network).norm.normalized_shape[0]
    if isinstance(network, SwinUNETR):
        return network.swinViT.layers4[0].downsample.reduction.out_features
    if isinstance(network, TinyViT):
        return network.embed_dims[-1]
    raise TypeError(f"unsupported network {type(network).__name__}.")


def embedding_channels(network: nn.Module) -> int | None:
    """Channels of the patch embedding a learned mask token can replace, or None when the encoder
    has no such hook (SimMIM then masks pixels instead)."""
    if isinstance(network, TinyViT):
        return network.embed_dims[0]
    return None


def masked_feature_map(network: nn.Module, x: torch.Tensor, embedding_mask: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """:func:`encoder_feature_map` with the masked patch embeddings replaced by ``mask_token``.

    Args:
        network: an encoder with :func:`embedding_channels` (TinyViT).
        x: images ``(B, C, H, W)``.
        embedding_mask: ``(B, 1, *embedding grid)``, 1 where masked.
        mask_token: ``(embedding_channels,)``.
    """
    if isinstance(network, TinyViT):
        return network.forward_features(x, embedding_mask, mask_token)[-1]
    raise TypeError(f"{type(network).__name__} has no patch-embedding hook for a mask token.")


def embedding_stride(network: nn.Module) -> int:
    """Input pixels per patch-embedding cell of an encoder with :func:`embedding_channels`."""
    if isinstance(network, TinyViT):
        return network.embed_stride
    raise TypeError(f"{type(network).__name__} has no patch-embedding hook for a mask token.")
