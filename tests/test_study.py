"""The study tool (``tools/run_study.py``): plans, paired statistics, resuming, the report, and how fine-tuning
starts from TPP; one real study on a segmentation bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cases import make_backbone
from conftest import needs_weights
from tools.study import runner
from tools.study.plan import STAGE_OUTPUTS, PlanError, label_subset, load_plan
from tools.study.report import summarise
from tools.study.stats import epochs_to_reach, paired_difference, t_interval
from tpp_components.networks import build_network
from tpp_components.peft import save_target_parameters, start_from_tpp, target_parameters
from tpp_components.pretext import head_modules


# ---------------------------------------------------------------------------------------------- statistics

@pytest.mark.parametrize("n,quantile", [(5, 2.7764), (17, 2.1199), (18, 2.1098), (40, 2.0227)])
def test_t_interval_uses_the_exact_quantile(n, quantile):
    """Exact Student-t quantiles at any n (the old table had none for 16-18 or beyond 29 degrees of freedom)."""
    values = [float(i % 3) for i in range(n)]
    mean, low, high = t_interval(values)
    sd = torch.tensor(values, dtype=torch.float64).std().item()
    assert high - mean == pytest.approx(quantile * sd / math.sqrt(n), rel=1e-4) and low == pytest.approx(2 * mean - high)
    assert math.isnan(t_interval([1.0])[1])


def test_paired_difference_counts_wins_over_shared_seeds():
    d = paired_difference({0: 0.80, 1: 0.70, 2: 0.75, 3: 0.9}, {0: 0.78, 1: 0.72, 2: 0.70}, scale=100)
    assert d["n"] == 3 and d["wins"] == 2 and d["per_seed"] == pytest.approx({0: 2.0, 1: -2.0, 2: 5.0})
    assert d["ci95"][0] < d["mean"] < d["ci95"][1]
    assert epochs_to_reach([(1, 0.5), (2, 0.8), (3, 0.7)], 0.75) == 2 and epochs_to_reach([(1, 0.5)], 0.9) is None



def test_scalar_curve_keeps_the_newest_value_of_each_epoch(tmp_path):
    """A rerun into the same log folder: its values replace the first run's, epoch by epoch."""
    import time

    from torch.utils.tensorboard import SummaryWriter

    from tools.study.curves import scalar_curve

    for values in ([0.9, 0.8, 0.7], [0.6, 0.5]):  # a run, then a rerun into the same folder
        writer = SummaryWriter(str(tmp_path / "logs"))
        for step, value in enumerate(values, start=1):
            writer.add_scalar("val_pretext_loss", value, step)
        writer.close()
        time.sleep(1.1)  # event file names carry the time in seconds
    curve = scalar_curve(tmp_path / "logs", "val_pretext_loss")
    assert [s for s, _ in curve] == [1, 2, 3] and [round(v, 3) for _, v in curve] == [0.6, 0.5, 0.7]
    assert scalar_curve(tmp_path / "absent", "val_pretext_loss") == []

# ---------------------------------------------------------------------------------------------- plans

def _write_plan(tmp: Path, labels: Path, **changes) -> Path:
    plan = {
        "study": "t", "bundle": "bundles/breast_us_classification", "switches": ["litemedsam.json"],
        "datalist": str(labels), "seeds": [0, 1], "overrides": {"image_size": 32},
        "methods": {"lora": {"method": "lora", "r": 4, "alpha": 8, "target_modules": "attention_mlp"}},
        "pretexts": {"pixels": {"tpp_epochs": 1}, "features": {"tpp_epochs": 1, "pretext#target": "features"}},
        "arms": {"standard": {}, "tpp": {"pretext": "pixels"}, "tpp_a_only": {"pretext": "pixels", "overrides": {"tpp_update_scale": 0.0}},
                 "tpp_features": {"pretext": "features"}},
        "reference_arms": {"linear_probe": {"peft": None, "freeze_backbone": True}},
        "regimes": [{"name": "all", "label_fraction": 1.0, "overrides": {"num_epochs": 1}},
                    {"name": "tenth", "label_fraction": 0.1, "overrides": {"num_epochs": 2}}],
    }
    plan.update(changes)
    path = tmp / "plan.yaml"
    import yaml

    path.write_text(yaml.safe_dump(plan))
    return path


@pytest.fixture
def labelled(tmp_path) -> Path:
    items = [{"image": f"/x/{i}.png", "label": i % 3} for i in range(60)]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": items, "validation": items[:6], "test": items[:6]}))
    return path


def test_plan_runs_share_tpp_pair_arms_and_subset_labels(tmp_path, labelled):
    plan = load_plan(_write_plan(tmp_path, labelled))
    runs = plan.runs(tmp_path / "work")
    tpp = [r for r in runs if r.kind == "tpp"]
    # one TPP run per (method, pretext, seed), shared by every regime and arm that names the pretext
    assert sorted(r.path for r in tpp) == ["tpp/lora/features/seed0", "tpp/lora/features/seed1", "tpp/lora/pixels/seed0",
                                           "tpp/lora/pixels/seed1"]
    assert all(r.configs == ["litemedsam.json", "tpp.json"] and r.overrides["datalist"] == str(labelled) for r in tpp)
    tunes = [r for r in runs if r.kind == "finetune"]
    assert len(tunes) == 2 * 2 * (1 + 4)  # seeds x regimes x (reference + arms)
    order = [r.path for r in runs]
    for r in tunes:  # TPP runs before the fine-tuning that starts from it
        if r.needs:
            assert order.index(r.needs) < order.index(r.path)
    a_only = next(r for r in tunes if r.path == "tenth/seed1/lora/tpp_a_only")
    assert a_only.overrides["tpp_update_scale"] == 0.0 and a_only.overrides["init"] == "tpp" and a_only.overrides["num_epochs"] == 2
    assert next(r for r in tunes if r.path == "all/seed0/lora/standard").overrides["init"] == "standard"
    probe = next(r for r in tunes if r.path == "all/seed0/linear_probe")
    assert probe.overrides["peft"] is None and probe.method is None
    # every arm of one seed and regime reads the same label subset: 2 of each class's 20 images
    subsets = {r.overrides["datalist"] for r in tunes if r.regime == "tenth" and r.seed == 1}
    assert len(subsets) == 1
    training = json.loads(Path(subsets.pop()).read_text())["training"]
    assert [sum(i["label"] == c for i in training) for c in range(3)] == [2, 2, 2]
    assert label_subset(training, 0.5, 0) == label_subset(training, 0.5, 0) != label_subset(training, 0.5, 1)


def test_secondary_arms_and_references_run_on_fewer_seeds(tmp_path, labelled):
    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0, 1, 2], regimes=[{"name": "all"}], reference_seeds=[0],
                                 arms={"standard": {}, "tpp": {"pretext": "pixels"},
                                       "tpp_features": {"pretext": "features", "seeds": [0, 1]}}))
    paths = [r.path for r in plan.runs(tmp_path / "work")]
    assert [p for p in paths if "linear_probe" in p] == ["all/seed0/linear_probe"]
    assert [p for p in paths if p.endswith("tpp_features")] == ["all/seed0/lora/tpp_features", "all/seed1/lora/tpp_features"]
    assert "tpp/lora/features/seed2" not in paths and "tpp/lora/pixels/seed2" in paths  # no TPP run that nothing reads
    assert len([p for p in paths if p.endswith("/standard")]) == 3
    # per reference arm, and an arm for some methods only
    plan = load_plan(_write_plan(
        tmp_path, labelled, seeds=[0, 1, 2], regimes=[{"name": "all"}], reference_seeds={"full_finetune": [0]},
        reference_arms={"linear_probe": {"peft": None}, "full_finetune": {"peft": None}},
        methods={"lora": {"method": "lora"}, "adapter": {"method": "adapter"}},
        arms={"standard": {}, "tpp": {"pretext": "pixels"}, "tpp_fresh": {"pretext": "features", "methods": ["lora"]}}))
    paths = [r.path for r in plan.runs(tmp_path / "work")]
    assert [p for p in paths if "full_finetune" in p] == ["all/seed0/full_finetune"]
    assert len([p for p in paths if "linear_probe" in p]) == 3
    assert len([p for p in paths if p.endswith("lora/tpp_fresh")]) == 3 and not any("adapter/tpp_fresh" in p for p in paths)
    assert not any(p.startswith("tpp/adapter/features") for p in paths)


def test_a_study_with_stage0_runs_every_stage_under_its_switches(tmp_path, labelled):
    """The own ViT (``vit.json``): stage 0 merges the switch like every other stage, and every run reads its weights."""
    plan = load_plan(_write_plan(tmp_path, labelled, switches=["vit.json"], stage0={"num_epochs": 1}, seeds=[0],
                                 regimes=[{"name": "all"}]))
    runs = plan.runs(tmp_path / "work")
    assert runs[0].kind == "stage0" and runs[0].configs == ["vit.json", "pretrain.json"]
    assert all(r.configs[0] == "vit.json" for r in runs)
    backbone = str(tmp_path / "work" / "stage0" / "backbone.pt")
    assert all(r.overrides["backbone_weights"] == backbone for r in runs[1:])


@pytest.mark.parametrize("changes,names", [
    ({"epochs": 3}, ["unknown keys ['epochs']"]),
    ({"datalist": "missing.json"}, ["missing.json", "'datalist'"]),
    ({"arms": {"standard": {}, "tpp": {"pretext": "dino"}}}, ["arm 'tpp'", "pretext 'dino'"]),
    ({"regimes": [{"name": "x", "label_fraction": 0}]}, ["regime 'x'", "label_fraction 0"]),
    ({"switches": ["nope.json"]}, ["switch 'nope.json'"]),
    ({"baseline_arm": "tpp_only"}, ["baseline_arm 'tpp_only'"]),
    ({"arms": {"standard": {}, "tpp": {"pretext": "pixels", "seeds": [0, 7]}}}, ["arm 'tpp' 'seeds' [0, 7]", "[0, 1]"]),
    ({"reference_seeds": [5]}, ["'reference_seeds' [5]"]),
    ({"reference_seeds": {"full_finetune": [0]}}, ["'reference_seeds' names ['full_finetune']"]),
    ({"reference_seeds": {"linear_probe": [3]}}, ["'reference_seeds' of 'linear_probe' [3]"]),
    ({"arms": {"standard": {}, "tpp": {"pretext": "pixels", "methods": ["dora"]}}}, ["arm 'tpp' 'methods' ['dora']"]),
])
def test_bad_plans_name_the_file_and_the_key(tmp_path, labelled, changes, names):
    path = _write_plan(tmp_path, labelled, **changes)
    with pytest.raises(PlanError) as err:
        load_plan(path)
    assert str(path) in str(err.value)
    for name in names:
        assert name in str(err.value), err.value



@pytest.mark.parametrize("plan_file", sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_committed_plan_loads_and_makes_runs(plan_file, tmp_path, monkeypatch):
    """The plans in ``studies/`` name bundles, switches, arms and pretexts that exist (a renamed switch or arm is
    caught here, not hours into a chunk); their datalists are stand-ins in ``$TPP_DATALISTS``."""
    import yaml

    monkeypatch.setenv("TPP_DATALISTS", str(tmp_path))
    name = Path(yaml.safe_load(plan_file.read_text())["datalist"]).name
    items = [{"image": f"/x/{i}.png", "label": i % 2} for i in range(20)]
    (tmp_path / name).write_text(json.dumps({"training": items, "validation": items[:4], "test": items[:4]}))
    plan = load_plan(plan_file)
    runs = plan.runs(tmp_path / "work")
    assert runs and len({r.path for r in runs}) == len(runs)  # every run has its own folder
    assert {r.arm for r in runs if r.kind == "finetune"} >= set(plan.arms) | set(plan.reference_arms)

# ---------------------------------------------------------------------------------------------- resuming

def _fake_bundle_run(calls: list, fail_at: int | None = None):
    """A stand-in for ``monai.bundle run``: writes what an evaluation writes, scores by arm; can fail once."""

    def fake(bundle, configs, overrides, log: Path, threads, cpu=None, key=""):
        if fail_at is not None and len(calls) == fail_at:
            raise RuntimeError("killed")
        calls.append((" ".join(configs), overrides["output_dir"]))
        written = {"tpp.json": STAGE_OUTPUTS["tpp"].values(), "pretrain.json": STAGE_OUTPUTS["stage0"].values()}
        for name in (n for c in configs for n in written.get(c, [])):  # the files later runs read
            Path(overrides["ckpt_dir"], name).parent.mkdir(parents=True, exist_ok=True)
            Path(overrides["ckpt_dir"], name).write_bytes(b"")
        if "evaluate.json" in configs:
            out = Path(overrides["output_dir"])
            out.mkdir(parents=True, exist_ok=True)
            score = 0.7 + 0.01 * overrides["seed"] + (0.02 if overrides.get("init") == "tpp" else 0.0)
            (out / "classification_report.json").write_text(json.dumps(
                {"accuracy": score, "balanced_accuracy": score, "macro_auc": score}))
        if cpu is not None:
            cpu[key] = 2.0
        return 1.0

    return fake


def test_an_interrupted_study_resumes_without_redoing_finished_runs(tmp_path, labelled, monkeypatch):
    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0], regimes=[{"name": "all"}], reference_arms={},
                                 arms={"standard": {}, "tpp": {"pretext": "pixels"}}))
    calls: list = []
    monkeypatch.setattr(runner, "bundle_run", _fake_bundle_run(calls, fail_at=3))
    with pytest.raises(RuntimeError, match="killed"):  # killed as the TPP arm's fine-tuning starts
        runner.run_study(plan, tmp_path / "work")
    assert len(calls) == 3
    done = sorted(p.parent.relative_to(tmp_path / "work").as_posix() for p in (tmp_path / "work").rglob("result.json"))
    assert done == ["all/seed0/lora/standard", "tpp/lora/pixels/seed0"]
    calls.clear()
    monkeypatch.setattr(runner, "bundle_run", _fake_bundle_run(calls))
    records, left = runner.run_study(plan, tmp_path / "work")
    assert left == 0 and [c[0] for c in calls] == ["train.json litemedsam.json", "train.json litemedsam.json evaluate.json"]
    assert len(records) == 3 and records[-1]["cpu_seconds"] == {"train": 2.0, "evaluate": 2.0}
    calls.clear()
    assert runner.run_study(plan, tmp_path / "work")[1] == 0 and calls == []  # nothing left to run
    # a budget already spent starts nothing and says how many are left
    other = load_plan(_write_plan(tmp_path, labelled, seeds=[0, 1], regimes=[{"name": "all"}], reference_arms={},
                                  arms={"standard": {}, "tpp": {"pretext": "pixels"}}))
    assert runner.run_study(other, tmp_path / "work", max_hours=0)[1] == 3 and calls == []


def test_a_run_finished_meanwhile_by_another_runner_is_not_redone(tmp_path, labelled, monkeypatch):
    """Two runners on one study folder (a one-cell plan run while a chunk waits, paused): a run whose
    ``result.json`` appeared after this runner listed its work is skipped, not run again."""
    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0], regimes=[{"name": "all"}], reference_arms={},
                                 arms={"standard": {}, "tpp": {"pretext": "pixels"}}))
    calls: list = []
    record = tmp_path / "work" / "all" / "seed0" / "lora" / "tpp" / "result.json"
    fake = _fake_bundle_run(calls)

    def other_runner_finishes_tpp_arm(*args, **kwargs):
        if not record.is_file():  # while this runner's first run goes, the other one finishes the TPP arm
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(json.dumps({"kind": "finetune", "path": "all/seed0/lora/tpp", "seconds": {}}))
        return fake(*args, **kwargs)

    monkeypatch.setattr(runner, "bundle_run", other_runner_finishes_tpp_arm)
    runner.run_study(plan, tmp_path / "work")
    ran = {Path(out).relative_to(tmp_path / "work").parts[:4] for _, out in calls}
    assert ("all", "seed0", "lora", "standard") in ran and ("all", "seed0", "lora", "tpp") not in ran, ran


def test_a_new_clone_resumes_from_the_published_record(tmp_path, labelled, monkeypatch):
    """``--restore``: the published runs count as finished; a TPP run is redone only where a run still to come reads
    its target parameters (records keep numbers, not checkpoints); a plan changed since is refused by key."""
    two_arms = {"standard": {}, "tpp": {"pretext": "pixels"}}
    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0], reference_arms={}, arms=two_arms))
    calls: list = []
    monkeypatch.setattr(runner, "bundle_run", _fake_bundle_run(calls))
    published, _ = runner.run_study(plan, tmp_path / "machine_a")
    assert len(published) == 5  # TPP, then standard and TPP arms at two label fractions

    calls.clear()  # the same plan on a new clone: nothing runs again
    assert runner.restore_records(plan, published, tmp_path / "clone") == 5
    assert runner.run_study(plan, tmp_path / "clone")[1] == 0 and calls == []

    grown = load_plan(_write_plan(tmp_path, labelled, seeds=[0], reference_arms={},
                                  arms={**two_arms, "tpp_a_only": {"pretext": "pixels", "overrides": {"tpp_update_scale": 0.0}}}))
    assert runner.restore_records(grown, published, tmp_path / "clone2") == 5
    records, left = runner.run_study(grown, tmp_path / "clone2")
    ran = [Path(out).relative_to(tmp_path / "clone2").as_posix() for _, out in calls]
    assert left == 0 and len(records) == 7
    assert ran[0] == "tpp/lora/pixels/seed0/logs"  # its target parameters are gone: TPP first, once
    assert sorted({r.rsplit("/", 1)[0] for r in ran[1:]}) == ["all/seed0/lora/tpp_a_only", "tenth/seed0/lora/tpp_a_only"]
    assert runner.restore_records(grown, published, tmp_path / "clone2") == 0  # what is there is kept

    changed = load_plan(_write_plan(tmp_path, labelled, seeds=[0], reference_arms={}, arms=two_arms,
                                    overrides={"image_size": 48}))
    with pytest.raises(PlanError, match=r"restoring 'all/seed0/lora/standard'.*image_size=32.*48"):
        runner.restore_records(changed, published, tmp_path / "clone3")
    assert not list((tmp_path / "clone3").rglob("result.json"))  # refused before anything was written


def test_run_timed_counts_cpu_time_not_sleep_nor_a_pause(tmp_path, monkeypatch):
    """A stage's CPU time counts what it computed: a sleeping child uses next to none, a busy one about its wall time,
    and a child stopped (SIGSTOP, as the study is paused for test runs) for part of its run not the stopped part."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    env = dict(os.environ)
    with open(tmp_path / "log", "w") as out:
        code, wall, cpu = runner.run_timed([sys.executable, "-c", "import time; time.sleep(1.0)"], out, env, tmp_path)
    assert code == 0 and wall >= 1.0 and cpu < 0.5
    busy = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: pass"
    started = []
    real_popen = subprocess.Popen

    def popen(*args, **kwargs):
        started.append(real_popen(*args, **kwargs))
        return started[-1]

    def pause():  # stop the busy child for 1.5 s, as tools' pause script stops the study
        while not started:
            time.sleep(0.01)
        time.sleep(0.2)
        os.kill(started[0].pid, signal.SIGSTOP)
        time.sleep(1.5)
        os.kill(started[0].pid, signal.SIGCONT)

    monkeypatch.setattr(runner.subprocess, "Popen", popen)
    thread = threading.Thread(target=pause)
    thread.start()
    try:
        with open(tmp_path / "log", "w") as out:
            code, wall, cpu = runner.run_timed([sys.executable, "-c", busy], out, env, tmp_path)
    finally:
        thread.join()
    monkeypatch.undo()
    assert code == 0 and 1.0 <= cpu < 1.5 and wall >= cpu + 1.4
    with open(tmp_path / "log", "w") as out:
        assert runner.run_timed([sys.executable, "-c", "raise SystemExit(3)"], out, env, tmp_path)[0] == 3


def test_two_workers_run_at_once_one_thread_each_and_wait_for_the_tpp_run_they_start_from(tmp_path, labelled,
                                                                                         monkeypatch):
    import threading
    import time

    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0, 1], regimes=[{"name": "all"}], reference_arms={},
                                 arms={"standard": {}, "tpp": {"pretext": "pixels"}}))
    calls: list = []
    fake, events, lock, going = _fake_bundle_run(calls), [], threading.Lock(), [0]

    def timed(bundle, configs, overrides, log, threads, cpu=None, key=""):
        with lock:
            going[0] += 1
            events.append(("start", log.parent.relative_to(tmp_path / "work").as_posix(), threads, going[0]))
        time.sleep(0.05)
        try:
            return fake(bundle, configs, overrides, log, threads, cpu, key)
        finally:
            with lock:
                going[0] -= 1
                events.append(("end", log.parent.relative_to(tmp_path / "work").as_posix(), threads, going[0]))

    monkeypatch.setattr(runner, "bundle_run", timed)
    records, left = runner.run_study(plan, tmp_path / "work", workers=2)
    assert left == 0 and len(records) == 6
    assert {e[2] for e in events} == {1}  # the plan's 2 threads shared between the two workers
    assert max(e[3] for e in events if e[0] == "start") == 2  # two runs at once
    for seed in (0, 1):  # a TPP arm starts only after its TPP run ended
        tpp_end = events.index(next(e for e in events if e[:2] == ("end", f"tpp/lora/pixels/seed{seed}")))
        arm_start = events.index(next(e for e in events if e[:2] == ("start", f"all/seed{seed}/lora/tpp")))
        assert tpp_end < arm_start
    # a failure stops new starts, keeps what finished, and raises
    calls.clear()
    monkeypatch.setattr(runner, "bundle_run", _fake_bundle_run(calls, fail_at=0))
    work = tmp_path / "other"
    with pytest.raises(RuntimeError, match="killed"):
        runner.run_study(plan, work, workers=2)
    assert len(list(work.rglob("result.json"))) <= 1


# ---------------------------------------------------------------------------------------------- the report

def _record(arm: str, seed: int, dice: float, curve: list[float], method: str | None = "lora") -> dict:
    return {"kind": "finetune", "task": "segmentation", "arm": arm, "method": method, "seed": seed, "regime": "all",
            "test": {"mean_dice": dice, "hd95": 10.0 - 10 * dice}, "seconds": {"train": 5.0},
            "val_curve": list(enumerate(curve, start=1))}


def test_report_pairs_arms_counts_wins_checks_references_and_convergence(tmp_path, labelled):
    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0, 1, 2], regimes=[{"name": "all"}],
                                 arms={"standard": {}, "tpp": {"pretext": "pixels"}},
                                 reference_arms={"linear_probe": {}, "full_finetune": {}}))
    records = []
    for seed in range(3):
        records += [_record("standard", seed, 0.70, [0.5, 0.6, 0.7]), _record("tpp", seed, 0.70 + 0.01 * (seed - 0.5), [0.6, 0.7, 0.7]),
                    _record("linear_probe", seed, 0.80, [0.8], method=None), _record("full_finetune", seed, 0.75, [0.75], method=None)]
    for r in records[:2]:  # CPU time recorded for seed 0 only (runs made before the runner measured it have none)
        r["cpu_seconds"] = {"train": 9.0}
    records.append({"kind": "tpp", "method": "lora", "arm": "pixels", "seed": 0, "pretext_curve": [(1, 0.9), (2, 0.8)],
                    "seconds": {"tpp": 100.0}, "cpu_seconds": {"tpp": 180.0}})
    summary, text = summarise(plan, records)
    assert "| lora/standard | 3 |" in text and "| 5 | 9 (1 of 3) |" in text and "| linear_probe | 3 |" in text
    assert "| 5 | - |" in text  # the reference arms: no CPU time recorded
    assert "lora/pixels: 0.9000 -> 0.8000 (-11.1 %, 1 seeds; 100 s wall, 180 CPU s)" in text
    paired = summary["regimes"]["all"]["paired"]["lora/tpp - lora/standard"]
    assert paired["mean_dice"]["per_seed"] == pytest.approx({0: -0.5, 1: 0.5, 2: 1.5})
    assert paired["mean_dice"]["wins"] == 2 and paired["hd95"]["per_seed"][2] == pytest.approx(-0.15)  # mm, not points
    assert "| lora/tpp - lora/standard | 3 |" in text and "| 2/3 |" in text
    assert "full fine-tuning is below the linear probe" in text  # the reference arms do not make sense here
    assert summary["regimes"]["all"]["convergence"]["lora/tpp - lora/standard"] == [(0, 3, 2), (1, 3, 2), (2, 3, 2)]
    assert summary["pretext"]["lora/pixels"] == {"first": 0.9, "last": 0.8, "seeds": 1}
    # the figures: curves per regime and the forest plot, as PNG files
    from PIL import Image

    from tools.study.plots import plot_study

    written = plot_study(records, summary, ["all"], tmp_path / "figures")
    assert sorted(p.name for p in written) == ["curves_all.png", "forest.png"]
    assert all(Image.open(p).format == "PNG" and Image.open(p).size[0] > 500 for p in written)



@pytest.mark.parametrize("probe_auc,probe_bal,passes", [(0.80, 0.60, True), (0.60, 0.36, False)])
def test_a_linear_probe_below_the_backbone_gate_makes_the_comparison_not_evidence(tmp_path, labelled, probe_auc,
                                                                                   probe_bal, passes):
    plan = load_plan(_write_plan(tmp_path, labelled, seeds=[0, 1], regimes=[{"name": "all"}],
                                 arms={"standard": {}, "tpp": {"pretext": "pixels"}}))

    def record(arm: str, seed: int, auc: float, bal: float, method: str | None = "lora") -> dict:
        return {"kind": "finetune", "task": "classification", "arm": arm, "method": method, "seed": seed,
                "regime": "all", "test": {"accuracy": bal, "balanced_accuracy": bal, "macro_auc": auc},
                "seconds": {"train": 1.0}, "val_curve": []}

    records = [r for seed in (0, 1) for r in (record("standard", seed, 0.70, 0.5), record("tpp", seed, 0.72, 0.5),
                                               record("linear_probe", seed, probe_auc, probe_bal, method=None))]
    summary, text = summarise(plan, records)
    assert summary["regimes"]["all"]["backbone_gate"]["passed"] is passes
    assert ("NOT evidence" in text) is (not passes) and ("Backbone gate passed" in text) is passes
    if not passes:  # both reasons, with the chance level of the datalist's 3 classes
        assert "macro AUC 0.600 < 0.65" in text and "within 5 points of chance (0.333)" in text

# ---------------------------------------------------------------------------------------------- starting from TPP

@pytest.mark.parametrize("scale", [0.0, 0.5, 1.0])
def test_fine_tuning_starts_from_tpp_with_its_update_scaled(tmp_path, scale):
    """Scale 1: TPP's parameters as saved; 0: LoRA's A from TPP, B back at zero, so the network computes the
    backbone's function; between: B scaled."""
    backbone = make_backbone("vit", 2)
    peft = {"method": "lora", "r": 4, "alpha": 8}
    tpp = build_network(backbone, peft=peft, allow_random_backbone=True)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in target_parameters(tpp).values():
            p.normal_()
    save_target_parameters(tpp, tmp_path / "tpp.safetensors", head_modules=head_modules(tpp))
    saved = {n: p.detach().clone() for n, p in target_parameters(tpp).items()}

    net = build_network(make_backbone("vit", 2), peft=peft, allow_random_backbone=True, init="tpp",
                        target_parameters=str(tmp_path / "tpp.safetensors"), tpp_update_scale=scale)
    for name, p in target_parameters(net).items():
        expected = saved[name] * scale if "lora_B" in name else saved[name]
        assert torch.allclose(p, expected), name
    if scale == 0.0:
        x = torch.rand(2, 1, 32, 32)
        plain = make_backbone("vit", 2).eval()
        assert torch.allclose(net.eval()(x), plain(x), atol=1e-6)
    with pytest.raises(ValueError, match="update_scale"):
        start_from_tpp(net, tmp_path / "tpp.safetensors", update_scale=1.5)


# ---------------------------------------------------------------------------------------------- a real study

@pytest.mark.slow
@needs_weights
def test_real_study_on_a_segmentation_bundle_resumes_and_reports_dice(tmp_path):
    """breast_us_segmentation on 24 generated image / mask pairs: TPP, fine-tuning from it and from the standard
    start on half the training labels, evaluation; the report's numbers are the evaluations' own."""
    import csv

    from tools.make_demo_data import make_demo_dataset
    from tools.prepare_image_mask_pairs import main as prepare_pairs
    from tools.run_study import main as run_study_cli

    data = make_demo_dataset(tmp_path / "data", num_per_class=8, image_size=64, seed=0, masks=True)
    datalist = prepare_pairs(str(data), str(tmp_path / "datalist.json"), near_duplicates=False)
    plan = _write_plan(tmp_path, Path(datalist), bundle="bundles/breast_us_segmentation", switches=[], seeds=[0],
                       overrides={}, methods={"lora": {"method": "lora", "r": 4, "alpha": 8, "target_modules": "attention_mlp"}},
                       pretexts={"pixels": {"tpp_epochs": 1}}, arms={"standard": {}, "tpp": {"pretext": "pixels"}},
                       reference_arms={}, regimes=[{"name": "half", "label_fraction": 0.5, "overrides": {"num_epochs": 1}}],
                       workdir=str(tmp_path / "study"), threads=1)  # one thread: the suite's workers share 2 cores
    assert run_study_cli(str(plan)) == 0
    result = json.loads((tmp_path / "study" / "results.json").read_text())
    assert result["status"] == "complete" and len(result["runs"]) == 3
    for run in result["runs"]:  # each stage's CPU time is measured, and (one thread) at most its wall time plus start-up
        assert run["cpu_seconds"].keys() == run["seconds"].keys()
        assert all(0 < run["cpu_seconds"][k] <= 1.5 * run["seconds"][k] + 5 for k in run["seconds"])
    for arm in ("standard", "tpp"):
        eval_dir = tmp_path / "study" / "half" / "seed0" / "lora" / arm / "eval"
        dice = float(dict(csv.reader((eval_dir / "metrics.csv").read_text().splitlines()))["test_mean_dice"])
        assert result["summary"]["regimes"]["half"]["arms"][f"lora/{arm}"]["mean_dice"] == [pytest.approx(dice)]
    half = json.loads(Path(result["runs"][0]["overrides"]["datalist"]).read_text())  # the standard arm: first
    assert len(half["training"]) == round(0.5 * len(json.loads(Path(datalist).read_text())["training"]))
    assert "| lora/tpp - lora/standard | 1 |" in (tmp_path / "study" / "results.md").read_text()
    # resumed: everything finished, nothing runs again; published: report, figures, plan and versions
    assert run_study_cli(str(plan), publish=str(tmp_path / "docs")) == 0
    published = sorted(p.name for p in (tmp_path / "docs").iterdir())
    assert published == ["curves_half.png", "environment.json", "forest.png", "plan.yaml", "results.json", "results.md"]
    assert json.loads((tmp_path / "docs" / "environment.json").read_text())["torch"] == torch.__version__


def test_cli_names_a_bad_plan_in_one_line(tmp_path, labelled):
    import subprocess
    import sys

    path = _write_plan(tmp_path, labelled, datalist="${NO_SUCH_VARIABLE}/busi.json")
    result = subprocess.run([sys.executable, "tools/run_study.py", str(path), "--dry_run"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"ERROR: study plan '{path}': datalist ")
    # a --restore file that is not a study's results.json: one line naming it
    good = _write_plan(tmp_path, labelled)
    (tmp_path / "notes.json").write_text(json.dumps({"summary": {}}))
    result = subprocess.run([sys.executable, "tools/run_study.py", str(good), "--dry_run", "--workdir", str(tmp_path / "w"),
                             "--restore", str(tmp_path / "notes.json")], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"ERROR: --restore {tmp_path / 'notes.json'}: expected a study's results.json")
