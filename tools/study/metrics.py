"""The test metrics an evaluation stage wrote, classification or segmentation, by one set of names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

__all__ = ["PRIMARY_METRIC", "VALIDATION_TAG", "read_test_metrics"]

#: the metric a study's headline rests on, and the TensorBoard tag of its validation curve, by task
PRIMARY_METRIC = {"classification": "macro_auc", "segmentation": "mean_dice"}
VALIDATION_TAG = {"classification": "val_auc", "segmentation": "val_mean_dice"}


def read_test_metrics(eval_dir: str | Path) -> tuple[str, dict[str, float]]:
    """``(task, metrics)`` of the evaluation written to ``eval_dir``.

    Classification: ``classification_report.json`` (accuracy, balanced accuracy, macro AUC). Segmentation:
    MONAI's ``MetricsSaver`` summary ``metrics.csv`` ("name,value" lines; mean Dice at the images' own resolution,
    at the network's input size where the bundle scores both, and HD95 where it computes it).
    """
    eval_dir = Path(eval_dir)
    report = eval_dir / "classification_report.json"
    if report.is_file():
        data = json.loads(report.read_text())
        return "classification", {m: float(data[m]) for m in ("accuracy", "balanced_accuracy", "macro_auc")}
    summary = eval_dir / "metrics.csv"
    if not summary.is_file():
        raise FileNotFoundError(f"'{eval_dir}' holds neither classification_report.json nor metrics.csv: no evaluation.")
    with open(summary) as f:
        rows = dict(csv.reader(f))
    # the 2D bundles score the test split at each image's own resolution (test_*) and at the network's size; the 3D
    # bundles' evaluation keeps MONAI's validation names
    names = {"test_mean_dice": "mean_dice", "val_mean_dice": "mean_dice", "test_mean_dice_network_size": "mean_dice_network_size",
             "test_hd95": "hd95", "val_hd95": "hd95"}
    metrics: dict[str, float] = {}
    for theirs, ours in names.items():
        if theirs in rows and ours not in metrics:
            metrics[ours] = float(rows[theirs])
    return "segmentation", metrics
