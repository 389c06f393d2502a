"""Save and reload a pretext module's decoder, so that TPP starts from the decoder stage 0 trained.

Everything of a pretext module outside its ``network`` (the task network whose encoder it
wraps) is the decoder: MAE's decoder blocks, mask token and positions; SimMIM's mask value and
projection. Stage 0 saves it beside the backbone; TPP loads it with every key checked, so a
decoder of another pretext configuration is refused instead of half-loaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn

from tpp_components.peft.base import is_under

__all__ = ["PretextDecoderError", "decoder_state_dict", "load_decoder", "DECODER_EXCLUDES"]

#: the part of a pretext module that is not its decoder: the wrapped task network
DECODER_EXCLUDES = ("network",)


class PretextDecoderError(ValueError):
    """A saved pretext decoder does not fit the pretext module."""


def decoder_state_dict(pretext: nn.Module) -> dict[str, torch.Tensor]:
    """The pretext module's own tensors (its decoder), without the wrapped ``network``."""
    return {k: v for k, v in pretext.state_dict().items() if not is_under(k, DECODER_EXCLUDES)}


def load_decoder(pretext: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a decoder saved by stage 0 (``models/pretext_decoder.pt``) into ``pretext``.

    Raises:
        PretextDecoderError: the file is missing, or its keys or shapes differ from the
            module's decoder (each named); nothing is loaded then.
    """
    path = Path(path)
    if not path.is_file():
        raise PretextDecoderError(
            f"pretext decoder '{path}' does not exist: run stage 0 (pretrain) first, or start TPP from a fresh "
            "decoder with reuse_decoder=False."
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    own = decoder_state_dict(pretext)
    missing, unexpected = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
    shapes = [f"{k}: file {tuple(saved[k].shape)} vs module {tuple(v.shape)}" for k, v in own.items() if k in saved and saved[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise PretextDecoderError(
            f"pretext decoder '{path}' does not fit {type(pretext).__name__} (other pretext settings?): "
            f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}."
        )
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(saved[name].to(device=tensor.device, dtype=tensor.dtype))
    return pretext
