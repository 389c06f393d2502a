"""The experiment report: reference arms first, the backbone gate, paired differences with intervals."""

from __future__ import annotations

import math

import pytest

from tools.study.experiment_report import GATE_MIN_AUC, backbone_gate, summarise
from tools.study.stats import t_interval


def _run(arm: str, seed: int, auc: float, bal: float) -> dict:
    method, init = arm.split("/")
    test = {"accuracy": bal, "balanced_accuracy": bal, "macro_auc": auc, "majority_rate": 0.558, "num_samples": 156}
    return {"arm": arm, "method": method, "init": init, "seed": seed, "test": test, "seconds": {"train": 1.0}}


def test_t_interval_known_values():
    mean, lo, hi = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    # sd = 1.5811, t(0.975, 4) = 2.7764: half-width 1.963
    assert mean == pytest.approx(3.0) and hi - mean == pytest.approx(2.7764 * 1.5811388 / math.sqrt(5), rel=1e-4)
    assert lo == pytest.approx(2 * mean - hi)
    assert math.isnan(t_interval([1.0])[1])


def test_backbone_gate_thresholds():
    assert backbone_gate(0.80, 0.60, 3) == []
    assert len(backbone_gate(GATE_MIN_AUC - 0.01, 0.60, 3)) == 1
    reasons = backbone_gate(0.60, 0.36, 3)
    assert len(reasons) == 2 and "within 5 points of chance" in reasons[1]


@pytest.mark.parametrize("probe_auc,probe_bal,passes", [(0.80, 0.60, True), (0.55, 0.34, False)])
def test_summary_puts_reference_arms_first_and_labels_a_failed_gate(probe_auc, probe_bal, passes):
    runs = []
    for seed in range(3):
        runs += [_run("lora/tpp", seed, 0.70 + 0.01 * seed, 0.50), _run("lora/standard", seed, 0.68, 0.48 - 0.01 * seed),
                 _run("linear_probe/standard", seed, probe_auc, probe_bal), _run("full_finetune/standard", seed, 0.75, 0.55)]
    summary, table = summarise(runs, num_classes=3)
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "/" in line.split("|")[1]]
    assert rows[:2] == ["full_finetune/standard", "linear_probe/standard"]
    assert summary["backbone_gate"]["passed"] is passes
    assert ("NOT evidence" in table) is (not passes)
    paired = summary["paired"]["lora/tpp - lora/standard"]
    assert paired["macro_auc"]["per_seed"] == pytest.approx([2.0, 3.0, 4.0])
    assert paired["balanced_accuracy"]["mean"] == pytest.approx(3.0)
    lo, hi = paired["macro_auc"]["ci95"]
    assert lo < 3.0 < hi


def test_validation_curves_and_epochs_to_the_standard_best():
    runs = []
    for seed, (std, tpp) in enumerate([([0.6, 0.7, 0.8], [0.75, 0.8, 0.82]), ([0.6, 0.9, 0.85], [0.7, 0.8, 0.85])]):
        runs += [{**_run("lora/standard", seed, 0.8, 0.5), "val_curve": list(enumerate(std, start=1))},
                 {**_run("lora/tpp", seed, 0.8, 0.5), "val_curve": list(enumerate(tpp, start=1))}]
    summary, table = summarise(runs, num_classes=3)
    # seed 0: standard best 0.8 at epoch 3, TPP reaches it at epoch 2; seed 1: 0.9 at 2, TPP never
    assert summary["validation"]["lora/tpp"]["epochs_to_standard_best"] == [(0, 3, 2), (1, 2, None)]
    assert summary["validation"]["lora/standard"]["mean_curve"][1] == (2, pytest.approx(0.8))
    assert "0: 3 -> 2, 1: 2 -> never" in table


def test_resume_reuses_finished_runs_and_reruns_the_rest(tmp_path, monkeypatch):
    """``resume=True`` skips TPP and fine-tuning runs whose logs say they finished; an unfinished one reruns."""
    import json
    from pathlib import Path

    from tools import tpp_experiment

    calls: list[str] = []

    def fake_bundle_run(bundle, configs, overrides, log: Path, threads):  # the stage's log and outputs, no training
        log.parent.mkdir(parents=True, exist_ok=True)
        engine = "PretextTrainer" if "tpp.json" in configs else "SupervisedTrainer"
        log.write_text(f"2026-01-01 00:00:00,000 - start\n2026-01-01 00:00:07,000 - x - {engine} - INFO - Engine run finished.\n")
        if "evaluate.json" in configs:
            report = {"accuracy": 0.5, "balanced_accuracy": 0.5, "macro_auc": 0.6, "majority_rate": 0.5, "num_samples": 4}
            (Path(overrides["output_dir"]) / "classification_report.json").parent.mkdir(parents=True, exist_ok=True)
            (Path(overrides["output_dir"]) / "classification_report.json").write_text(json.dumps(report))
        calls.append(" ".join(configs))
        return 7.0

    monkeypatch.setattr(tpp_experiment, "bundle_run", fake_bundle_run)
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"labels": {"0": "a", "1": "b"}, "training": [], "validation": [], "test": []}))
    kwargs = dict(datalist=str(datalist), workdir=str(tmp_path / "exp"), methods=["lora"], seeds=[0], reference_arms=[],
                  switch="litemedsam.json", tpp_epochs=1, train_epochs=1)
    tpp_experiment.run(**kwargs)
    assert len(calls) == 5  # TPP, then train + evaluate for standard and tpp
    calls.clear()
    # the TPP-initialised run was interrupted: its trainer never finished
    tpp_run = tmp_path / "exp" / "lora_seed0" / "tpp" / "train.log"
    tpp_run.write_text(tpp_run.read_text().replace("Engine run finished", "Epoch[1] Complete"))
    result = tpp_experiment.run(**kwargs, resume=True)
    assert calls == ["train.json litemedsam.json", "train.json litemedsam.json evaluate.json"]
    assert {r["arm"] for r in result["runs"]} == {"lora/standard", "lora/tpp"}
    assert result["runs"][0]["seconds"]["train"] == 7.0  # reused: read from its log's timestamps


def test_pretext_curve_keeps_the_newest_value_of_each_epoch(tmp_path):
    import time

    from torch.utils.tensorboard import SummaryWriter

    from tools.tpp_experiment import pretext_curve

    for values in ([0.9, 0.8, 0.7], [0.6, 0.5]):  # a run, then a rerun into the same folder
        writer = SummaryWriter(str(tmp_path / "logs"))
        for step, value in enumerate(values, start=1):
            writer.add_scalar("val_pretext_loss", value, step)
        writer.close()
        time.sleep(1.1)  # event file names carry the time in seconds
    curve = pretext_curve(tmp_path / "logs")
    assert [s for s, _ in curve] == [1, 2, 3] and [round(v, 3) for _, v in curve] == [0.6, 0.5, 0.7]
    assert pretext_curve(tmp_path / "absent") == []


def test_stage0_runs_under_the_switch_of_a_network_with_stage_0(tmp_path, monkeypatch):
    """``stage0=True`` with ``switch="vit.json"`` (the demo's run): every stage, stage 0 included, merges the switch."""
    import json
    from pathlib import Path

    from tools import tpp_experiment

    calls: list[str] = []

    def fake_bundle_run(bundle, configs, overrides, log: Path, threads):
        calls.append(" ".join(configs))
        raise RuntimeError("stop after the first stage")

    monkeypatch.setattr(tpp_experiment, "bundle_run", fake_bundle_run)
    datalist = tmp_path / "d.json"
    datalist.write_text(json.dumps({"labels": {"0": "a", "1": "b"}, "training": [], "validation": [], "test": []}))
    with pytest.raises(RuntimeError, match="stop after the first stage"):
        tpp_experiment.run(datalist=str(datalist), workdir=str(tmp_path / "exp"), methods=["lora"], seeds=[0],
                           reference_arms=[], switch="vit.json", stage0=True)
    assert calls == ["train.json vit.json pretrain.json"]
