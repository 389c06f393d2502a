"""The 3D spleen CT segmentation bundle: every stage and switch through ConfigWorkflow, NIfTI geometry, learning gates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
import torch

from bundle_utils import assert_same_image_steps, evaluation_ckpt_dir, run, workflow
from conftest import ROOT, require_data
from tools.prepare_nifti_pairs import main as prepare_nifti
from tpp_components.data import load_datalist, write_datalist
from volume_bundles import SMALL_SWIN, SMALL_UNETR, SWIN_SSL, UNETR, check_export_3d, metric, small_network, swin_ssl_checkpoint
from volume_bundles import dice as mask_dice

BUNDLE = ROOT / "bundles" / "spleen_ct_segmentation"
CONFIGS = BUNDLE / "configs"
TRAIN, PRETRAIN, TPP, EVALUATE = ["train.json"], ["train.json", "pretrain.json"], ["train.json", "tpp.json"], ["train.json", "evaluate.json"]

#: learning gates: the all-background predictor has foreground Dice 0 on every volume with a spleen
SYNTHETIC_MIN_DICE = 0.5  # measured 0.897 (1 stage-0, 1 TPP, 1 fine-tuning epoch of single crops; 6 training, 2 test volumes)
REAL_MIN_DICE = 0.15  # measured 0.276 (1 stage-0, 1 TPP and 16 fine-tuning epochs of 4 crops on the one real CT, scored on itself)

#: the synthetic CT's geometry: not RAS, not 3 mm, not cubic, so that the inverted prediction must undo all three
SYNTHETIC_SHAPE = (64, 56, 40)
SYNTHETIC_AFFINE = np.array([[-2.5, 0, 0, 60.0], [0, -2.5, 0, 40.0], [0, 0, 3.5, -20.0], [0, 0, 0, 1]])


def synthetic_ct(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU and its label: air around an elliptic body (40 HU), a bright
    spleen-like ball (label 1, +90 HU) and a dark kidney-like ball (label 2, which the bundle
    maps to background), with Gaussian noise."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in SYNTHETIC_SHAPE], indexing="ij"))
    centre = np.array(SYNTHETIC_SHAPE, np.float32)[:, None, None, None] / 2
    body = (((grid[:2] - centre[:2]) / (0.45 * np.array(SYNTHETIC_SHAPE[:2])[:, None, None, None])) ** 2).sum(0) < 1
    image = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, SYNTHETIC_SHAPE)
    label = np.zeros(SYNTHETIC_SHAPE, np.uint8)
    for value, hu, radius in ((1, 130.0, rng.uniform(10, 14)), (2, -20.0, rng.uniform(5, 8))):
        at = np.array([rng.uniform(0.3, 0.7) * s for s in SYNTHETIC_SHAPE], np.float32)[:, None, None, None]
        ball = (((grid - at) * np.array([2.5, 2.5, 3.5])[:, None, None, None] / 2.5) ** 2).sum(0) < radius**2
        ball &= body & (label == 0)
        image[ball] = hu + rng.normal(0, 15, int(ball.sum()))
        label[ball] = value
    return image.astype(np.int16), label


def write_synthetic_ct(root: Path, count: int, seed: int = 0) -> tuple[Path, Path]:
    """``count`` synthetic CT volumes in ``root/ct`` with labels of the same names in ``root/seg``."""
    rng = np.random.default_rng(seed)
    for folder in ("ct", "seg"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image, label = synthetic_ct(rng)
        nibabel.save(nibabel.Nifti1Image(image, SYNTHETIC_AFFINE), str(root / "ct" / f"case_{i:02d}.nii.gz"))
        nibabel.save(nibabel.Nifti1Image(label, SYNTHETIC_AFFINE), str(root / "seg" / f"case_{i:02d}.nii.gz"))
    return root / "ct", root / "seg"


@pytest.fixture(scope="module")
def synthetic_datalist(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("spleen_synthetic")
    ct, seg = write_synthetic_ct(tmp / "data", 10)
    return prepare_nifti(str(tmp / "datalist.json"), images_dir=str(ct), labels_dir=str(seg), foreground=1,
                         foreground_name="spleen", val_fraction=0.2, test_fraction=0.2)


def one_volume_datalist(ct: Path, seg: Path, path: Path) -> str:
    """A datalist of ONE labelled CT volume in every split.

    One volume cannot be split by patient, and an axial split leaves too little spleen on each
    side to learn within a test's budget, so the real-data gate trains on the volume and scores
    the same volume: it shows that the pipeline runs on real CT and fits it, not accuracy.
    """
    entry = {"image": str(ct), "label": str(seg)}
    datalist = {"name": f"{ct.name} (one volume in every split)", "labels": {"0": "background", "1": "spleen"},
                "num_classes": 2, "foreground_label_ids": [1], "training": [entry], "validation": [entry], "test": [entry]}
    return str(write_datalist(datalist, path))


def _overrides(configs: list[str], datalist: str, workflow_type: str = "train") -> dict:
    """Settings to build any stage without earlier stages' outputs (random frozen backbone, standard init)."""
    if workflow_type == "infer":
        return {"input_dir": str(Path(datalist).parent / "data" / "ct"), **small_network(configs)}
    overrides = {"datalist": datalist, **small_network(configs)}
    if "pretrain.json" not in configs:
        overrides.update(backbone_weights=None, init="standard", allow_random_backbone=True, reuse_decoder=False)
    return overrides


@pytest.mark.parametrize("configs,workflow_type", [
    (PRETRAIN, "train"), (TPP, "train"), (TRAIN, "train"), (EVALUATE, "train"), (["inference.json"], "infer"),
    (["train.json", UNETR, "pretrain.json"], "train"), (["train.json", UNETR, "tpp.json"], "train"),
    (["train.json", UNETR], "train"), (["train.json", UNETR, "evaluate.json"], "train"), (["inference.json", UNETR], "infer"),
    (["train.json", SWIN_SSL, "tpp.json"], "train"), (["train.json", SWIN_SSL], "train"),
    (["train.json", SWIN_SSL, "evaluate.json"], "train"), (["inference.json", SWIN_SSL], "infer"),
])
def test_check_properties(configs, workflow_type, synthetic_datalist, tmp_path):
    overrides = _overrides(configs, synthetic_datalist, workflow_type)
    if "evaluate.json" in configs:
        overrides.update(evaluation_ckpt_dir(tmp_path))
    wf = workflow(configs, workflow_type=workflow_type, bundle=BUNDLE, **overrides)
    assert not wf.check_properties()


def test_inference_definition_matches_train():
    """inference.json is standalone (MONAI Label reads it alone): its network and image transforms equal train.json's."""
    train, inference = (json.loads((CONFIGS / f).read_text()) for f in ("train.json", "inference.json"))
    assert inference["backbone"] == train["backbone"] and inference["peft"] == train["peft"]
    for key in ("image_size", "roi_size", "pixdim", "intensity_window", "in_channels", "num_classes", "class_names"):
        assert inference[key] == train[key], key
    assert inference["inferer"] == train["validate"]["inferer"]
    assert_same_image_steps(train, inference)


def test_foreground_ids_of_the_datalist_become_label_1(synthetic_datalist, tmp_path):
    """The converter's ``foreground_label_ids`` pick the organ: id 1 (spleen) by default, id 2 when the datalist says so."""
    source = load_datalist(synthetic_datalist)
    counts = {}
    for ids in ([1], [2]):
        datalist = str(write_datalist({**source, "foreground_label_ids": ids}, tmp_path / f"fg{ids[0]}.json"))
        wf = workflow(TRAIN, bundle=BUNDLE, **_overrides(TRAIN, datalist))
        item = wf.parser.get_parsed_content("validate#dataset")[0]
        assert set(torch.unique(item["label"]).tolist()) == {0.0, 1.0}
        original = np.asarray(nibabel.load(source["validation"][0]["label"]).dataobj)
        voxel_ratio = float(np.prod(np.abs(np.diag(SYNTHETIC_AFFINE)[:3]))) / 27.0  # resampled to 3 mm
        counts[ids[0]] = (float(item["label"].sum()), (original == ids[0]).sum() * voxel_ratio)
    for measured, expected in counts.values():
        assert abs(measured - expected) < 0.15 * expected, counts


def _all_background_dice(entries: list[dict]) -> float:
    """MONAI's foreground Dice of the trivial predictor (all background) on the volumes: the gates' baseline."""
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False)
    for entry in entries:
        label = torch.as_tensor(np.asarray(nibabel.load(entry["label"]).dataobj) == 1).float()[None, None]
        metric(torch.cat([torch.ones_like(label), torch.zeros_like(label)], 1), torch.cat([1 - label, label], 1))
    return float(metric.aggregate())


def _infer_and_check_geometry(tmp: Path, datalist: str, configs: list[str], **overrides) -> float:
    """Run inference on the test volumes; every saved mask must have its input's shape and affine.
    Returns the mean Dice of the saved masks against the original labels, in the input's own grid."""
    test = load_datalist(datalist)["test"]
    images = tmp / "images"
    images.mkdir()
    for entry in test:
        (images / Path(entry["image"]).name).symlink_to(entry["image"])
    run(configs, bundle=BUNDLE, workflow_type="infer", input_dir=str(images), output_dir=str(tmp / "pred"),
        ckpt_dir=str(tmp / "models"), **overrides)
    scores = []
    for entry in test:
        source = nibabel.load(entry["image"])
        saved = nibabel.load(str(tmp / "pred" / Path(entry["image"]).name.replace(".nii.gz", "_seg.nii.gz")))
        assert saved.shape == source.shape and np.allclose(saved.affine, source.affine, atol=1e-4), (saved.shape, saved.affine)
        mask = np.asarray(saved.dataobj)
        assert set(np.unique(mask)) <= {0, 1}
        scores.append(mask_dice(mask == 1, np.asarray(nibabel.load(entry["label"]).dataobj) == 1))
    return float(np.mean(scores))


def test_swin_stages_on_synthetic_ct_learn_restore_geometry_and_export(synthetic_datalist, tmp_path):
    """Stage 0 (SimMIM) -> TPP -> LoRA fine-tuning -> evaluation -> inference, SwinUNETR on synthetic CT."""
    common = {"datalist": synthetic_datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1, **SMALL_SWIN,
              "train#num_samples": 1}
    run(PRETRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "pretrain"), **common)
    run(TPP, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "tpp"), **common)
    # one epoch of single crops: a higher learning rate than the bundle's default makes it enough
    run(TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "train"), learning_rate=0.01, **common)
    run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), **common)
    dice, hd95 = metric(tmp_path / "eval"), metric(tmp_path / "eval", "test_hd95")
    # Dice in each volume's own grid (the prediction inverted onto it) and in the network's resampled grid
    network_size = metric(tmp_path / "eval", "test_mean_dice_network_size")
    assert abs(dice - network_size) < 0.1, (dice, network_size)
    assert dice > SYNTHETIC_MIN_DICE, f"synthetic test Dice {dice:.3f} (all-background: 0)"
    assert 0 <= hd95 < 10, f"HD95 {hd95} voxels"
    models = tmp_path / "models"
    assert {"backbone.pt", "pretext_decoder.pt", "tpp_target_parameters.safetensors", "model.pt",
            "target_parameters.safetensors"} <= {p.name for p in models.iterdir()}
    backbone, model = torch.load(models / "backbone.pt", weights_only=True), torch.load(models / "model.pt", weights_only=True)
    mlp = [k for k in backbone if ".mlp." in k]
    assert mlp and all(torch.equal(backbone[k], model[k]) for k in mlp)  # stage 0's encoder, frozen (LoRA on attention)
    assert any(not torch.equal(backbone[k], model[k]) for k in backbone if k.endswith("attn.qkv.weight"))  # LoRA merged
    per_volume = list(csv.DictReader((tmp_path / "eval" / "test_mean_dice_raw.csv").read_text().splitlines()))
    assert len(per_volume) == len(load_datalist(synthetic_datalist)["test"]) and (tmp_path / "eval" / "test_hd95_raw.csv").is_file()
    native = _infer_and_check_geometry(tmp_path, synthetic_datalist, ["inference.json"], **SMALL_SWIN)
    assert native > SYNTHETIC_MIN_DICE, f"Dice of the saved masks in the input's grid {native:.3f}"
    assert _all_background_dice(load_datalist(synthetic_datalist)["test"]) == 0.0
    check_export_3d(BUNDLE, tmp_path, ["inference.json"], SMALL_SWIN, in_channels=1)


def test_unetr_switch_runs_every_stage_and_scripts(synthetic_datalist, tmp_path):
    """3D UNETR: stage 0 (MAE) -> TPP reusing its decoder -> LoRA fine-tuning -> evaluation -> inference -> TorchScript."""
    common = {"datalist": synthetic_datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1, **SMALL_UNETR}
    for stage in ("pretrain.json", "tpp.json", None, "evaluate.json"):
        configs = ["train.json", UNETR] + ([stage] if stage else [])
        run(configs, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / (stage or "train")), **common)
    models = tmp_path / "models"
    backbone, model = torch.load(models / "backbone.pt", weights_only=True), torch.load(models / "model.pt", weights_only=True)
    mlp = [k for k in backbone if ".mlp." in k]
    assert mlp and all(torch.equal(backbone[k], model[k]) for k in mlp)
    assert any(not torch.equal(backbone[k], model[k]) for k in backbone if ".attn.qkv.weight" in k)
    assert 0.0 <= metric(tmp_path / "logs" / "evaluate.json") <= 1.0
    _infer_and_check_geometry(tmp_path, synthetic_datalist, ["inference.json", UNETR], **SMALL_UNETR)
    check_export_3d(BUNDLE, tmp_path, ["inference.json", UNETR], SMALL_UNETR, in_channels=1)


def test_swin_ssl_switch_starts_from_the_self_supervised_encoder(synthetic_datalist, tmp_path):
    weights = tmp_path / "model_swinvit.pt"
    encoder = swin_ssl_checkpoint(weights)
    wf = workflow(["train.json", SWIN_SSL], bundle=BUNDLE, datalist=synthetic_datalist, backbone_weights=str(weights),
                  init="standard", ckpt_dir=str(tmp_path / "models"))
    network = wf.parser.get_parsed_content("network")
    state = network.state_dict()
    assert any(".lora_" in k for k in state)
    plain = [k for k in encoder if k in state]  # the LoRA-wrapped qkv layers are renamed; everything else keeps its name
    assert len(plain) > len(encoder) // 2 and all(torch.equal(state[k], encoder[k]) for k in plain)
    frozen = {n for n, p in network.named_parameters() if not p.requires_grad}
    assert {k for k in plain if k.endswith("weight")} <= frozen
    # the published encoder has feature size 48: the CPU default (12) is refused, naming the mismatch
    from tpp_components.networks import WeightsError

    with pytest.raises(RuntimeError) as err:
        workflow(["train.json", SWIN_SSL], bundle=BUNDLE, datalist=synthetic_datalist, backbone_weights=str(weights),
                 init="standard", **{"backbone#feature_size": 12})
    cause = err.value
    while cause.__cause__ is not None:  # the config parser wraps the loader's error
        cause = cause.__cause__
    assert isinstance(cause, WeightsError) and "shape mismatches ['swinViT.patch_embed.proj.weight" in str(cause)


#: the real gate's settings: the bundle's CPU defaults but the small Swin of the tests, 4 crops a step
#: (pos 1 : neg 1), a learning rate that moves in few steps, and validation only after the last epoch
REAL_EPOCHS = 16


@pytest.mark.slow
def test_real_ct_spleen_beats_all_background(tmp_path):
    """ONE TotalSegmentator CT, trained on and scored on itself (a pipeline check on real CT, not accuracy)."""
    data = require_data("totalseg_ct")
    datalist = one_volume_datalist(data / "example_ct.nii.gz", data / "example_seg_full_oldv1.nii.gz", tmp_path / "datalist.json")
    common = {"datalist": datalist, "ckpt_dir": str(tmp_path / "models"), **SMALL_SWIN, "train#num_samples": 4}
    run(PRETRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "pretrain"), num_epochs=1, **common)
    run(TPP, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "tpp"), num_epochs=1, **common)
    run(TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "train"), num_epochs=REAL_EPOCHS, val_interval=REAL_EPOCHS,
        learning_rate=0.01, warmup_epochs=0, **common)
    run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), **common)
    dice = metric(tmp_path / "eval")
    assert _all_background_dice(load_datalist(datalist)["test"]) == 0.0
    assert dice > REAL_MIN_DICE, f"real CT Dice {dice:.3f} on the volume it was trained on (all-background: 0)"
