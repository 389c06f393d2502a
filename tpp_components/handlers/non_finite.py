"""Stop a stage on a NaN or infinite loss, with a non-zero exit and the last good checkpoint kept."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers import TerminateOnNan

from tpp_components.handlers.checkpoints import latest_checkpoint

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(TerminateOnNan):
    """ignite's ``TerminateOnNan`` that also fails the run.

    ``TerminateOnNan`` only calls ``engine.terminate()``: ignite then skips ``EPOCH_COMPLETED`` (no
    checkpoint of the poisoned weights is written) but still fires ``COMPLETED``, and
    ``monai.bundle run`` returns exit status 0, so a diverged stage looks like a finished one.
    This handler raises :class:`NonFiniteLossError` right after, naming the epoch, the iteration
    and the checkpoint a ``--resume True`` would continue from; nothing is saved after the bad step.
    Attach it first among the trainer's handlers, so that it runs before any other
    ``ITERATION_COMPLETED`` handler (the learning-rate scheduler, loggers).

    Args:
        output_transform: maps the engine's output to the loss (number, tensor or collection of them).
        checkpoint_dir: the stage's ``output_dir`` (for the message only).
        checkpoint_prefix: the stage's ``checkpoint_prefix`` (for the message only).
    """

    def __init__(self, output_transform: Callable[[Any], Any] = lambda x: x, checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_prefix: str | None = None) -> None:
        super().__init__(output_transform=output_transform)
        self.checkpoint_dir = checkpoint_dir
        self.checkpoint_prefix = checkpoint_prefix

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        already = engine.should_terminate
        super().__call__(engine)
        if engine.should_terminate and not already:
            last = None
            if self.checkpoint_dir is not None and self.checkpoint_prefix is not None:
                last = latest_checkpoint(self.checkpoint_dir, self.checkpoint_prefix)
            kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"non-finite loss {self._output_transform(engine.state.output)} at epoch {engine.state.epoch}, "
                f"iteration {engine.state.iteration}: the stage stopped before saving anything from this epoch; {kept} "
                "(lower the learning rate, check the data, then rerun with --resume True or afresh)."
            )
