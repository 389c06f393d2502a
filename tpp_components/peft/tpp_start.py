"""How fine-tuning starts from TPP: the target parameters as TPP left them, or with their update scaled.

After TPP, LoRA's B (an adapter's up-projection, SSF's shift and scale, ...) is no longer at its standard
value, so the network computes a different function before the first fine-tuning step. The update scale
decides how much of that change fine-tuning starts with: ``1`` loads TPP's parameters as they are, ``0``
keeps TPP's randomly initialised parameters (LoRA's A, an adapter's down-projection) and puts the others
back at their standard value, so the network starts as the backbone itself with TPP's learned
projections ("A only"), and values between interpolate.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn

from tpp_components.peft.target_parameters import load_target_parameters, target_parameters

__all__ = ["start_from_tpp"]


def _is_constant(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is equal: a standard initialisation that carries no randomness (zeros, ones)."""
    flat = t.reshape(-1)
    return bool(flat.numel()) and bool(torch.all(flat == flat[0]))


def start_from_tpp(
    network: nn.Module, path: str | os.PathLike, head_modules: Sequence[str] = (), update_scale: float = 1.0
) -> list[str]:
    """Load the TPP target parameters at ``path`` into an injected ``network``, scaling the update it starts with.

    Each target parameter whose standard initialisation is constant (LoRA's B, the adapter's up-projection and
    biases, SSF's scale and shift) becomes ``standard + update_scale * (tpp - standard)``; the others (random
    standard initialisation: LoRA's A, the adapter's down-projection) and methods whose targets start from
    the backbone's own values (BitFit) take TPP's values as they are.

    Args:
        network: an injected network at its standard initialisation (as :func:`tpp_components.peft.inject` left it).
        path: TPP's ``tpp_target_parameters.safetensors``, checked by
            :func:`~tpp_components.peft.target_parameters.load_target_parameters`.
        head_modules: the task-head prefixes, excluded from the backbone fingerprint.
        update_scale: in ``[0, 1]``; 1 loads TPP's parameters unchanged.

    Returns:
        the names of the parameters that were scaled.
    """
    if not 0.0 <= float(update_scale) <= 1.0:
        raise ValueError(f"update_scale must be in [0, 1], got {update_scale!r}.")
    standard = {n: p.detach().clone() for n, p in target_parameters(network).items()} if update_scale != 1.0 else {}
    load_target_parameters(network, path, head_modules=head_modules)
    scaled = []
    with torch.no_grad():
        for name, param in target_parameters(network).items():
            if name in standard and _is_constant(standard[name]):
                param.copy_(standard[name] + update_scale * (param - standard[name]))
                scaled.append(name)
    return scaled
