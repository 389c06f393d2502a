"""Ignite handler: accuracy, balanced accuracy, macro AUC, a per-class table and the confusion matrix of an evaluation run."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.metrics import compute_roc_auc
from monai.utils import evenly_divisible_all_gather

from tpp_components.handlers.confusion_matrix import (
    confusion_matrix,
    confusion_matrix_record,
    format_confusion_matrix,
    plot_confusion_matrix,
)
from tpp_components.io import atomic_write_text

__all__ = ["ClassificationReport", "classification_metrics"]


def classification_metrics(probs: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict:
    """Metrics of class probabilities ``(N, C)`` against integer labels ``(N,)``.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``macro_auc``, ``majority_rate``, ``num_samples``, ``per_class``
        (precision, recall, F1, one-vs-rest AUC, support for each class) and ``confusion_matrix``
        (:func:`~tpp_components.handlers.confusion_matrix.confusion_matrix_record`: counts, rows true,
        columns predicted, with the class names).
    """
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(f"expected probabilities of shape (N, {num_classes}), got {tuple(probs.shape)}.")
    pred = probs.argmax(1)
    onehot = torch.nn.functional.one_hot(labels.long(), num_classes).float()
    per_class, recalls, aucs = {}, [], []
    for c, name in enumerate(class_names):
        tp = int(((pred == c) & (labels == c)).sum())
        support, predicted = int((labels == c).sum()), int((pred == c).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else float("nan")
        f1 = 2 * precision * recall / (precision + recall) if support and (precision + recall) else 0.0
        auc = float(compute_roc_auc(probs[:, c], onehot[:, c])) if 0 < support < len(labels) else float("nan")
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "auc": auc, "support": support}
        if support:
            recalls.append(recall)
        if auc == auc:
            aucs.append(auc)
    counts = torch.bincount(labels.long(), minlength=num_classes)
    return {
        "accuracy": float((pred == labels).float().mean()),
        "balanced_accuracy": sum(recalls) / len(recalls),
        "macro_auc": sum(aucs) / len(aucs) if aucs else float("nan"),
        "majority_rate": float(counts.max()) / float(counts.sum()),
        "num_samples": int(len(labels)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix_record(confusion_matrix(pred, labels, num_classes), class_names),
    }


def format_table(report: dict) -> str:
    """A plain-text per-class table."""
    lines = [f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'auc':>10}{'support':>9}"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<12}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}{row['auc']:>10.3f}{row['support']:>9d}")
    lines.append(
        f"accuracy {report['accuracy']:.4f}  balanced accuracy {report['balanced_accuracy']:.4f}  "
        f"macro AUC {report['macro_auc']:.4f}  (majority rate {report['majority_rate']:.4f}, n={report['num_samples']})"
    )
    return "\n".join(lines)


class ClassificationReport:
    """Collect predictions over an evaluation run and report the classification metrics.

    Attach before ``StatsHandler``: the scalars are put into ``engine.state.metrics``
    (``accuracy``, ``balanced_accuracy``, ``macro_auc``, each after ``metric_prefix``) so later
    handlers can log them.

    Args:
        class_names: names by label index.
        output_dir: if given, ``classification_report.json`` and ``confusion_matrix.png`` (counts, rows
            true class, columns predicted) are written there, atomically.
        output_transform: maps ``engine.state.output`` to ``(probs, labels)`` lists or tensors;
            ``pred`` holds class probabilities (or logits, softmax is applied when rows do not sum
            to one) and ``label`` an index or a one-hot vector.
        metric_prefix: put before the names in ``engine.state.metrics`` (and so in the logs and in
            tracking): ``"test_"`` makes an evaluation log ``test_macro_auc``. The JSON report's keys
            never change.

    In a multi-process run (``DistributedSampler``) every rank must attach it: the predictions of all
    ranks are gathered (MONAI's ``evenly_divisible_all_gather``, as its metrics do) and only rank 0
    logs and writes the report.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | os.PathLike | None = None,
        output_transform: Callable = from_engine(["pred", "label"]),
        metric_prefix: str = "",
    ) -> None:
        self.class_names = list(class_names)
        self.output_dir = output_dir
        self.output_transform = output_transform
        self.metric_prefix = metric_prefix
        self.logger = logging.getLogger(__name__)
        self.report: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._complete)

    def _reset(self, engine: Engine) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def _collect(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        for p, y in zip(preds, labels):
            p, y = torch.as_tensor(p).detach().float().cpu().flatten(), torch.as_tensor(y).detach().cpu().flatten()
            self._probs.append(p)
            self._labels.append(y.argmax() if y.numel() > 1 else y.long().squeeze())

    def _complete(self, engine: Engine) -> None:
        probs = evenly_divisible_all_gather(torch.stack(self._probs), concat=True)
        labels = evenly_divisible_all_gather(torch.stack(self._labels), concat=True)
        if not torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-3):
            probs = probs.softmax(1)
        self.report = classification_metrics(probs, labels, self.class_names)
        for key in ("accuracy", "balanced_accuracy", "macro_auc"):
            engine.state.metrics[self.metric_prefix + key] = self.report[key]
        if idist.get_rank() > 0:
            return
        matrix = torch.tensor(self.report["confusion_matrix"]["counts"])
        title = f"{self.metric_prefix.strip('_')} classification report" if self.metric_prefix else \
            f"classification report (epoch {engine.state.epoch})"
        self.logger.info("%s:\n%s\nconfusion matrix (rows true, columns predicted):\n%s",
                         title, format_table(self.report), format_confusion_matrix(matrix, self.class_names))
        if self.output_dir is not None:
            path = Path(self.output_dir) / "classification_report.json"
            atomic_write_text(path, json.dumps(self.report, indent=4))
            plot_confusion_matrix(matrix, self.class_names, Path(self.output_dir) / "confusion_matrix.png",
                                  f"{self.metric_prefix.strip('_')} confusion matrix".strip())
