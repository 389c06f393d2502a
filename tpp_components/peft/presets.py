"""Named target-module presets shared by the methods, valid for MONAI ViT, UNETR, SwinUNETR and TinyViT.

MONAI's ViT blocks name attention ``attn.qkv`` / ``attn.out_proj`` and the MLP
``mlp.linear1`` / ``mlp.linear2``; SwinUNETR's windowed attention uses ``attn.qkv`` /
``attn.proj``, and so does our TinyViT (whose MLP is MONAI's ``MLPBlock``). The fused ``qkv``
layer adapts q, k and v together. ``late_attention_mlp`` is TinyViT-only.
"""

from __future__ import annotations

__all__ = ["TARGET_PRESETS", "resolve_target_modules"]

_ATTN = r"attn\.(qkv|out_proj|proj)"
_MLP = r"mlp\.(linear1|linear2)"
#: TinyViT's last two stages (``layers.2``, ``layers.3``): earlier frozen stages then need no backward pass
_LATE = r"layers\.[23]\.blocks\.\d+"

TARGET_PRESETS: dict[str, str] = {
    # LoRA / SSF on linear layers
    "attention": rf".*\.{_ATTN}",
    "attention_mlp": rf".*\.({_ATTN}|{_MLP})",
    "mlp": rf".*\.{_MLP}",
    "late_attention_mlp": rf"{_LATE}\.({_ATTN}|{_MLP})",
    # adapters sit beside whole MLP blocks
    "mlp_blocks": r".*blocks\.\d+\.mlp",
    # SSF: linear layers with a bias plus the blocks' layer norms (all foldable on merge)
    "ssf_default": rf".*\.({_MLP}|attn\.(out_proj|proj)|norm\d?)",
    # BitFit: every bias of the encoder blocks, patch embedding and final norm
    "all": r".*",
}


def resolve_target_modules(target_modules: str | list[str]) -> str | list[str]:
    """Replace a preset name by its pattern; leave regular expressions and name lists as they are."""
    if isinstance(target_modules, str):
        return TARGET_PRESETS.get(target_modules, target_modules)
    if not target_modules:
        raise ValueError("target_modules is empty; give a regex, a list of module names or a preset name.")
    return list(target_modules)
