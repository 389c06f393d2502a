"""Per-epoch statistics for a classifier's head norm.

``ViTClassifier`` / ``TinyViTClassifier`` with ``head_norm=True`` put a non-affine
``BatchNorm1d(momentum=None)`` before the linear head: its running statistics are a cumulative
average of every training batch it has seen. Over a frozen backbone (the linear probe) the
features do not move, so the average is exact. Under PEFT the features drift as the target
parameters train, and an average over all epochs no longer describes the features the head is
evaluated on: on a 4-class brain MRI run the balanced accuracy was 0.479 with the cumulative
statistics and 0.917 with the last epoch's, with identical training losses
(``bundles/brain_mri_classification/docs/README.md``). Ignite has no handler for this; it is
a few lines.
"""

from __future__ import annotations

import torch.nn as nn
from ignite.engine import Engine, Events
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["HeadNormStatistics"]


class HeadNormStatistics:
    """Reset every cumulative batch norm (``momentum=None``) of ``network`` when a training epoch starts.

    The statistics used by validation after an epoch are then that epoch's: an exact average
    of the features the head was trained on last. Batch norms with a momentum (a frozen
    backbone's) are left alone. A resumed run recomputes them too, as they are not part of the
    resumable (trainable-parameters) checkpoint.

    Args:
        network: the network (or the pretext model holding it) whose head norms to reset.
    """

    def __init__(self, network: nn.Module) -> None:
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def norms(self) -> list[_BatchNorm]:
        """The cumulative batch norms this handler resets."""
        return [m for m in self.network.modules() if isinstance(m, _BatchNorm) and m.momentum is None and m.track_running_stats]

    def __call__(self, engine: Engine | None = None) -> None:
        for norm in self.norms():
            norm.reset_running_stats()
