"""LoRA and DoRA through HF ``peft`` (which covers Linear and Conv1d/2d/3d layers)."""

from __future__ import annotations

import dataclasses

import torch.nn as nn
from peft import LoraConfig as HFLoraConfig
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer

from tpp_components.peft.base import PeftMethod, PeftMethodConfig
from tpp_components.peft.registry import register_method

__all__ = ["LoRAConfig", "LoRA"]

ADAPTER_NAME = "default"


@dataclasses.dataclass
class LoRAConfig(PeftMethodConfig):
    """Low-rank adaptation: ``W x + (alpha / r) B A x`` with ``B = 0`` at the standard initialisation."""

    target_modules: str | list[str] = dataclasses.field(
        default="attention", metadata={"help": "regex, module names, or preset ('attention', 'attention_mlp', 'mlp')"}
    )
    r: int = dataclasses.field(default=8, metadata={"help": "rank of the update"})
    alpha: float = dataclasses.field(default=16.0, metadata={"help": "scaling numerator (scale = alpha / r)"})
    dropout: float = dataclasses.field(default=0.0, metadata={"help": "dropout on the LoRA branch input"})
    use_dora: bool = dataclasses.field(default=False, metadata={"help": "weight-decomposed LoRA (DoRA)"})

    def __post_init__(self) -> None:
        if int(self.r) < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {self.r}.")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")


@register_method
class LoRA(PeftMethod):
    """LoRA / DoRA injected with ``peft.inject_adapter_in_model`` (no ``PeftModel`` wrapper).

    Example::

        >>> net = ViT(1, (64, 64), 8, spatial_dims=2)
        >>> LoRA(LoRAConfig(r=4, target_modules="attention")).inject(net)
    """

    name = "lora"
    config_class = LoRAConfig
    mergeable = True
    module_types = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)

    def _inject(self, network: nn.Module, module_names: list[str]) -> None:
        cfg = self.config
        hf_config = HFLoraConfig(
            r=int(cfg.r),
            lora_alpha=float(cfg.alpha),
            lora_dropout=float(cfg.dropout),
            use_dora=bool(cfg.use_dora),
            target_modules=list(module_names),
            bias="none",
        )
        inject_adapter_in_model(hf_config, network, adapter_name=ADAPTER_NAME)

    def _target_names(self, network: nn.Module, module_names: list[str]) -> list[str]:
        return [n for n, _ in network.named_parameters() if ".lora_" in n]

    def canonical_name(self, name: str) -> str:
        return name.replace(".base_layer.", ".")

    def merge(self, network: nn.Module) -> nn.Module:
        """Merge each LoRA layer into its base layer and put the base layer back in its place."""
        tuned = [(n, m) for n, m in network.named_modules() if isinstance(m, BaseTunerLayer)]
        for name, module in tuned:
            module.merge(safe_merge=True)
            parent_name, _, child = name.rpartition(".")
            parent = network.get_submodule(parent_name) if parent_name else network
            setattr(parent, child, module.get_base_layer())
        return network
