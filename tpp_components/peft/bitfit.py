"""BitFit: train only the bias terms of the selected modules (Ben Zaken et al., ACL 2022).

No parameter is added: the target parameters are the existing biases, so merging is a no-op
and the fine-tuned network already is a plain network.
"""

from __future__ import annotations

import dataclasses

import torch.nn as nn

from tpp_components.peft.base import PeftMethod, PeftMethodConfig
from tpp_components.peft.registry import register_method

__all__ = ["BitFitConfig", "BitFit"]


@dataclasses.dataclass
class BitFitConfig(PeftMethodConfig):
    """BitFit configuration: by default every bias of the network outside the task head."""

    target_modules: str | list[str] = dataclasses.field(
        default="all", metadata={"help": "modules whose bias is trained (regex, names or preset)"}
    )


@register_method
class BitFit(PeftMethod):
    """Bias-only tuning."""

    name = "bitfit"
    config_class = BitFitConfig
    mergeable = True
    module_types = (nn.Module,)

    def _inject(self, network: nn.Module, module_names: list[str]) -> None:
        self.injected_modules = [m for m in module_names if _bias(network.get_submodule(m)) is not None]

    def _target_names(self, network: nn.Module, module_names: list[str]) -> list[str]:
        return [f"{m}.bias" for m in self.injected_modules]

    def merge(self, network: nn.Module) -> nn.Module:
        return network


def _bias(module: nn.Module) -> nn.Parameter | None:
    bias = module._parameters.get("bias")
    return bias if isinstance(bias, nn.Parameter) else None
