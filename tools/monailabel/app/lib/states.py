"""The task head of a network as a checkpoint view (what a merged ``model.pt`` shares with the training network)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from tpp_components.peft import is_under

__all__ = ["HeadState"]


class HeadState:
    """The tensors of ``network`` under ``head_modules`` (the task head, which PEFT never injects into).

    A merged ``models/model.pt`` names its head tensors exactly as the injected training network does
    (only the adapted backbone layers change names when merged), so the head can be carried over from it.
    ``load_state_dict`` takes a whole-network checkpoint, keeps the head's keys and requires every one of
    them: a checkpoint that lacks part of the head is refused, naming the keys (the non-strict load that
    MONAI Label would otherwise do ignores them silently).
    """

    def __init__(self, network: nn.Module, head_modules: Sequence[str]) -> None:
        if not head_modules:
            raise ValueError("HeadState needs the task head's module names (head_modules is empty).")
        self.network = network
        self.head_modules = tuple(head_modules)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.network.state_dict().items() if is_under(k, self.head_modules)}

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> None:
        expected = self.state_dict()
        missing = sorted(set(expected) - set(state))
        if missing:
            raise KeyError(f"checkpoint lacks task-head keys {missing[:8]} ({len(missing)} of {len(expected)}).")
        bad = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
        if bad:
            raise KeyError(f"task-head shape mismatch {bad[:8]}.")
        self.network.load_state_dict({k: state[k] for k in expected}, strict=False)  # head keys only, all present
