"""The lung-tumour CT segmentation bundle: both converters feed every stage, learning gates, geometry, export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import torch
from PIL import Image

from bundle_utils import check_export, evaluation_ckpt_dir, named_steps, run, workflow
from conftest import ROOT, needs_weights, require_data
from tools.prepare_hdf5_patches import main as prepare_hdf5
from tools.prepare_nifti_pairs import main as prepare_nifti
from tools.prepare_volume_patches import main as prepare_volume_patches
from tpp_components.data import load_datalist

BUNDLE = ROOT / "bundles" / "lung_ct_segmentation"
CONFIGS = BUNDLE / "configs"
TRAIN, TPP, EVALUATE = ["train.json"], ["train.json", "tpp.json"], ["train.json", "evaluate.json"]
UNETR = "unetr.json"

#: learning gates: the all-background predictor scores foreground Dice 0 on every patch with tumour
SYNTHETIC_MIN_DICE = 0.5  # measured 0.825 (1 TPP + 1 fine-tuning epoch; 8 synthetic volumes -> 30 training patches, 10 test tumours)
#: real msd_lung_patches (1 TPP + 2 fine-tuning epochs at 48 px, the patches' own size: half the CPU time of 64 px)
REAL_MIN_VAL_DICE = 0.4  # measured 0.683 (best validation epoch, 26 tumour patches of 3 patients)
REAL_MIN_TEST_DICE = 0.15  # measured 0.292 (16 tumour patches of 2 patients; small tumours, 24 pixels on average)

VOXEL_MM = (1.5, 1.5, 2.5)


def _mean_dice(eval_dir: Path) -> float:
    rows = list(csv.reader((eval_dir / "metrics.csv").read_text().splitlines()))
    return float(dict(rows)["test_mean_dice"])


def _all_background_dice(entries: list[dict]) -> float:
    """The trivial predictor's score under the bundle's metric (MONAI Dice, foreground only, empty masks skipped)."""
    from monai.metrics import compute_dice

    labels = torch.stack([torch.as_tensor(np.load(e["label"]), dtype=torch.long)[None] for e in entries])
    onehot = torch.cat([1 - labels, labels], dim=1)
    return float(torch.nanmean(compute_dice(torch.zeros_like(onehot).index_fill_(1, torch.tensor([0]), 1), onehot,
                                            include_background=False)))


def _chest_ct(rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 16)) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like CT volume in HU (body 40, lungs -850, air -1000, noise 20) with one spherical tumour (30 HU) in a lung."""
    x, y, z = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    ct = np.full(shape, -1000.0, np.float32)
    ct[((x - 32) / 31) ** 2 + ((y - 32) / 28) ** 2 <= 1] = 40.0
    lungs = [(18.0, 32.0), (46.0, 32.0)]
    for cx, cy in lungs:
        ct[((x - cx) / 11) ** 2 + ((y - cy) / 20) ** 2 <= 1] = -850.0
    cx, cy = lungs[rng.integers(2)]
    centre = np.array([cx + rng.uniform(-3, 3), cy + rng.uniform(-8, 8), rng.uniform(5, shape[2] - 6)])
    radius_mm = rng.uniform(6.0, 9.0)
    distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip((x, y, z), centre, VOXEL_MM)))
    label = (distance <= radius_mm).astype(np.uint8)
    ct[label == 1] = 30.0
    return ct + rng.normal(0.0, 20.0, shape).astype(np.float32), label


def _msd_task06(root: Path, n: int = 8, seed: int = 0) -> Path:
    """A small synthetic MSD Task06 folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``, label 1 "cancer")."""
    rng = np.random.default_rng(seed)
    training = []
    for i in range(n):
        ct, label = _chest_ct(rng)
        for folder, data in (("imagesTr", ct), ("labelsTr", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(data, np.diag([*VOXEL_MM, 1.0])), str(root / folder / f"lung_{i:03d}.nii.gz"))
        training.append({"image": f"./imagesTr/lung_{i:03d}.nii.gz", "label": f"./labelsTr/lung_{i:03d}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Lung", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "cancer"},
        "numTraining": n, "training": training, "test": []}))
    return root


def _patches_h5(path: Path, n: int = 30, size: int = 48, seed: int = 0) -> Path:
    """Synthetic ``msd_lung_patches``-style HDF5: ``images`` (N, 1, H, W) float32 in [0, 1], ``labels`` {0, 1}."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(0.15, 0.03, (n, 1, size, size)).astype(np.float32)
    labels = np.zeros((n, 1, size, size), np.uint8)
    for i in range(n):
        if i % 5:  # every fifth patch holds no tumour, as in the real file
            cy, cx, r = rng.uniform(14, 34), rng.uniform(14, 34), rng.uniform(4, 8)
            labels[i, 0] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    images[labels == 1] = rng.normal(0.74, 0.03, int(labels.sum()))
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = images.clip(0, 1), labels
    return path


@pytest.fixture(scope="module")
def volume_datalist(tmp_path_factory) -> str:
    """MSD Task06 layout -> prepare_nifti_pairs -> prepare_volume_patches (2 mm, lung window, 48 px)."""
    tmp = tmp_path_factory.mktemp("lung_volumes")
    volumes = prepare_nifti(str(tmp / "volumes.json"), msd_dir=str(_msd_task06(tmp / "Task06_Lung")))
    return prepare_volume_patches(volumes, str(tmp / "patches.json"))


@pytest.fixture(scope="module")
def h5_datalist(tmp_path_factory) -> str:
    """HDF5 patches -> prepare_hdf5_patches (blocks of 5 patches per "patient")."""
    tmp = tmp_path_factory.mktemp("lung_h5")
    return prepare_hdf5(str(_patches_h5(tmp / "patches.h5")), str(tmp / "patches.json"), group_size=5)


def _input_dir(datalist: str) -> str:
    return str(Path(load_datalist(datalist)["test"][0]["image"]).parent)


@pytest.mark.parametrize("configs,workflow_type", [
    (TPP, "train"), (TRAIN, "train"), (EVALUATE, "train"), (["inference.json"], "infer"),
    (["train.json", UNETR, "pretrain.json"], "train"), (["train.json", UNETR, "tpp.json"], "train"),
    (["train.json", UNETR], "train"), (["train.json", UNETR, "evaluate.json"], "train"), (["inference.json", UNETR], "infer"),
])
def test_check_properties(configs, workflow_type, h5_datalist, tmp_path):
    overrides = {"datalist": h5_datalist} if workflow_type == "train" else {"input_dir": _input_dir(h5_datalist)}
    if workflow_type == "train" and configs[-1] != "pretrain.json":
        overrides.update(backbone_weights=None, init="standard", allow_random_backbone=True, reuse_decoder=False)
    if "evaluate.json" in configs:
        overrides.update(evaluation_ckpt_dir(tmp_path))
    assert not workflow(configs, workflow_type=workflow_type, bundle=BUNDLE, **overrides).check_properties()


def test_volume_converter_patches_are_windowed_not_rescaled(volume_datalist):
    """The bundle keeps the converter's CT window: a lung-only patch stays dark (no per-image min-max stretch)."""
    datalist = load_datalist(volume_datalist)
    wf = workflow(TRAIN, bundle=BUNDLE, datalist=volume_datalist, backbone_weights=None, init="standard", allow_random_backbone=True)
    transform = wf.parser.get_parsed_content("validate#dataset").transform
    entry = datalist["training"][0]
    item = transform(dict(entry))
    raw = np.load(entry["image"])
    assert item["image"].shape == (3, 64, 64) and item["label"].shape == (1, 64, 64)
    # the same window value in and out: a resize changes the extremes a little, a min-max stretch would change the mean
    assert abs(float(item["image"][0].mean()) - float(raw.mean())) < 0.02
    assert set(torch.unique(item["label"]).tolist()) <= {0.0, 1.0}


@needs_weights
def test_all_stages_on_synthetic_volumes_learn_and_restore_geometry(volume_datalist, tmp_path):
    """MSD volumes -> patches -> TPP -> fine-tuning -> evaluation -> inference -> TorchScript export."""
    common = {"datalist": volume_datalist, "ckpt_dir": str(tmp_path / "models")}
    run(TPP, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "tpp"), tpp_epochs=1, **common)
    run(TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "train"), init="tpp", num_epochs=1, **common)
    run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), **common)
    dice = _mean_dice(tmp_path / "eval")
    test = load_datalist(volume_datalist)["test"]
    assert _all_background_dice(test) == 0.0
    assert dice > SYNTHETIC_MIN_DICE, f"synthetic test Dice {dice:.3f} (all-background: 0)"
    models = {p.name for p in (tmp_path / "models").iterdir()}
    assert {"model.pt", "tpp_target_parameters.safetensors", "target_parameters.safetensors"} <= models
    per_image = list(csv.DictReader((tmp_path / "eval" / "test_mean_dice_raw.csv").read_text().splitlines()))
    empty = [e for e in test if not np.load(e["label"]).any()]
    assert len(per_image) == len(test) and sum(row["mean"] == "nan" for row in per_image) == len(empty) > 0  # no tumour: no Dice

    # inference: .npy patches in, PNG masks out at each patch's own size, rows and columns as in the array
    images = tmp_path / "images"
    images.mkdir()
    positive = next(e for e in test if np.load(e["label"]).any())
    image, label = np.load(positive["image"]), np.load(positive["label"])
    shift = (10, -10)  # the tumour off the diagonal, so that a transposed mask would miss it
    np.save(images / "shifted.npy", np.roll(image, shift, axis=(0, 1)))
    np.save(images / "tall.npy", image[:, 6:38])  # 48 x 32
    np.save(images / "tall_label.npy", label[:, 6:38])  # a label beside its image is not an input
    run(["inference.json"], bundle=BUNDLE, workflow_type="infer", input_dir=str(images), output_dir=str(tmp_path / "pred"),
        ckpt_dir=str(tmp_path / "models"))
    assert sorted(p.name for p in (tmp_path / "pred").iterdir()) == ["shifted_seg.png", "tall_seg.png"]
    tall = np.asarray(Image.open(tmp_path / "pred" / "tall_seg.png"))
    assert tall.shape == (48, 32) and set(np.unique(tall)) <= {0, 1}
    shifted = np.asarray(Image.open(tmp_path / "pred" / "shifted_seg.png")).astype(bool)
    truth = np.roll(label, shift, axis=(0, 1)).astype(bool)
    overlap, transposed = (shifted & truth).sum(), (shifted.T & truth).sum()
    assert overlap > max(transposed, 0.3 * truth.sum()), f"tumour pixels found {overlap} (transposed {transposed}) of {truth.sum()}"

    # the zoo's TorchScript export of the merged model gives the checkpoint's outputs
    check_export(BUNDLE, ["inference.json"], tmp_path / "models" / "model.pt", [2, 3, 64, 64], atol=1e-4)


@needs_weights
def test_real_msd_lung_patches_beat_all_background(tmp_path):
    """The real HDF5 patches through their converter, a short TPP and fine-tuning; Dice against all-background (0)."""
    data = require_data("msd_lung_patches")
    datalist = prepare_hdf5(str(data / "val_patches.h5"), str(tmp_path / "lung.json"), group_size=10)
    common = {"datalist": datalist, "ckpt_dir": str(tmp_path / "models"), "image_size": 48}
    run(TPP, bundle=BUNDLE, output_dir=str(tmp_path / "tpp"), tpp_epochs=1, **common)
    train = run(TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "train"), init="tpp", num_epochs=2, **common)
    val_dice = train.parser.get_parsed_content("validate#evaluator").state.best_metric
    run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), **common)
    test_dice = _mean_dice(tmp_path / "eval")
    assert val_dice > REAL_MIN_VAL_DICE, f"real MSD lung validation Dice {val_dice:.3f} (all-background: 0)"
    assert test_dice > REAL_MIN_TEST_DICE, f"real MSD lung test Dice {test_dice:.3f} (all-background: 0)"


def test_inference_definition_matches_train():
    """inference.json is standalone (MONAI Label reads it alone): its network and image transforms equal train.json's."""
    train, inference = (json.loads((CONFIGS / f).read_text()) for f in ("train.json", "inference.json"))
    assert inference["backbone"] == train["backbone"] and inference["peft"] == train["peft"]
    for key in ("image_size", "intensity_window", "in_channels", "num_classes", "class_names"):
        assert inference[key] == train[key], key
    image_steps = [t for t in named_steps(train, train["preprocessing"]) if t.get("keys") == "image"]
    targets = {t["_target_"] for t in image_steps}
    assert "ScaleIntensityd" not in targets  # a per-image min-max stretch would undo the CT window
    assert [t for t in named_steps(inference, inference["preprocessing"]["transforms"]) if t["_target_"] in targets] == image_steps


def test_unetr_switch_runs_stage0_tpp_train_evaluate_inference(h5_datalist, tmp_path):
    """2D UNETR on HDF5 patches: stage 0 (MAE) -> TPP reusing its decoder -> LoRA fine-tuning -> evaluation -> inference."""
    common = {"datalist": h5_datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1}
    for stage, extra in (("pretrain.json", {}), ("tpp.json", {"tpp_epochs": 1}), (None, {"init": "tpp"}), ("evaluate.json", {})):
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
    np.save(images / "wide.npy", np.load(load_datalist(h5_datalist)["test"][0]["image"])[:40])  # 40 x 48
    run(["inference.json", UNETR], bundle=BUNDLE, workflow_type="infer", input_dir=str(images),
        output_dir=str(tmp_path / "pred"), ckpt_dir=str(models))
    assert np.asarray(Image.open(tmp_path / "pred" / "wide_seg.png")).shape == (40, 48)
