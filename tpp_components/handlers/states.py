"""State views handed to ``CheckpointSaver`` / ``CheckpointLoader``.

MONAI's checkpoint handlers save whatever ``state_dict()`` an object returns (atomically, via
ignite's ``DiskSaver``); these views decide *what* is saved: only the trainable tensors for
resumable PEFT/TPP checkpoints, the merged plain network for ``models/model.pt``, the backbone
without its head for stage 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tpp_components.peft import get_peft_method, is_under, merge, unwrap
from tpp_components.peft.inject import PEFT_ATTRIBUTE
from tpp_components.pretext.decoder import DECODER_EXCLUDES

__all__ = ["TrainableState", "DeployableState", "BackboneState", "PretextDecoderState"]


class TrainableState:
    """The trainable parameters of a module (target parameters + head or pretext decoder).

    ``load_state_dict`` is strict: every trainable tensor must be present, nothing else.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in unwrap(self.module).named_parameters() if p.requires_grad}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        params = {n: p for n, p in unwrap(self.module).named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(f"trainable-state checkpoint: missing keys {missing[:8]}, unexpected keys {unexpected[:8]}.")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state[name])


class DeployableState:
    """What ``models/model.pt`` holds: the merged plain network when the method can merge,
    else the injected network's full state dict (which the bundle's ``network_def`` rebuilds)."""

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def state_dict(self) -> dict[str, torch.Tensor]:
        network = unwrap(self.network)
        if getattr(network, PEFT_ATTRIBUTE, None) is not None and get_peft_method(network).mergeable:
            network = merge(network)
        return {k: v.detach().clone() for k, v in network.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        raise NotImplementedError("load models/model.pt into the bundle's network_def instead.")


class _PartialState:
    """A view of the tensors of ``module`` whose names ``_keep`` accepts.

    ``load_state_dict`` with ``strict`` refuses, naming them, any missing or unexpected key;
    without it, the keys the view holds are loaded and the others ignored.
    """

    what = "checkpoint"

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def _keep(self, key: str) -> bool:
        raise NotImplementedError

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in unwrap(self.module).state_dict().items() if self._keep(k)}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        expected = set(self.state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if strict and (missing or unexpected):
            raise KeyError(
                f"{self.what}: missing keys {missing[:8]} ({len(missing)}), unexpected keys {unexpected[:8]} ({len(unexpected)})."
            )
        unwrap(self.module).load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


class BackboneState(_PartialState):
    """A network's state dict without its task head: the stage-0 backbone checkpoint
    (with ``strict``, the task head may be absent but every backbone key must be there)."""

    what = "backbone checkpoint"

    def __init__(self, network: nn.Module, head_modules: Sequence[str] = ()) -> None:
        super().__init__(network)
        self.head_modules = tuple(head_modules)

    def _keep(self, key: str) -> bool:
        return not is_under(key, self.head_modules)


class PretextDecoderState(_PartialState):
    """The decoder of a pretext module (everything but its ``network``), saved beside the stage-0
    backbone so that TPP can start from it (:func:`tpp_components.pretext.load_decoder`)."""

    what = "pretext decoder checkpoint"

    def _keep(self, key: str) -> bool:
        return not is_under(key, DECODER_EXCLUDES)
