"""Inject a registered PEFT method into a network, find it again, and merge it."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch.nn as nn

from tpp_components.peft.base import PeftMethod
from tpp_components.peft.freeze import release_running_stats
from tpp_components.peft.registry import create_method

__all__ = ["inject", "get_peft_method", "merge", "PEFT_ATTRIBUTE", "unwrap"]

#: attribute under which the injected method (with its configuration) is kept on the network
PEFT_ATTRIBUTE = "tpp_peft_method"


def unwrap(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    return getattr(network, "module", network) if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network


def inject(
    network: nn.Module, method: str, exclude_modules: Sequence[str] = (), **options: Any
) -> nn.Module:
    """Inject PEFT method ``method`` into ``network`` in place and return it.

    Args:
        network: a MONAI ``ViT``, ``UNETR`` or ``SwinUNETR`` (2D or 3D), backbone weights loaded.
        method: a registered method name (``lora``, ``adapter``, ``prompt``, ``ssf``, ``bitfit``).
        exclude_modules: name prefixes never touched, e.g. ``["classification_head"]``.
        options: the method's configuration fields (e.g. ``r=8, target_modules="attention"``).

    Example::

        >>> net = ViT(1, (64, 64), 8, spatial_dims=2, classification=True)
        >>> inject(net, "lora", exclude_modules=["classification_head"], r=4, use_dora=True)
    """
    network = unwrap(network)
    if getattr(network, PEFT_ATTRIBUTE, None) is not None:
        raise ValueError(f"{type(network).__name__} already carries PEFT method '{get_peft_method(network).name}'.")
    peft_method = create_method(method, **options)
    peft_method.inject(network, exclude=tuple(exclude_modules))
    object.__setattr__(network, PEFT_ATTRIBUTE, peft_method)
    return network


def get_peft_method(network: nn.Module) -> PeftMethod:
    """The method injected into ``network``; raises if there is none."""
    method = getattr(unwrap(network), PEFT_ATTRIBUTE, None)
    if method is None:
        raise ValueError(f"{type(unwrap(network)).__name__} has no injected PEFT method (call inject first).")
    return method


def merge(network: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold the target parameters into the backbone and return a plain MONAI network.

    The result's state dict loads with ``strict=True`` into the un-injected network definition.

    Args:
        network: an injected network.
        inplace: merge ``network`` itself instead of a deep copy.

    Raises:
        NotImplementedError: the method cannot merge (adapter, prompt).
    """
    network = unwrap(network)
    method = get_peft_method(network)
    if not method.mergeable:
        raise NotImplementedError(f"PEFT method '{method.name}' cannot be merged into the base network.")
    merged = network if inplace else copy.deepcopy(network)
    merged = get_peft_method(merged).merge(merged)
    object.__setattr__(merged, PEFT_ATTRIBUTE, None)
    # a plain network again: no stage hooks left, so TorchScript can export it
    return release_running_stats(merged)
