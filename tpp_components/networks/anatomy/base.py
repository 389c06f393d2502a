"""Where the parts of a backbone are: one :class:`Anatomy` per network kind, found by the network's type.

The pretext tasks, the PEFT builder and the target-parameter bookkeeping ask an anatomy instead of testing the
network's type: which modules are the task head, what the encoder's last feature map is (its channels and stride),
and, where the encoder has one, the patch embedding a learned mask token can replace. A new backbone kind is one
file in this package that subclasses :class:`Anatomy` and registers it with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

__all__ = ["Anatomy", "register", "anatomy_of", "head_modules"]


class Anatomy:
    """The parts of one backbone kind. Subclasses give :meth:`encoder_modules`, :meth:`feature_map`,
    :meth:`channels` and :meth:`stride`; the mask-token hook is optional (SimMIM masks pixels without it)."""

    def encoder_modules(self, network: nn.Module) -> list[str]:
        """Names of ``network``'s top-level children that make the encoder (the pretext tasks train these)."""
        raise NotImplementedError

    def head_modules(self, network: nn.Module) -> list[str]:
        """Names of the task-specific children, trained in full during fine-tuning and unused by the pretext tasks:
        every child outside the encoder."""
        encoder = set(self.encoder_modules(network))
        return [name for name, _ in network.named_children() if name not in encoder]

    def feature_map(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map ``(B, channels, *spatial / stride)``."""
        raise NotImplementedError

    def channels(self, network: nn.Module) -> int:
        """Channels of :meth:`feature_map`."""
        raise NotImplementedError

    def stride(self, network: nn.Module) -> int:
        """Input pixels per cell of :meth:`feature_map`, along each axis."""
        raise NotImplementedError

    def token_encoder(self, network: nn.Module) -> nn.Module | None:
        """The MONAI ``ViT`` that encodes ``network``'s input as a token sequence (MAE drops tokens from it); None
        where the encoder is not one."""
        return None

    def embedding_channels(self, network: nn.Module) -> int | None:
        """Channels of the patch embedding a learned mask token replaces; None where the encoder has no such hook."""
        return None

    def embedding_stride(self, network: nn.Module) -> int:
        """Input pixels per patch-embedding cell (encoders with :meth:`embedding_channels`)."""
        raise TypeError(f"{type(network).__name__} has no patch-embedding hook for a mask token.")

    def masked_feature_map(
        self, network: nn.Module, x: torch.Tensor, embedding_mask: torch.Tensor, mask_token: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`feature_map` with the masked patch embeddings (``embedding_mask`` 1) replaced by ``mask_token``."""
        raise TypeError(f"{type(network).__name__} has no patch-embedding hook for a mask token.")


_ANATOMIES: dict[type, Anatomy] = {}


def register(network_type: type) -> Callable[[type[Anatomy]], type[Anatomy]]:
    """Class decorator: the decorated :class:`Anatomy` describes ``network_type`` and its subclasses."""

    def decorate(cls: type[Anatomy]) -> type[Anatomy]:
        _ANATOMIES[network_type] = cls()
        return cls

    return decorate


def anatomy_of(network: nn.Module) -> Anatomy:
    """The anatomy of ``network``'s type (the nearest registered class in its method resolution order)."""
    for cls in type(network).__mro__:
        if cls in _ANATOMIES:
            return _ANATOMIES[cls]
    known = ", ".join(sorted(t.__name__ for t in _ANATOMIES))
    raise TypeError(f"unsupported network {type(network).__name__}; expected one of: {known} "
                    "(a new kind registers an Anatomy in tpp_components/networks/anatomy/).")


def head_modules(network: nn.Module) -> list[str]:
    """Names of ``network``'s task-specific modules (:meth:`Anatomy.head_modules`)."""
    return anatomy_of(network).head_modules(network)
