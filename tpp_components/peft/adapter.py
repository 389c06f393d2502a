"""Bottleneck adapter in parallel to each MLP block (AdaptFormer, Chen et al., NeurIPS 2022).

HF ``peft`` has no parallel bottleneck adapter for vision transformers, so it is written here:
``mlp(x) + scale * up(act(down(x)))``. The adapter is attached as the child ``adapter`` of the
MLP block and called from a forward hook, so no existing parameter is renamed and backbone
checkpoints still load into the adapted network.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn as nn
from monai.networks.blocks import MLPBlock

from tpp_components.peft.base import PeftMethod, PeftMethodConfig
from tpp_components.peft.registry import register_method

__all__ = ["AdapterConfig", "Adapter", "BottleneckAdapter"]


@dataclasses.dataclass
class AdapterConfig(PeftMethodConfig):
    """AdaptFormer configuration."""

    target_modules: str | list[str] = dataclasses.field(
        default="mlp_blocks", metadata={"help": "MLP blocks to adapt (regex, names or preset 'mlp_blocks')"}
    )
    bottleneck: int = dataclasses.field(default=16, metadata={"help": "hidden width of the adapter"})
    scale: float = dataclasses.field(default=0.1, metadata={"help": "multiplier of the adapter output"})
    dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout inside the adapter"})

    def __post_init__(self) -> None:
        if int(self.bottleneck) < 1:
            raise ValueError(f"adapter bottleneck must be >= 1, got {self.bottleneck}.")


class BottleneckAdapter(nn.Module):
    """``scale * up(GELU(down(x)))``; ``up`` starts at zero so the adapted block starts as the original."""

    def __init__(self, features: int, bottleneck: int, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Linear(features, bottleneck)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.up = nn.Linear(bottleneck, features)
        self.scale = scale
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.up(self.drop(self.act(self.down(x))))


def _parallel_adapter_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    # a plain function (not a closure) so deep copies of the network stay self-contained
    return output + module.adapter(args[0])


@register_method
class Adapter(PeftMethod):
    """AdaptFormer adapters beside MONAI ``MLPBlock`` modules (ViT, UNETR, SwinUNETR)."""

    name = "adapter"
    config_class = AdapterConfig
    mergeable = False
    module_types = (MLPBlock,)

    def _inject(self, network: nn.Module, module_names: list[str]) -> None:
        cfg = self.config
        for name in module_names:
            mlp = network.get_submodule(name)
            ref = next(p for p in mlp.linear1.parameters())
            adapter = BottleneckAdapter(mlp.linear1.in_features, int(cfg.bottleneck), float(cfg.scale), cfg.dropout)
            mlp.add_module("adapter", adapter.to(device=ref.device, dtype=ref.dtype))
            mlp.register_forward_hook(_parallel_adapter_hook)

    def _target_names(self, network: nn.Module, module_names: list[str]) -> list[str]:
        prefixes = tuple(f"{m}.adapter." for m in module_names)
        return [n for n, _ in network.named_parameters() if n.startswith(prefixes)]
