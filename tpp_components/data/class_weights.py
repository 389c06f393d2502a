"""Class weights for imbalanced classification datasets."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["class_weights"]


def class_weights(items: Sequence[dict], num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (C * n_c)`` from the ``label`` of each datalist item.

    Raises:
        ValueError: a class has no item (its weight would be infinite), naming the class index.
    """
    counts = torch.bincount(torch.tensor([int(d["label"]) for d in items]), minlength=num_classes).float()
    if len(counts) != num_classes:
        raise ValueError(f"labels go up to {len(counts) - 1}, but num_classes is {num_classes}.")
    empty = [i for i, c in enumerate(counts.tolist()) if c == 0]
    if empty:
        raise ValueError(f"class(es) {empty} have no training item; cannot weight the loss. num_classes is "
                         f"{num_classes}: if the dataset has fewer classes, set --class_names (num_classes follows it), "
                         "or --class_weighted_loss False to train without class weights.")
    return counts.sum() / (num_classes * counts)
