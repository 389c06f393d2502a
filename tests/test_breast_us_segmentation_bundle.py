"""The breast-ultrasound segmentation bundle: every stage through ConfigWorkflow, learning gates, metadata."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle_utils import check_export, evaluation_ckpt_dir, named_steps, run, workflow
from conftest import ROOT, needs_weights, require_data
from tools.make_demo_data import make_demo_dataset
from tools.prepare_image_mask_pairs import main as prepare_pairs
from tpp_components.data import load_datalist, write_datalist

BUNDLE = ROOT / "bundles" / "breast_us_segmentation"
CONFIGS = BUNDLE / "configs"
TRAIN, TPP, EVALUATE = ["train.json"], ["train.json", "tpp.json"], ["train.json", "evaluate.json"]


#: learning gates: foreground Dice of the all-background predictor is 0 on every image with a lesion
SYNTHETIC_MIN_DICE = 0.5  # measured 0.806 after one TPP and one fine-tuning epoch on 15 synthetic images
REAL_MIN_DICE = 0.3  # measured 0.462 (1 TPP + 3 fine-tuning epochs, 52 training images, 12 lesion test images)


def _mean_dice(eval_dir: Path) -> float:
    rows = list(csv.reader((eval_dir / "metrics.csv").read_text().splitlines()))
    return float(dict(rows)["test_mean_dice"])


@pytest.fixture(scope="module")
def demo_datalist(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("seg_demo")
    data = make_demo_dataset(tmp / "data", num_per_class=8, image_size=64, seed=0, masks=True)
    return prepare_pairs(str(data), str(tmp / "datalist.json"), near_duplicates=False)


@pytest.mark.parametrize("configs,workflow_type", [(TPP, "train"), (TRAIN, "train"), (EVALUATE, "train"),
                                                    (["inference.json"], "infer")])
def test_check_properties(configs, workflow_type, demo_datalist, tmp_path):
    overrides = {"datalist": demo_datalist} if workflow_type == "train" else {"input_dir": str(Path(demo_datalist).parent / "data" / "benign")}
    if configs != ["inference.json"]:
        overrides.update(backbone_weights=None, init="standard", allow_random_backbone=True)
    if "evaluate.json" in configs:
        overrides.update(evaluation_ckpt_dir(tmp_path))
    assert not workflow(configs, workflow_type=workflow_type, bundle=BUNDLE, **overrides).check_properties()


def _pipeline(tmp: Path, datalist: str, epochs: int = 1) -> float:
    common = {"datalist": datalist, "ckpt_dir": str(tmp / "models"), "num_epochs": epochs}
    run(TPP, bundle=BUNDLE, output_dir=str(tmp / "logs" / "tpp"), **{**common, "num_epochs": 1})
    run(TRAIN, bundle=BUNDLE, output_dir=str(tmp / "logs" / "train"), init="tpp", **common)
    run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp / "eval"), **common)
    for stage in ("tpp", "train"):  # every training stage leaves a PNG of its curves beside its logs
        assert (tmp / "logs" / stage / "curves.png").is_file(), stage
    return _mean_dice(tmp / "eval")


@needs_weights
def test_all_stages_on_synthetic_data_learn_and_restore_geometry(demo_datalist, tmp_path):
    dice = _pipeline(tmp_path, demo_datalist)
    assert dice > SYNTHETIC_MIN_DICE, f"test Dice {dice:.3f} (all-background: 0)"
    models = {p.name for p in (tmp_path / "models").iterdir()}
    assert {"model.pt", "tpp_target_parameters.safetensors", "target_parameters.safetensors"} <= models
    assert not any(name.endswith(".tmp") for name in models)
    per_image = list(csv.DictReader((tmp_path / "eval" / "test_mean_dice_raw.csv").read_text().splitlines()))
    scored = [row for row in per_image if row["mean"] != "nan"]
    assert len(per_image) == 6 and len(scored) == 4  # the 2 normal images have empty masks: no Dice
    # inference: a PNG mask per image, at the image's own size, values 0/1
    images = tmp_path / "images"
    images.mkdir()
    first = Path(load_datalist(demo_datalist)["test"][0]["image"])
    Image.open(first).convert("RGB").resize((90, 70)).save(images / "odd size [1].png")
    Image.open(first).save(images / first.name)
    run(["inference.json"], bundle=BUNDLE, workflow_type="infer", input_dir=str(images), output_dir=str(tmp_path / "pred"),
        ckpt_dir=str(tmp_path / "models"))
    odd = Image.open(tmp_path / "pred" / "odd size [1]_seg.png")
    assert odd.size == (90, 70) and set(np.unique(np.asarray(odd))) <= {0, 1}
    assert Image.open(tmp_path / "pred" / f"{first.stem}_seg.png").size == Image.open(first).size
    # the zoo's TorchScript export of the merged model gives the checkpoint's outputs
    check_export(BUNDLE, ["inference.json"], tmp_path / "models" / "model.pt", [2, 3, 64, 64], atol=1e-4)


@needs_weights
def test_evaluation_scores_each_image_at_its_own_resolution(tmp_path):
    """The test Dice is computed at each image's own size (the prediction resized back, the mask as drawn), with
    the network-size Dice beside it; both per image with the file name."""
    data = make_demo_dataset(tmp_path / "data", num_per_class=4, image_size=96, seed=1, masks=True)
    datalist = prepare_pairs(str(data), str(tmp_path / "datalist.json"), near_duplicates=False)
    common = {"datalist": datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1, "init": "standard"}
    run(TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs"), **common)
    wf = run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), **common)
    rows = dict(csv.reader((tmp_path / "eval" / "metrics.csv").read_text().splitlines()))
    assert {"test_mean_dice", "test_mean_dice_network_size"} <= set(rows)
    out = wf.parser.get_parsed_content("validate#evaluator").state.output[0]
    assert out["pred_native"].shape[-2:] == out["label"].shape[-2:] == (96, 96)  # scored at the image's size
    assert out["pred"].shape[-2:] == out["label_network"].shape[-2:] == (64, 64)
    for name in ("test_mean_dice", "test_mean_dice_network_size"):
        per_image = list(csv.DictReader((tmp_path / "eval" / f"{name}_raw.csv").read_text().splitlines()))
        assert len(per_image) == len(load_datalist(datalist)["test"]) and all("_mask" not in r["filename"] for r in per_image)


@pytest.mark.slow
@needs_weights
def test_real_busi_segmentation_beats_all_background(tmp_path):
    data = require_data("busi_segmentation")
    full = load_datalist(prepare_pairs(str(data), str(tmp_path / "full.json"), skip_bad_pairs=True))
    # lesion images only in validation/test (normal images have no Dice), a slice of training
    small = {**full, "training": full["training"][::2],
             "validation": [e for e in full["validation"] if e["class"] != "normal"],
             "test": [e for e in full["test"] if e["class"] != "normal"][:12]}
    datalist = str(write_datalist(small, tmp_path / "small.json"))
    dice = _pipeline(tmp_path / "run", datalist, epochs=3)
    assert dice > REAL_MIN_DICE, f"real BUSI test Dice {dice:.3f} (all-background: 0)"


def test_inference_definition_matches_train():
    """inference.json is standalone (MONAI Label reads it alone): its network and image transforms equal train.json's."""
    train, inference = (json.loads((CONFIGS / f).read_text()) for f in ("train.json", "inference.json"))
    assert inference["backbone"] == train["backbone"] and inference["peft"] == train["peft"]
    for key in ("image_size", "in_channels", "num_classes", "class_names"):
        assert inference[key] == train[key], key
    image_steps = [t for t in named_steps(train, train["preprocessing"]) if t.get("keys") == "image"]
    assert [t for t in named_steps(inference, inference["preprocessing"]["transforms"]) if t["_target_"] in ("Lambdad", "ScaleIntensityd", "RepeatChanneld")] == image_steps


UNETR = "unetr.json"


@pytest.mark.parametrize("configs,workflow_type", [
    (["train.json", UNETR, "pretrain.json"], "train"), (["train.json", UNETR, "tpp.json"], "train"),
    (["train.json", UNETR], "train"), (["train.json", UNETR, "evaluate.json"], "train"), (["inference.json", UNETR], "infer"),
])
def test_unetr_switch_check_properties(configs, workflow_type, demo_datalist, tmp_path):
    overrides = {"datalist": demo_datalist} if workflow_type == "train" else {"input_dir": str(Path(demo_datalist).parent / "data" / "benign")}
    if configs[-1] != "pretrain.json" and workflow_type == "train":
        overrides.update(backbone_weights=None, init="standard", allow_random_backbone=True, reuse_decoder=False)
    if "evaluate.json" in configs:
        overrides.update(evaluation_ckpt_dir(tmp_path))
    assert not workflow(configs, workflow_type=workflow_type, bundle=BUNDLE, **overrides).check_properties()


def test_unetr_switch_runs_stage0_tpp_train_evaluate_inference(demo_datalist, tmp_path):
    """2D UNETR: stage 0 (MAE) -> TPP reusing its decoder -> LoRA fine-tuning -> evaluation -> inference."""
    common = {"datalist": demo_datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1}
    for stage, extra in (("pretrain.json", {}), ("tpp.json", {}), (None, {"init": "tpp"}), ("evaluate.json", {})):
        configs = ["train.json", UNETR] + ([stage] if stage else [])
        run(configs, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / (stage or "train")), **common, **extra)
    models = tmp_path / "models"
    assert {"backbone.pt", "pretext_decoder.pt", "tpp_target_parameters.safetensors", "model.pt"} <= {p.name for p in models.iterdir()}
    backbone, model = torch.load(models / "backbone.pt", weights_only=True), torch.load(models / "model.pt", weights_only=True)
    mlp = [k for k in backbone if ".mlp." in k]
    assert mlp and all(torch.equal(backbone[k], model[k]) for k in mlp)  # stage 0's encoder, frozen (LoRA on attention only)
    assert any(not torch.equal(backbone[k], model[k]) for k in backbone if ".attn.qkv.weight" in k)  # LoRA merged
    assert 0.0 <= _mean_dice(tmp_path / "logs" / "evaluate.json") <= 1.0
    images = tmp_path / "images"
    images.mkdir()
    first = Path(load_datalist(demo_datalist)["test"][0]["image"])
    Image.open(first).resize((80, 48)).save(images / "wide.png")
    run(["inference.json", UNETR], bundle=BUNDLE, workflow_type="infer", input_dir=str(images),
        output_dir=str(tmp_path / "pred"), ckpt_dir=str(models))
    assert Image.open(tmp_path / "pred" / "wide_seg.png").size == (80, 48)
