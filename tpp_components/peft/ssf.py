"""SSF: scale and shift the features of selected layers (Lian et al., NeurIPS 2022).

Not in HF ``peft``, so written here. Each target layer gets ``ssf_scale`` (ones) and
``ssf_shift`` (zeros) over its output channels, applied by a forward hook; merging folds them
into the layer's weight and bias, which needs the layer to have a bias (or a zero shift).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from tpp_components.peft.base import PeftMethod, PeftMethodConfig
from tpp_components.peft.registry import register_method

__all__ = ["SSFConfig", "SSF"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclasses.dataclass
class SSFConfig(PeftMethodConfig):
    """SSF configuration."""

    target_modules: str | list[str] = dataclasses.field(
        default="ssf_default", metadata={"help": "Linear / LayerNorm / Conv layers whose outputs are scaled"}
    )


def _channels(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return module.out_channels


def _broadcast(vector: torch.Tensor, module: nn.Module, ndim: int) -> torch.Tensor:
    if isinstance(module, _CONV):
        return vector.view(1, -1, *([1] * (ndim - 2)))
    return vector


def _scale_shift_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    scale = _broadcast(module.ssf_scale, module, output.ndim)
    shift = _broadcast(module.ssf_shift, module, output.ndim)
    return output * scale + shift


@register_method
class SSF(PeftMethod):
    """Scale-shift vectors on Linear, LayerNorm and Conv outputs; mergeable."""

    name = "ssf"
    config_class = SSFConfig
    mergeable = True
    module_types = (nn.Linear, nn.LayerNorm, *_CONV)

    def _inject(self, network: nn.Module, module_names: list[str]) -> None:
        for name in module_names:
            module = network.get_submodule(name)
            ref = next(module.parameters())
            c = _channels(module)
            module.register_parameter("ssf_scale", nn.Parameter(torch.ones(c, device=ref.device, dtype=ref.dtype)))
            module.register_parameter("ssf_shift", nn.Parameter(torch.zeros(c, device=ref.device, dtype=ref.dtype)))
            module.register_forward_hook(_scale_shift_hook)

    def _target_names(self, network: nn.Module, module_names: list[str]) -> list[str]:
        return [f"{m}.{p}" for m in module_names for p in ("ssf_scale", "ssf_shift")]

    @torch.no_grad()
    def merge(self, network: nn.Module) -> nn.Module:
        for name in self.injected_modules:
            module = network.get_submodule(name)
            scale, shift = module.ssf_scale.detach(), module.ssf_shift.detach()
            weight = getattr(module, "weight", None)
            bias = getattr(module, "bias", None)
            if weight is None or (bias is None and bool(shift.abs().max() > 0)):
                raise ValueError(
                    f"SSF cannot merge into '{name}' ({type(module).__name__}): it has no "
                    f"{'weight' if weight is None else 'bias'} to absorb the scale/shift."
                )
            weight.mul_(scale.view(-1, *([1] * (weight.ndim - 1))) if not isinstance(module, nn.LayerNorm) else scale)
            if bias is not None:
                bias.mul_(scale).add_(shift)
            del module.ssf_scale, module.ssf_shift
            # hooks have no public removal without their handle; drop ours by identity
            for key, hook in list(module._forward_hooks.items()):
                if hook is _scale_shift_hook:
                    del module._forward_hooks[key]
        return network
