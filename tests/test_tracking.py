"""Experiment tracking: ``monai.bundle run --tracking mlflow`` logs every stage offline into one sqlite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.utils import path_to_sqlite_uri

from bundle_utils import run, stage_overrides
from bundle_utils import VIT_EVALUATE as EVALUATE
from bundle_utils import VIT_TPP as TPP
from bundle_utils import VIT_TRAIN as TRAIN

mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in requirements.txt; install it to test tracking")


def _expression(path: Path) -> str:
    """``output_dir`` as a config expression: MONAI 1.6.1's tracking patch builds the executed-config path by
    appending ``" + '/config_<time>.json'"`` to the raw ``output_dir`` item, which only works when that item is
    an expression (as the bundles' defaults are); a plain path there loses the config artifact."""
    return f"${str(path)!r}"


def test_mlflow_tracks_tpp_train_and_evaluate(small_demo_datalist, tmp_path):
    """The one CLI switch ``--tracking mlflow`` (ConfigWorkflow's ``tracking``) gives, in ``<bundle>/mlruns.db``,
    one experiment named after the bundle with a run per stage, its metrics, and the executed config as artifact."""
    db = tmp_path / "mlruns.db"
    common = {
        **stage_overrides(tmp_path, small_demo_datalist),
        "backbone_weights": None,
        "allow_random_backbone": True,
        "tracking": "mlflow",
        # the bundle's default is <bundle_root>/mlruns.db; the test writes into its tmp folder instead
        "tracking_uri": path_to_sqlite_uri(db),
    }
    run(TPP, output_dir=_expression(tmp_path / "logs" / "tpp"), reuse_decoder=False, **common)
    run(TRAIN, output_dir=_expression(tmp_path / "logs" / "train"), init="tpp", **common)
    run(EVALUATE, output_dir=_expression(tmp_path / "eval"), **common)
    assert db.is_file()

    client = mlflow.MlflowClient(tracking_uri=path_to_sqlite_uri(db))
    experiment = client.get_experiment_by_name("breast_us_classification")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"tpp", "train", "eval"} <= set(runs), sorted(runs)
    assert all(r.info.status == "FINISHED" for name, r in runs.items() if name != "eval")

    train_metrics = runs["train"].data.metrics
    assert "train_loss" in train_metrics and train_metrics["train_loss"] > 0
    assert 0.0 <= train_metrics["val_auc"] <= 1.0, sorted(train_metrics)
    assert "train_loss" in runs["tpp"].data.metrics
    eval_metrics = runs["eval"].data.metrics
    # evaluation's metrics are test metrics, by name
    assert 0.0 <= eval_metrics["test_macro_auc"] <= 1.0, sorted(eval_metrics)
    assert not any(k.startswith("val_") for k in eval_metrics), sorted(eval_metrics)

    # the executed, merged config is logged as an artifact of the training run, next to the store
    artifacts = [a.path for a in client.list_artifacts(runs["train"].info.run_id)]
    assert any(p.endswith(".json") for p in artifacts), artifacts
    local = Path(mlflow.artifacts.download_artifacts(run_id=runs["train"].info.run_id,
                                                     artifact_path=[p for p in artifacts if p.endswith(".json")][0],
                                                     tracking_uri=path_to_sqlite_uri(db), dst_path=str(tmp_path / "a")))
    executed = json.loads(local.read_text())
    assert executed["num_epochs"] == 1 and executed["experiment_name"] == "breast_us_classification"
    assert (tmp_path / "mlruns").is_dir(), "artifacts are kept next to the sqlite store"
