"""Visual prompt tuning (Jia et al., ECCV 2022) for MONAI ViT encoders, 2D and 3D.

HF ``peft``'s prompt methods target language-model word embeddings, so VPT is written here.
Prompt tokens are prepended to the token sequence at the input of a transformer block and
removed again at its output, so every block still returns the original sequence layout (the
class token stays at index 0 and UNETR's skip connections still reshape to a patch grid).

* ``deep``: every targeted block has its own learnable prompts.
* ``shallow``: only the first targeted block has learnable prompts; the following blocks
  receive the prompt outputs of the block before them.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from monai.networks.blocks import TransformerBlock

from tpp_components.peft.base import InjectionError, PeftMethod, PeftMethodConfig
from tpp_components.peft.registry import register_method

__all__ = ["PromptConfig", "VisualPromptTuning", "PromptTokens"]


@dataclasses.dataclass
class PromptConfig(PeftMethodConfig):
    """Visual prompt tuning configuration."""

    target_modules: str | list[str] = dataclasses.field(
        default=r".*blocks\.\d+", metadata={"help": "transformer blocks (MONAI TransformerBlock) to prompt"}
    )
    num_tokens: int = dataclasses.field(default=8, metadata={"help": "prompt tokens per block"})
    deep: bool = dataclasses.field(default=True, metadata={"help": "deep (every block) or shallow (first block)"})
    init_std: float = dataclasses.field(default=0.02, metadata={"help": "std of the normal initialisation"})

    def __post_init__(self) -> None:
        if int(self.num_tokens) < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}.")


class _Carry:
    """Holds the prompt outputs of one block for the next one (shallow VPT)."""

    tokens: torch.Tensor | None = None


class PromptTokens(nn.Module):
    """Prompt tokens of one block; ``tokens`` is ``None`` for the non-first blocks of shallow VPT."""

    def __init__(self, num_tokens: int, hidden_size: int, learnable: bool, carry: _Carry, init_std: float) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.carry = carry
        self.tokens = nn.Parameter(torch.randn(1, num_tokens, hidden_size) * init_std) if learnable else None


def _insert_prompts(block: nn.Module, args: tuple) -> tuple:
    x, rest = args[0], args[1:]
    vpt: PromptTokens = block.vpt
    prompts = vpt.tokens.expand(x.shape[0], -1, -1) if vpt.tokens is not None else vpt.carry.tokens
    if prompts is None:
        raise RuntimeError("shallow visual prompts: the first prompted block did not run before this one.")
    return (torch.cat([prompts, x], dim=1), *rest)


def _strip_prompts(block: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    vpt: PromptTokens = block.vpt
    vpt.carry.tokens = output[:, : vpt.num_tokens]
    return output[:, vpt.num_tokens :]


@register_method
class VisualPromptTuning(PeftMethod):
    """Shallow or deep prompt tokens for the transformer blocks of MONAI ``ViT`` and ``UNETR``.

    Windowed attention (SwinUNETR, TinyViT) has no global token sequence, so it is refused with
    a clear error rather than half-supported.
    """

    name = "prompt"
    config_class = PromptConfig
    mergeable = False
    module_types = (TransformerBlock,)

    def _inject(self, network: nn.Module, module_names: list[str]) -> None:
        cfg = self.config
        carry = _Carry()
        for index, name in enumerate(module_names):
            block = network.get_submodule(name)
            ref = block.norm1.weight
            learnable = bool(cfg.deep) or index == 0
            vpt = PromptTokens(int(cfg.num_tokens), ref.shape[0], learnable, carry, float(cfg.init_std))
            block.add_module("vpt", vpt.to(device=ref.device, dtype=ref.dtype))
            block.register_forward_pre_hook(_insert_prompts)
            block.register_forward_hook(_strip_prompts)

    def inject(self, network: nn.Module, exclude: tuple[str, ...] = ()) -> None:
        if not any(isinstance(m, TransformerBlock) for m in network.modules()):
            raise InjectionError(
                f"PEFT method 'prompt' needs a ViT token sequence (MONAI TransformerBlock); "
                f"{type(network).__name__} has none (windowed attention, as in SwinUNETR and TinyViT, has no global "
                "sequence to prepend prompts to)."
            )
        super().inject(network, exclude)

    def _target_names(self, network: nn.Module, module_names: list[str]) -> list[str]:
        prefixes = tuple(f"{m}.vpt." for m in module_names)
        return [n for n, _ in network.named_parameters() if n.startswith(prefixes)]
