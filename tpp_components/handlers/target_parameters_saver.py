"""Ignite handler writing the target parameters (safetensors + manifest) during a run."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch.nn as nn
from ignite.engine import Engine, Events

from tpp_components.peft import save_target_parameters

__all__ = ["TargetParametersSaver"]


class TargetParametersSaver:
    """Save the target parameters of ``network`` atomically.

    Attach to a trainer to save when it completes, or to an evaluator with ``save_best=True``
    to save each time the key validation metric improves.

    Args:
        network: the injected network (inside a pretext module or the task model).
        path: destination ``.safetensors`` file; the manifest goes beside it.
        head_modules: task-head prefixes excluded from the backbone fingerprint.
        save_best: save on each new best key metric instead of at completion.
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike, head_modules: Sequence[str] = (), save_best: bool = False) -> None:
        self.network = network
        self.path = path
        self.head_modules = tuple(head_modules)
        self.save_best = save_best
        self.logger = logging.getLogger(__name__)

    def attach(self, engine: Engine) -> None:
        if self.save_best:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)
        else:
            engine.add_event_handler(Events.COMPLETED, self._save)

    def _on_epoch(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch == engine.state.epoch:
            self._save(engine)

    def _save(self, engine: Engine) -> None:
        extra = {"epoch": int(engine.state.epoch), "iteration": int(engine.state.iteration)}
        best = getattr(engine.state, "best_metric", None)
        if best is not None:
            extra["best_metric"] = float(best)
        save_target_parameters(self.network, self.path, self.head_modules, extra=extra)
        self.logger.info("saved target parameters to %s", self.path)
