"""LoRA target parameters in HF peft's adapter format, and back.

``export_peft_adapter`` writes ``adapter_config.json`` + ``adapter_model.safetensors``, the files
``peft.PeftModel.from_pretrained`` reads, so the adapter can be loaded by peft onto the plain MONAI
network (or shared on the Hub) without this package. ``import_peft_adapter`` loads such a folder
into a network carrying our LoRA with the same configuration. Our LoRA is peft's own layer
(``inject_adapter_in_model``): only the key prefix and the config differ, so this module just
writes peft's config and renames keys; the checks make a partial load impossible (peft itself
warns and goes on).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file, save_file

from tpp_components.io import atomic_path, atomic_write_text
from tpp_components.peft.inject import get_peft_method, unwrap
from tpp_components.peft.lora import ADAPTER_NAME

__all__ = ["PeftAdapterError", "peft_lora_config", "export_peft_adapter", "import_peft_adapter"]

#: the key prefix of a ``PeftModel``'s adapter state dict (``PeftModel.base_model.model`` is the network)
PEFT_PREFIX = "base_model.model."
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"


class PeftAdapterError(ValueError):
    """The network or the adapter folder does not fit the peft adapter format."""


def _lora_method(network: nn.Module):
    method = get_peft_method(network)
    if method.name != "lora":
        raise PeftAdapterError(f"only LoRA / DoRA target parameters have a peft adapter format; the network carries '{method.name}'.")
    return method


def peft_lora_config(network: nn.Module) -> LoraConfig:
    """The ``peft.LoraConfig`` equivalent to the LoRA injected into ``network`` (its exact module names)."""
    network = unwrap(network)
    cfg = _lora_method(network).config
    modules = sorted(n for n, m in network.named_modules() if isinstance(m, LoraLayer))
    return LoraConfig(r=int(cfg.r), lora_alpha=float(cfg.alpha), lora_dropout=float(cfg.dropout), use_dora=bool(cfg.use_dora),
                      target_modules=modules, bias="none")


def export_peft_adapter(network: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the LoRA target parameters of ``network`` as a peft adapter folder; returns the folder.

    Each file is written atomically (a reader never sees a half-written file).
    """
    network = unwrap(network)
    config = peft_lora_config(network)
    state = get_peft_model_state_dict(network, adapter_name=ADAPTER_NAME)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file({PEFT_PREFIX + k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config.to_dict(), indent=2, default=sorted) + "\n")
    return directory


def import_peft_adapter(network: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Load a peft LoRA adapter folder into ``network`` (which carries our LoRA); returns ``network``.

    Raises:
        PeftAdapterError: a file is missing, the rank, alpha, DoRA flag or target modules differ from
            the network's, or a tensor is missing, unexpected or of another shape (all named).
    """
    network = unwrap(network)
    directory = Path(directory)
    missing_files = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (directory / n).is_file()]
    if missing_files:
        raise PeftAdapterError(f"peft adapter folder '{directory}' lacks {missing_files}.")
    try:
        saved = json.loads((directory / CONFIG_NAME).read_text())
    except json.JSONDecodeError as err:
        raise PeftAdapterError(f"'{directory / CONFIG_NAME}' is not valid JSON: {err}") from None
    ours = peft_lora_config(network)
    expected = {"peft_type": "LORA", "r": ours.r, "lora_alpha": ours.lora_alpha, "use_dora": ours.use_dora,
                "target_modules": sorted(ours.target_modules)}
    found = {k: saved.get(k) for k in expected}
    if isinstance(found["target_modules"], list):
        found["target_modules"] = sorted(found["target_modules"])
    wrong = {k: (found[k], v) for k, v in expected.items() if found[k] != v}
    if wrong:
        details = "; ".join(f"{k}: adapter has {a!r}, network expects {b!r}" for k, (a, b) in wrong.items())
        raise PeftAdapterError(f"'{directory / CONFIG_NAME}' does not fit the network: {details}")
    state = load_file(str(directory / WEIGHTS_NAME))
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in state.items()}
    wanted = get_peft_model_state_dict(network, adapter_name=ADAPTER_NAME)
    missing, unexpected = sorted(set(wanted) - set(state)), sorted(set(state) - set(wanted))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(wanted[k].shape)}" for k in set(wanted) & set(state)
              if state[k].shape != wanted[k].shape]
    if missing or unexpected or shapes:
        raise PeftAdapterError(f"'{directory / WEIGHTS_NAME}': missing {missing[:4]}, unexpected {unexpected[:4]}, "
                               f"shape mismatches {sorted(shapes)[:4]}")
    set_peft_model_state_dict(network, state, adapter_name=ADAPTER_NAME)
    return network
