"""Patch <-> image conversions and random patch masks, 2D and 3D."""

from __future__ import annotations

import torch
from einops import rearrange

__all__ = ["patchify", "random_patch_mask", "upsample_patch_mask"]


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, N, patch**d * C)`` in the order a MONAI conv patch embedding flattens."""
    if images.ndim == 4:
        return rearrange(images, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)
    if images.ndim == 5:
        return rearrange(images, "b c (d o) (h p) (w q) -> b (d h w) (o p q c)", o=patch, p=patch, q=patch)
    raise ValueError(f"expected a batch of 2D or 3D images (4 or 5 dims), got shape {tuple(images.shape)}.")


def random_patch_mask(batch: int, num_patches: int, ratio: float, device: torch.device | str) -> torch.Tensor:
    """Boolean mask ``(B, N)``, True where a patch is masked; exactly ``round(ratio * N)`` per image."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1), got {ratio}.")
    num_masked = max(1, min(num_patches - 1, int(round(ratio * num_patches))))
    order = torch.rand(batch, num_patches, device=device).argsort(dim=1)
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=device)
    mask.scatter_(1, order[:, :num_masked], True)
    return mask


def upsample_patch_mask(mask: torch.Tensor, grid: list[int], patch: int) -> torch.Tensor:
    """``(B, N)`` patch mask -> ``(B, 1, *spatial)`` pixel mask (float)."""
    m = mask.float().reshape(mask.shape[0], 1, *grid)
    for dim in range(2, m.ndim):
        m = m.repeat_interleave(patch, dim=dim)
    return m
