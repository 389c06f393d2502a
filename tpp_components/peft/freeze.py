"""Frozen means frozen: no gradient, and no running statistics updated in training mode.

``requires_grad=False`` keeps a parameter still, but a BatchNorm layer in training mode still
rewrites its running mean and variance on every forward pass, and normalises with batch
statistics the pretrained backbone never saw. Engines call ``network.train()`` every epoch, so a
one-off ``eval()`` does not last: each frozen normalisation layer gets a forward pre-hook that
puts it back in eval mode before it runs. A later stage that trains the layer (the head of a
fine-tuning stage) or a merged network for export removes the hook again
(:func:`release_running_stats`; TorchScript cannot script the hook).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from tpp_components.peft.base import is_under

__all__ = ["freeze_running_stats", "release_running_stats", "has_running_stats"]

#: attribute holding the hook handle on a frozen normalisation layer
_HANDLE = "_tpp_frozen_running_stats"


def has_running_stats(module: nn.Module) -> bool:
    """Whether ``module`` keeps running statistics that training mode would update."""
    return isinstance(module, (_BatchNorm, _InstanceNorm)) and bool(module.track_running_stats)


def _stay_in_eval(module: nn.Module, args: tuple) -> None:
    module.training = False


def freeze_running_stats(network: nn.Module, trainable_modules: Sequence[str] = ()) -> list[str]:
    """Keep every normalisation layer with running statistics outside ``trainable_modules`` in eval mode.

    Args:
        network: the network (injected or plain).
        trainable_modules: name prefixes of modules that train in full (the task head), whose
            normalisation layers keep following ``train()`` / ``eval()``.

    Returns:
        the names of the layers held in eval mode (idempotent: a layer is hooked once; a layer
        inside ``trainable_modules`` that an earlier call froze is released).
    """
    names = []
    for name, module in network.named_modules():
        if not has_running_stats(module):
            continue
        if is_under(name, trainable_modules):
            _release(module)
            continue
        if getattr(module, _HANDLE, None) is None:
            object.__setattr__(module, _HANDLE, module.register_forward_pre_hook(_stay_in_eval))
        module.eval()
        names.append(name)
    return names


def _release(module: nn.Module) -> None:
    handle = getattr(module, _HANDLE, None)
    if handle is not None:
        handle.remove()
        object.__setattr__(module, _HANDLE, None)


def release_running_stats(network: nn.Module) -> nn.Module:
    """Remove the hooks :func:`freeze_running_stats` added (before export); returns ``network``."""
    for module in network.modules():
        _release(module)
    return network
