"""Learning gates: tests that fail when the pipeline stops learning.

A pipeline can pass every plumbing test while each arm sits at chance (the first version of
this bundle did: stage 0 kept its worst checkpoint and the head read a token the pretext never
trained). These tests run the bundle's real configs and assert that

* on the generated demo data, stage 0's held-out pretext loss falls by a stated margin, and the
  linear probe and LoRA beat the trivial predictor by a stated margin;
* on real BUSI images (when ``TPP_DATA_DIR`` holds them), a short fine-tuning run beats the
  trivial predictor on balanced accuracy.

The margins are set well below what was measured (see the constants), so they catch a pipeline
that stopped learning, not normal seed-to-seed noise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bundle_utils import run, stage_overrides, train_and_evaluate
from bundle_utils import VIT_PRETRAIN as PRETRAIN
from conftest import require_data
from tools.demo import LINEAR_PROBE
from tools.make_demo_data import make_demo_dataset
from tools.prepare_busi import main as prepare_busi

#: stage 0 on the demo data: the last held-out pretext loss must be this fraction below the first
#: epoch's (measured: 1.198 -> 0.977 in 20 epochs, an 18 % drop; the speckle is unpredictable,
#: so the loss has a high floor)
PRETEXT_DROP = 0.10
#: demo data: balanced accuracy (and accuracy over the majority rate) over the trivial
#: predictor's 1/3, in points (measured on the demo test split, n=36: linear probe +28, LoRA +31)
DEMO_MARGIN = 0.15
#: real BUSI, short run: balanced accuracy over chance (1/3), in points (measured: +13, 0.466)
BUSI_MARGIN = 0.08


def _pretext_curve(evaluator) -> list[float]:
    losses: list[float] = []
    from ignite.engine import Events

    evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: losses.append(float(e.state.metrics["val_pretext_loss"])))
    return losses


@pytest.fixture(scope="module")
def demo_stage0(tmp_path_factory) -> tuple[Path, str, list[float]]:
    """Stage 0 on 180 generated images (20 epochs), recording the held-out pretext loss per epoch."""
    tmp = tmp_path_factory.mktemp("gate")
    data = make_demo_dataset(tmp / "data", num_per_class=60, image_size=64, seed=0)
    datalist = str(prepare_busi(data_dir=str(data), output=str(tmp / "datalist.json"), seed=0))
    from bundle_utils import workflow

    wf = workflow(PRETRAIN, **stage_overrides(tmp, datalist, num_epochs=20), output_dir=str(tmp / "logs"))
    curve = _pretext_curve(wf.parser.get_parsed_content("validate#evaluator"))
    wf.run()
    wf.finalize()
    return tmp, datalist, curve


@pytest.mark.slow
def test_gate_stage0_pretext_loss_falls_on_demo_data(demo_stage0):
    tmp, _, curve = demo_stage0
    print(f"stage-0 held-out pretext loss by epoch: {[round(v, 4) for v in curve]}")
    assert len(curve) == 20
    assert curve[-1] < (1 - PRETEXT_DROP) * curve[0], f"held-out pretext loss by epoch: {curve}"
    # the saved backbone is the best epoch's (lower is better), not the first
    assert min(curve) < curve[0]


@pytest.mark.slow
def test_gate_linear_probe_and_lora_beat_trivial_on_demo_data(demo_stage0):
    tmp, datalist, _ = demo_stage0
    backbone = tmp / "models" / "backbone.pt"
    probe = train_and_evaluate(tmp, datalist, "probe", 20, backbone_weights=str(backbone), **LINEAR_PROBE)
    lora = train_and_evaluate(tmp, datalist, "lora", 15, backbone_weights=str(backbone))
    chance = 1 / 3
    for name, report in (("linear probe", probe), ("lora", lora)):
        print(f"demo {name}: balanced accuracy {report['balanced_accuracy']:.3f}, accuracy {report['accuracy']:.3f}")
        assert report["balanced_accuracy"] >= chance + DEMO_MARGIN, (name, report["balanced_accuracy"], report["per_class"])
        assert report["accuracy"] >= report["majority_rate"] + DEMO_MARGIN, (name, report["accuracy"])


@pytest.mark.slow
def test_gate_finetuning_beats_trivial_on_real_busi(tmp_path):
    """A short real run of the whole pipeline: stage 0 on the BUSI training images (no labels,
    30 epochs), then LoRA fine-tuning (20 epochs); the model must beat chance on the whole test
    split (n=156) in balanced accuracy. (A ViT trained from random weights does not: measured
    0.333 after 25 epochs, so this gate also checks that stage 0 helps.)"""
    busi = require_data("busi_classification")
    datalist = str(prepare_busi(data_dir=str(busi), output=str(tmp_path / "busi.json"), seed=0))
    run(PRETRAIN, **stage_overrides(tmp_path, datalist, num_epochs=30), output_dir=str(tmp_path / "logs"))
    report = train_and_evaluate(tmp_path, datalist, "lora", 20, backbone_weights=str(tmp_path / "models" / "backbone.pt"))
    print(f"BUSI short run, LoRA: balanced accuracy {report['balanced_accuracy']:.3f}, macro AUC {report['macro_auc']:.3f}")
    assert report["num_samples"] == 156
    assert report["balanced_accuracy"] >= 1 / 3 + BUSI_MARGIN, (report["balanced_accuracy"], report["per_class"])
