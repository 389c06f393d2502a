"""The linear-probe head norm: MAE's non-affine ``BatchNorm1d`` before the linear head, safe for a batch of one."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HeadNorm"]


class HeadNorm(nn.BatchNorm1d):
    """A non-affine ``BatchNorm1d`` with a cumulative average of its statistics (``momentum=None``).

    A training batch of one sample (the short last batch of a dataset whose size leaves one over) has no batch
    variance, and ``BatchNorm1d`` refuses it; here it is normalised with the running statistics instead and leaves
    them unchanged. Every other batch is normalised exactly as by ``BatchNorm1d``, whose state-dict keys it keeps.

    Args:
        num_features: channels of the pooled features.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, affine=False, momentum=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # BatchNorm1d's forward for this configuration, written out: TorchScript (the zoo's model.ts) cannot call
        # super().forward
        if not self.training or x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked)  # momentum None: the cumulative average
        return F.batch_norm(x, self.running_mean, self.running_var, None, None, True, factor, self.eps)
