"""The table of (backbone, spatial_dims) cases and PEFT method configurations every generic test runs."""

from __future__ import annotations

import torch.nn as nn
from monai.networks.nets import UNETR, SwinUNETR

from tpp_components.networks import TinyViTClassifier, ViTClassifier

SIZE = 32

BACKBONES = ["vit", "unetr", "swinunetr", "tinyvit"]
DIMS = [2, 3]
#: (backbone, spatial_dims) pairs that exist: TinyViT is 2D only
CASES = [(b, d) for b in BACKBONES for d in DIMS if not (b == "tinyvit" and d == 3)]

METHODS = {
    "lora": {"method": "lora", "r": 4, "alpha": 8, "target_modules": "attention"},
    "lora_attn_mlp": {"method": "lora", "r": 2, "target_modules": "attention_mlp"},
    "dora": {"method": "lora", "r": 4, "use_dora": True},
    "adapter": {"method": "adapter", "bottleneck": 8},
    "prompt_deep": {"method": "prompt", "num_tokens": 4, "deep": True},
    "prompt_shallow": {"method": "prompt", "num_tokens": 4, "deep": False},
    "ssf": {"method": "ssf"},
    "bitfit": {"method": "bitfit"},
}

#: name fragments the added target parameters must carry, per method
MARKERS = {"lora": ".lora_", "adapter": ".adapter.", "prompt": ".vpt.", "ssf": ".ssf_", "bitfit": ".bias"}


def image_size(kind: str) -> int:
    """Input side: SwinUNETR downsamples by 32 and its bottleneck norm needs more than one voxel."""
    return 64 if kind == "swinunetr" else SIZE


def make_backbone(kind: str, dims: int, seed: int = 0) -> nn.Module:
    """A small MONAI network with deterministic weights."""
    import torch

    torch.manual_seed(seed)
    size = (SIZE,) * dims
    if kind == "vit":
        return ViTClassifier(
            in_channels=1, img_size=size, patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2,
            spatial_dims=dims, num_classes=3, qkv_bias=True,
        )
    if kind == "unetr":
        return UNETR(1, 2, size, feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2, spatial_dims=dims, qkv_bias=True)
    if kind == "swinunetr":
        return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(1, 1, 1, 1), spatial_dims=dims)
    if kind == "tinyvit":
        # LiteMedSAM's layout (conv stage with BatchNorm, windowed stages, stride 4), scaled down;
        # window sizes that need padding at this size, as LiteMedSAM's do at 64 px
        return TinyViTClassifier(
            spatial_dims=dims, in_channels=1, num_classes=3, embed_dims=(8, 16, 16, 32), depths=(1, 1, 2, 1),
            num_heads=(1, 2, 2, 4), window_sizes=(3, 3, 5, 3), downsample_strides=(2, 2, 1),
        )
    raise ValueError(kind)


def supported(kind: str, method: str, dims: int = 2) -> bool:
    """VPT needs a ViT token sequence: windowed SwinUNETR and TinyViT are refused (tested
    separately); TinyViT is 2D only."""
    if kind == "tinyvit" and dims != 2:
        return False
    return not (method.startswith("prompt") and kind in ("swinunetr", "tinyvit"))
