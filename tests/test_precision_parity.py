"""The precision parity report: paired bf16 - fp32 differences per seed, and the metric files it reads."""

from __future__ import annotations

import json

import pytest

from tools.precision_parity import read_test_metrics, report


def _result(seed: int, precision: str, auc: float, seconds: float) -> dict:
    return {"seed": seed, "precision": precision, "train_seconds": seconds, "macro_auc": auc, "balanced_accuracy": 0.5}


def test_report_pairs_by_seed():
    results = [_result(0, "fp32", 0.80, 100), _result(0, "bf16", 0.81, 50), _result(1, "fp32", 0.70, 100),
               _result(1, "bf16", 0.73, 40), _result(2, "fp32", 0.90, 100), _result(2, "bf16", 0.92, 50)]
    text = report(results, "t")
    # differences 0.01, 0.03, 0.02: mean 0.02, sd 0.01, t(0.975, 2) = 4.303 -> half-width 0.0248
    assert "| macro_auc | 0.8000 | 0.8200 | +0.0200 [-0.0048, +0.0448] | 3 |" in text
    assert "| balanced_accuracy | 0.5000 | 0.5000 | +0.0000 [+0.0000, +0.0000] | 3 |" in text
    assert "2.00x, 2.50x, 2.00x" in text
    # an unpaired seed is left out of the differences
    assert "| 3 |" in report(results + [_result(3, "fp32", 0.1, 1)], "t")


def test_metrics_from_classification_report_or_metrics_csv(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "classification_report.json").write_text(json.dumps({"accuracy": 0.7, "macro_auc": 0.8, "balanced_accuracy": 0.6}))
    assert read_test_metrics(tmp_path / "a") == {"macro_auc": 0.8, "balanced_accuracy": 0.6}
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "metrics.csv").write_text("val_mean_dice,0.4321\n")
    assert read_test_metrics(tmp_path / "b") == {"mean_dice": pytest.approx(0.4321)}
