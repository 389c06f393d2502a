"""The confusion matrix of a classification run: counts by true and predicted class, as JSON, text and a PNG.

Rows are the true classes and columns the predicted ones, both in label order, as in ignite's
``ConfusionMatrix`` (which is not used here: its ``compute`` all-reduces over the ranks, and the
report has already gathered every rank's predictions).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from tpp_components.io import atomic_path

__all__ = ["confusion_matrix", "confusion_matrix_record", "format_confusion_matrix", "plot_confusion_matrix"]


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(num_classes, num_classes)`` int64 counts; entry ``[t, p]`` counts the images of true class ``t`` predicted as ``p``.

    Args:
        pred: predicted class indices ``(N,)``.
        labels: true class indices ``(N,)``.
        num_classes: the number of classes.

    Raises:
        ValueError: ``pred`` and ``labels`` differ in length, or an index is outside ``0..num_classes - 1``.
    """
    pred, labels = pred.long().flatten(), labels.long().flatten()
    if pred.shape != labels.shape:
        raise ValueError(f"{len(pred)} predictions but {len(labels)} labels.")
    for name, values in (("predicted", pred), ("true", labels)):
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ValueError(f"{name} class indices must be in 0..{num_classes - 1}, got {sorted(set(values.tolist()))}.")
    return torch.bincount(labels * num_classes + pred, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_matrix_record(matrix: torch.Tensor, class_names: Sequence[str]) -> dict:
    """The JSON form: which axis is which, the class names, and the counts as nested lists (``counts[true][predicted]``)."""
    return {"rows": "true class", "columns": "predicted class", "class_names": list(class_names), "counts": matrix.tolist()}


def format_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str]) -> str:
    """A plain-text table: one row per true class, one column per predicted class."""
    corner = "true \\ predicted"
    width = max(9, *(len(n) + 2 for n in class_names))
    first = max(len(corner), *(len(n) for n in class_names)) + 2
    lines = [f"{corner:<{first}}" + "".join(f"{n:>{width}}" for n in class_names)]
    for name, row in zip(class_names, matrix.tolist()):
        lines.append(f"{name:<{first}}" + "".join(f"{c:>{width}d}" for c in row))
    return "\n".join(lines)


def plot_confusion_matrix(matrix: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Write the matrix as a PNG (counts and the share of each true class in every cell), atomically.

    Drawn with matplotlib's object-oriented API on the Agg canvas: no pyplot state, no display needed.

    Args:
        matrix: ``(C, C)`` counts, rows true, columns predicted.
        class_names: names by label index.
        path: the PNG to write; its folder is created if needed.
        title: the figure's title (the number of images is appended).

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = matrix.double()
    shares = counts / counts.sum(1, keepdim=True).clamp(min=1)
    size = 1.6 + 0.9 * len(class_names)
    figure = Figure(figsize=(size + 1.2, size), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(shares.numpy(), cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, label="share of the true class")
    ticks = list(range(len(class_names)))
    axis.set_xticks(ticks, labels=list(class_names), rotation=30, ha="right")
    axis.set_yticks(ticks, labels=list(class_names))
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    axis.set_title(f"{title} (n={int(counts.sum())})".strip())
    for t in ticks:
        for p in ticks:
            axis.text(p, t, f"{int(counts[t, p])}\n{shares[t, p]:.0%}", ha="center", va="center", fontsize=9,
                      color="white" if shares[t, p] > 0.5 else "black")
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path
