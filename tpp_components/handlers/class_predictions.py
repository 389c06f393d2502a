"""Ignite handler: a CSV with one row per image, its predicted class by name and every class's probability.

MONAI's ``ClassificationSaver`` writes the probabilities only (no header, no class names) and
overwrites the file of an earlier run. This saver writes::

    image,predicted_class,p_normal,p_benign,p_malignant[,true_class]

once, atomically, when the run completes; a file already there is kept under a stamped name first.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine
from monai.utils import ImageMetaKey, evenly_divisible_all_gather, string_list_all_gather

from tpp_components.io import atomic_write_text, keep_previous_version

__all__ = ["PROBABILITY_PREFIX", "ClassPredictionsSaver", "image_paths"]

#: a class's probability column is named ``p_<class name>``
PROBABILITY_PREFIX = "p_"


def image_paths(batch: Sequence[dict[str, Any]], key: str = "image") -> list[str]:
    """The file each image of a decollated batch was loaded from (``meta["filename_or_obj"]`` of ``batch[i][key]``).

    Raises:
        ValueError: an image carries no file name (not loaded by ``LoadImaged``, or its metadata was dropped).
    """
    paths = []
    for item in batch:
        meta = getattr(item.get(key), "meta", None) or item.get(f"{key}_meta_dict") or {}
        if ImageMetaKey.FILENAME_OR_OBJ not in meta:
            raise ValueError(f"batch item '{key}' has no '{ImageMetaKey.FILENAME_OR_OBJ}' in its metadata: "
                             "load it with LoadImaged (image_only=True keeps the metadata on the MetaTensor).")
        paths.append(str(meta[ImageMetaKey.FILENAME_OR_OBJ]))
    return paths


class ClassPredictionsSaver:
    """Write ``<output_dir>/<filename>``: per image its path, predicted class name and class probabilities.

    Columns: ``image``, ``predicted_class`` (the class of the highest probability, ties to the lower
    index, as ``torch.argmax``), ``p_<class name>`` for every class in label order, and ``true_class``
    when ``label_transform`` is given (evaluation). Rows follow the data loader's order.

    The rows are collected at every ``ITERATION_COMPLETED`` and written once at ``COMPLETED``
    (atomically: an interrupted run leaves the previous file intact). If the file exists, it is first
    copied to ``<stem>.<its mtime><suffix>`` (:func:`~tpp_components.io.keep_previous_version`) and a
    warning names both paths. In a multi-process run every rank must attach it: rows are gathered
    from all ranks (as MONAI's ``ClassificationSaver`` does) and only rank 0 writes.

    Args:
        class_names: names by label index; one probability column each.
        output_dir: the folder of the CSV (created if needed).
        filename: the CSV's name.
        output_transform: maps ``engine.state.output`` to the per-image class probabilities ``(C,)``
            (the postprocessing must apply the softmax: logits are refused).
        label_transform: maps ``engine.state.output`` to the per-image labels (an index or a one-hot
            vector); None (inference): no ``true_class`` column.
        batch_transform: maps ``engine.state.batch`` to the per-image file paths.
        atol: how far a row's probabilities may sum from 1.

    Example::

        {"_target_": "tpp_components.handlers.ClassPredictionsSaver", "class_names": "@class_names",
         "output_dir": "@output_dir", "filename": "test_predictions.csv",
         "label_transform": "$monai.handlers.from_engine(['label'])"}
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_dir: str | os.PathLike,
        filename: str = "predictions.csv",
        output_transform: Callable = from_engine(["pred"]),
        label_transform: Callable | None = None,
        batch_transform: Callable = image_paths,
        atol: float = 1e-3,
    ) -> None:
        self.class_names = [str(n) for n in class_names]
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names must be distinct names, one per class, got {list(class_names)}.")
        if not filename or Path(filename).name != filename:
            raise ValueError(f"filename must be a file name without folder, got {filename!r} (use output_dir for the folder).")
        self.path = Path(output_dir) / filename
        self.output_transform = output_transform
        self.label_transform = label_transform
        self.batch_transform = batch_transform
        self.atol = atol
        self.logger = logging.getLogger(__name__)

    @property
    def columns(self) -> list[str]:
        """The CSV header."""
        labels = ["true_class"] if self.label_transform is not None else []
        return ["image", "predicted_class", *(PROBABILITY_PREFIX + n for n in self.class_names), *labels]

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._images: list[str] = []
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def _collect(self, engine: Engine) -> None:
        images = self.batch_transform(engine.state.batch)
        probs = [torch.as_tensor(p).detach().float().cpu().flatten() for p in self.output_transform(engine.state.output)]
        if len(images) != len(probs):
            raise ValueError(f"{len(images)} image paths but {len(probs)} predictions in one batch.")
        for image, p in zip(images, probs):
            self._check_probabilities(image, p)
        self._images += images
        self._probs += probs
        if self.label_transform is not None:
            for image, y in zip(images, self.label_transform(engine.state.output), strict=True):
                y = torch.as_tensor(y).detach().cpu().flatten()
                label = y.argmax() if y.numel() > 1 else y.long().squeeze()
                if not 0 <= int(label) < len(self.class_names):
                    raise ValueError(f"the label of '{image}' is {int(label)}, outside 0..{len(self.class_names) - 1} "
                                     f"(class_names {self.class_names}).")
                self._labels.append(label)

    def _check_probabilities(self, image: str, p: torch.Tensor) -> None:
        if p.numel() != len(self.class_names):
            raise ValueError(f"the prediction for '{image}' has {p.numel()} values but class_names names "
                             f"{len(self.class_names)} classes ({self.class_names}).")
        total = float(p.sum())
        if float(p.min()) < 0 or float(p.max()) > 1 or abs(total - 1) > self.atol:
            raise ValueError(f"the prediction for '{image}' is not a probability vector (sum {total:.4f}, values "
                             f"{[round(v, 4) for v in p.tolist()]}): add a softmax to the postprocessing "
                             "(Activationsd, softmax=True).")

    def _write(self, engine: Engine) -> None:
        num_classes = len(self.class_names)
        probs = torch.stack(self._probs) if self._probs else torch.zeros(0, num_classes)
        labels = torch.stack(self._labels) if self._labels else torch.zeros(0, dtype=torch.long)
        images = self._images
        if idist.get_world_size() > 1:
            probs = evenly_divisible_all_gather(probs, concat=True)
            labels = evenly_divisible_all_gather(labels, concat=True) if self.label_transform is not None else labels
            images = string_list_all_gather(images)
        if idist.get_rank() > 0:
            return
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.columns)
        for i, (image, p) in enumerate(zip(images, probs)):
            row = [image, self.class_names[int(p.argmax())], *(f"{v:.6g}" for v in p.tolist())]
            writer.writerow(row + ([self.class_names[int(labels[i])]] if self.label_transform is not None else []))
        kept = keep_previous_version(self.path)
        if kept is not None:
            self.logger.warning("'%s' exists from an earlier run: kept it as '%s'; writing this run's predictions to '%s'.",
                                self.path, kept, self.path)
        atomic_write_text(self.path, text.getvalue())
        self.logger.info("predictions of %d image(s) written to '%s'.", len(images), self.path)
