"""Builders that bundle configs call as ``_target_``: backbone + weights -> injected network -> pretext."""

from __future__ import annotations

import logging
from typing import Any

import torch.nn as nn

from tpp_components.networks.anatomy import head_modules
from tpp_components.networks.weights import load_backbone_weights
from tpp_components.networks.window_attention import fuse_window_attention
from tpp_components.peft import (
    freeze_running_stats,
    get_method_class,
    inject,
    is_under,
    set_trainable,
    start_from_tpp,
)

__all__ = ["build_network", "trainable_parameters", "INIT_CHOICES"]

logger = logging.getLogger(__name__)

#: the fine-tuning initialisation switch: TPP parameters, or the method's standard initialisation
INIT_CHOICES = ("tpp", "standard")


def build_network(
    backbone: nn.Module,
    peft: dict[str, Any] | None = None,
    merged: bool = False,
    backbone_weights: str | None = None,
    key_map: str = "monai",
    weights_prefix: str = "",
    init: str = "standard",
    target_parameters: str | None = None,
    tpp_update_scale: float = 1.0,
    freeze_backbone: bool = True,
    train_head: bool = True,
    allow_random_backbone: bool = False,
) -> nn.Module:
    """Assemble the network of one stage.

    Args:
        backbone: a MONAI ``ViT`` (classification), ``UNETR`` or ``SwinUNETR``.
        peft: ``{"method": name, **options}``, or None for no PEFT (stage 0, linear probe).
        merged: return the plain backbone when the method is mergeable; this is the
            ``network_def`` that loads a merged ``models/model.pt`` with ``strict=True``.
        backbone_weights: checkpoint loaded into the backbone before injection.
        key_map: key map for ``backbone_weights`` (see :data:`tpp_components.networks.weights.KEY_MAPS`).
        weights_prefix: prefix for the mapped keys (``"vit."`` for a ViT checkpoint into UNETR).
        init: ``"tpp"`` loads ``target_parameters``; ``"standard"`` keeps the method's own initialisation.
        target_parameters: TPP output (``.safetensors`` with its manifest), used when ``init="tpp"``.
        tpp_update_scale: how much of TPP's update fine-tuning starts with, in ``[0, 1]``: 1 as TPP left it, 0
            the backbone's own function with TPP's randomly initialised parameters (LoRA's A only); see
            :func:`tpp_components.peft.tpp_start.start_from_tpp`.
        freeze_backbone: without PEFT, train only the head (linear probe) instead of everything
            (stage 0, full fine-tuning).
        train_head: train the task head (False in pretext stages, where it is unused).
        allow_random_backbone: allow a frozen backbone (PEFT, TPP, linear probe) with no
            ``backbone_weights``. Adapting random weights is almost always a configuration
            mistake, so it is refused unless this says it is meant (tests, ablations).

    Frozen normalisation layers with running statistics stay in eval mode in every stage
    that freezes the backbone (:func:`tpp_components.peft.freeze_running_stats`).

    Example::

        >>> vit = ViT(1, (64, 64), 8, spatial_dims=2, classification=True, num_classes=3, post_activation="none")
        >>> net = build_network(vit, peft={"method": "lora", "r": 8}, backbone_weights="models/backbone.pt")
    """
    if init not in INIT_CHOICES:
        raise ValueError(f"init must be one of {INIT_CHOICES}, got '{init}'.")
    heads = head_modules(backbone)
    frozen = peft is not None or freeze_backbone
    if frozen and not backbone_weights and not merged and not allow_random_backbone:
        what = f"PEFT method '{dict(peft).get('method')}'" if peft is not None else "the linear probe (freeze_backbone)"
        raise ValueError(
            f"{what} would adapt a frozen {type(backbone).__name__} with no weights loaded (backbone_weights is "
            f"{backbone_weights!r}). Give the stage-0 or pretrained checkpoint as backbone_weights, or set "
            "allow_random_backbone=True to do this knowingly."
        )
    # a SwinUNETR built with MONAI's use_flash_attention=True gets SDPA in training too (same keys)
    fuse_window_attention(backbone)
    if backbone_weights:
        load_backbone_weights(backbone, backbone_weights, key_map=key_map, prefix=weights_prefix, allow_missing=heads)
    if peft is None and merged:
        return backbone  # the inference definition: nothing to freeze
    if peft is None:
        if init == "tpp":
            raise ValueError("init='tpp' needs a PEFT method (peft is None).")
        for name, param in backbone.named_parameters():
            in_head = is_under(name, heads)
            param.requires_grad_((in_head and train_head) or (not in_head and not freeze_backbone))
        if freeze_backbone:
            freeze_running_stats(backbone, heads if train_head else ())
        return backbone
    options = dict(peft)
    method = options.pop("method", None)
    if method is None:
        raise ValueError(f"peft configuration needs a 'method' key, got keys {sorted(peft)}.")
    if merged and get_method_class(method).mergeable:
        return backbone
    network = inject(backbone, method, exclude_modules=heads, **options)
    if init == "tpp":
        if not target_parameters:
            raise ValueError("init='tpp' needs the path of the TPP target parameters (target_parameters).")
        scaled = start_from_tpp(network, target_parameters, head_modules=heads, update_scale=tpp_update_scale)
        logger.info("initialised %s target parameters from %s%s", method, target_parameters,
                    f" (update scaled by {tpp_update_scale} in {len(scaled)} tensors)" if scaled else "")
    set_trainable(network, heads if train_head else ())
    return network


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters with ``requires_grad``: what an optimizer of a PEFT stage should hold."""
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"{type(module).__name__} has no trainable parameter.")
    return params
