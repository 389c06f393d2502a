"""The main job (``tools/demo.py``, what ``./run_demo.sh`` runs) end to end at a tiny budget: its plan is a valid
study plan under the own ViT's switch, every stage runs, and it prints the three arms it promises."""

from __future__ import annotations

import json

import yaml

from tools.demo import main as demo
from tools.study.plan import load_plan


def test_the_demo_runs_its_plan_to_the_end(tmp_path, capsys):
    demo(workdir=str(tmp_path / "demo"), num_per_class=12, pretrain_epochs=1, tpp_epochs=1, train_epochs=1, threads=1)
    plan_file = tmp_path / "demo" / "plan.yaml"
    plan = load_plan(plan_file)
    assert plan.switches == ["vit.json"] and plan.stage0 == {"num_epochs": 1}
    assert yaml.safe_load(plan_file.read_text())["regimes"][0]["overrides"] == {"num_epochs": 1}
    result = json.loads((tmp_path / "demo" / "study" / "results.json").read_text())
    assert result["status"] == "complete"
    assert sorted(r["path"] for r in result["runs"]) == [
        "all_labels/seed0/linear_probe", "all_labels/seed0/lora/standard", "all_labels/seed0/lora/tpp", "stage0",
        "tpp/lora/pixels/seed0"]
    out = capsys.readouterr().out
    for arm in ("linear_probe", "lora/tpp", "lora/standard"):
        assert f"  {arm:<14} accuracy " in out
    assert "Backbone gate" in out or "backbone gate" in out  # the report's verdict, either way
