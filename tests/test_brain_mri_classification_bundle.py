"""The brain MRI classification bundle: every stage through ConfigWorkflow, for the default network (LiteMedSAM's
TinyViT, since 0.2.0) and for the own ViT with stage 0 (``configs/vit.json``); learning gates for both.

The synthetic data are four class folders of brain-slice-like JPEGs written here (``tools/make_demo_data.py``
draws breast ultrasound with three classes); half of them are RGB and half grey, as in the real set.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from bundle_utils import check_export, evaluation_ckpt_dir, run, train_and_evaluate, workflow
from conftest import ROOT, needs_weights, require_data
from tools.prepare_class_folders import main as prepare_class_folders
from tpp_components.data import load_datalist, write_datalist
from tpp_components.inferers import autocast_dtype
from tpp_components.peft import read_manifest

BUNDLE = ROOT / "bundles" / "brain_mri_classification"
CONFIGS = BUNDLE / "configs"
CLASS_NAMES = ("glioma", "meningioma", "notumor", "pituitary")
#: the default network's stages (LiteMedSAM's pretrained TinyViT: no stage 0)
TRAIN, TPP, EVALUATE, INFER = ["train.json"], ["train.json", "tpp.json"], ["train.json", "evaluate.json"], ["inference.json"]
#: the own ViT's stages (``vit.json`` after the complete config, stage 0 included)
VIT = "vit.json"
VIT_TRAIN, VIT_PRETRAIN, VIT_TPP, VIT_EVALUATE = (["train.json", VIT, *s] for s in ([], ["pretrain.json"], ["tpp.json"], ["evaluate.json"]))
VIT_INFER = ["inference.json", VIT]

#: learning gates: balanced accuracy over the trivial predictor's 1/4, in points.
#: own ViT, synthetic (stage 0 10 epochs, TPP 2, LoRA 15, batch 16, 64 px, n=48 test images): measured 0.917 (+67);
#: the same run with the head norm's statistics averaged over all epochs instead of the last one: 0.479;
#: without the head norm (4x40 images, LoRA 10 epochs) every image went to one class: 0.250
SYNTHETIC_MARGIN = 0.4
#: own ViT, real subsample (400 / 60 / 200 images, stage 0 8 epochs, TPP 2, LoRA 6, batch 16, 64 px): measured
#: 0.675 (+42), macro AUC 0.930 (2026-12-08; 0.810 / 0.921 when written, several changes earlier: not yet explained)
REAL_MARGIN = 0.3
#: the default (LiteMedSAM, LoRA from its standard start, batch 16): the same real subsample, 2 epochs, 64 px,
#: measured 0.875 (+62), macro AUC 0.976; synthetic 4x60 images, 6 epochs, 32 px, measured 0.917 (+67)
DEFAULT_REAL_MARGIN = 0.4
DEFAULT_SYNTHETIC_MARGIN = 0.3


def _brain_slice(rng: np.random.Generator, class_name: str, size: int) -> np.ndarray:
    """One 8-bit brain-slice-like image: skull ring, brain, and a class-specific bright lesion.

    glioma: a large irregular ring-enhancing lesion inside one hemisphere; meningioma: a bright dome
    against the skull; pituitary: a small bright lesion at the skull base in the midline; notumor: none.
    """
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    ay, ax = rng.uniform(0.36, 0.44), rng.uniform(0.30, 0.38)
    r = np.hypot(yy / ay, xx / ax)
    img = 0.05 + 0.8 * ((r > 0.92) & (r < 1.0)) + (r <= 0.92) * rng.uniform(0.3, 0.45)
    img += (r <= 0.92) * 0.08 * np.cos(rng.uniform(15, 25) * np.hypot(yy, xx) + rng.uniform(0, 6))  # gyri-like texture
    if class_name == "glioma":  # ring-enhancing: bright irregular rim around a dark core
        cy, cx = rng.uniform(-0.12, 0.08), rng.choice([-1, 1]) * rng.uniform(0.08, 0.14)
        theta = np.arctan2(yy - cy, xx - cx)
        d = np.hypot(yy - cy, xx - cx) / (rng.uniform(0.14, 0.19) * (1 + 0.25 * np.cos(rng.integers(3, 6) * theta + rng.uniform(0, 6))))
        img += rng.uniform(0.4, 0.5) * ((d > 0.6) & (d < 1.0)) - 0.25 * (d <= 0.6)
    elif class_name == "meningioma":  # a bright dome against the skull
        angle = rng.uniform(-np.pi, 0)  # upper half
        cy, cx = 0.85 * ay * np.sin(angle), 0.85 * ax * np.cos(angle)
        img += rng.uniform(0.45, 0.55) * (np.hypot(yy - cy, xx - cx) < rng.uniform(0.12, 0.16)) * (r <= 0.92)
    elif class_name == "pituitary":  # a bright blob at the skull base in the midline
        cy, cx = rng.uniform(0.14, 0.2), rng.uniform(-0.03, 0.03)
        img += rng.uniform(0.5, 0.6) * (np.hypot(yy - cy, xx - cx) < rng.uniform(0.07, 0.1))
    img = img * rng.uniform(0.8, 1.1) + rng.normal(0, 0.03, img.shape)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def make_brain_like_dataset(output_dir: Path, num_per_class: int, size: int = 64, seed: int = 0) -> Path:
    """``output_dir/<class>/<class>_<n>.jpg`` for the four classes; odd-numbered images are saved as RGB."""
    rng = np.random.default_rng(seed)
    for class_name in CLASS_NAMES:
        folder = output_dir / class_name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(num_per_class):
            image = Image.fromarray(_brain_slice(rng, class_name, size))
            (image.convert("RGB") if n % 2 else image).save(folder / f"{class_name}_{n}.jpg", quality=95)
    return output_dir


def _datalist(tmp: Path, num_per_class: int, seed: int = 0) -> str:
    data = make_brain_like_dataset(tmp / "data", num_per_class, seed=seed)
    return prepare_class_folders(data_dir=str(data), output=str(tmp / "datalist.json"), near_duplicates=False)


@pytest.fixture(scope="module")
def demo_datalist(tmp_path_factory) -> str:
    return _datalist(tmp_path_factory.mktemp("brain_demo"), num_per_class=8)


def _parser(configs: list[str], **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser["bundle_root"] = str(BUNDLE)
    for key, value in overrides.items():
        parser[key] = value
    return parser


def _copy_test_images(datalist: str, folder: Path, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for item in load_datalist(datalist)["test"][:count]:
        names.append(Path(item["image"]).name)
        (folder / names[-1]).write_bytes(Path(item["image"]).read_bytes())
    return names


def _predictions(folder: Path, filename: str = "predictions.csv") -> dict[str, list[float]]:
    """A predictions CSV of ``ClassPredictionsSaver`` by image name: the class probabilities in label order.

    Checks the header (``image``, ``predicted_class``, ``p_<class>`` for the four classes) and that the
    predicted class is the most probable one.
    """
    with open(folder / filename, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames[:6] == ["image", "predicted_class", *(f"p_{c}" for c in CLASS_NAMES)], reader.fieldnames
        rows = list(reader)
    probs = {Path(row["image"]).name: [float(row[f"p_{c}"]) for c in CLASS_NAMES] for row in rows}
    for row in rows:
        p = probs[Path(row["image"]).name]
        assert row["predicted_class"] == CLASS_NAMES[p.index(max(p))], row
    return probs


@pytest.mark.parametrize("switch", [[], [VIT]], ids=["default", "vit"])
def test_converter_classes_metadata_and_inference_agree_with_train(demo_datalist, switch):
    """The converter's label order (sorted folders), metadata's channel_def and inference.json are train.json's."""
    train, infer = _parser(TRAIN + switch), _parser(INFER + switch)
    assert tuple(train.get_parsed_content("class_names")) == CLASS_NAMES and train.get_parsed_content("num_classes") == 4
    assert load_datalist(demo_datalist)["labels"] == {str(i): c for i, c in enumerate(CLASS_NAMES)}
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {str(i): c for i, c in enumerate(CLASS_NAMES)}
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 4
    for key in ("peft", "freeze_backbone", "pooling", "head_norm", "image_size", "patch_size", "num_classes", "class_names", "in_channels"):
        assert train.get_parsed_content(key) == infer.get_parsed_content(key), key
    resolved = [p.get_parsed_content("backbone", instantiate=False).get_config() for p in (train, infer)]
    assert resolved[0] == resolved[1]
    assert train["preprocessing"] == infer["preprocessing"]["transforms"]
    if not switch:  # metadata describes the default network's input
        assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == train.get_parsed_content("in_channels") == 3


@pytest.mark.parametrize("switch,channels", [([], 3), ([VIT], 1)], ids=["default", "vit"])
def test_grey_and_rgb_images_give_the_same_input(tmp_path, switch, channels):
    """The real set mixes RGB and grey JPEGs: both become the same [0, 1] image (grey, replicated to the
    network's channels)."""
    array = _brain_slice(np.random.default_rng(1), "glioma", 96)
    Image.fromarray(array).save(tmp_path / "grey.png")
    Image.fromarray(array).convert("RGB").save(tmp_path / "rgb.png")
    preprocessing = _parser(INFER + switch).get_parsed_content("preprocessing")
    grey, rgb = (preprocessing({"image": str(tmp_path / f"{n}.png")})["image"] for n in ("grey", "rgb"))
    assert grey.shape == rgb.shape == (channels, 64, 64)
    assert torch.allclose(grey, rgb, atol=1e-6) and 0.0 <= float(grey.min()) < float(grey.max()) <= 1.0
    assert all(torch.equal(grey[0], grey[c]) for c in range(channels))


@pytest.mark.parametrize(
    "configs,workflow_type",
    [(TPP, "train"), (TRAIN, "train"), (EVALUATE, "train"), (INFER, "infer"),
     (VIT_PRETRAIN, "train"), (VIT_TPP, "train"), (VIT_TRAIN, "train"), (VIT_EVALUATE, "train"), (VIT_INFER, "infer")],
)
def test_check_properties(configs, workflow_type, demo_datalist, tmp_path):
    images = tmp_path / "images"
    _copy_test_images(demo_datalist, images, 1)
    overrides = {"datalist": demo_datalist} if workflow_type == "train" else {"input_dir": str(images)}
    if configs in (TPP, TRAIN, VIT_TPP, VIT_TRAIN):
        # properties only: no weights, stage-0 or TPP file needed
        overrides.update(backbone_weights=None, init="standard", allow_random_backbone=True, reuse_decoder=False)
    if "evaluate.json" in configs:
        overrides.update(evaluation_ckpt_dir(tmp_path))
    assert not workflow(configs, workflow_type=workflow_type, bundle=BUNDLE, **overrides).check_properties()


def test_vit_every_stage_one_epoch_on_synthetic_data(demo_datalist, tmp_path):
    """The own ViT (``vit.json``): stage 0 -> TPP -> fine-tuning from TPP -> evaluation -> inference -> ckpt_export,
    one epoch each."""
    common = {"datalist": demo_datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1}
    run(VIT_PRETRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "pretrain"), **common)
    run(VIT_TPP, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "tpp"), **common)
    run(VIT_TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "train"), init="tpp", **common)
    run(VIT_EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), init="tpp", **common)
    names = _copy_test_images(demo_datalist, tmp_path / "images", 4)
    models = tmp_path / "models"
    model, target = _fine_tuned_files(VIT_TRAIN, "tpp", models)
    run(VIT_INFER, bundle=BUNDLE, workflow_type="infer", input_dir=str(tmp_path / "images"),
        output_dir=str(tmp_path / "pred"), ckpt_dir=str(models), model_file=str(model))

    for path in (models / "backbone.pt", models / "pretext_decoder.pt", models / "tpp_target_parameters.safetensors", model):
        assert path.is_file(), path
    assert read_manifest(models / "tpp_target_parameters.safetensors")["backbone"]["fingerprint"] == \
        read_manifest(target)["backbone"]["fingerprint"]
    report = json.loads((tmp_path / "eval" / "classification_report.json").read_text())
    assert set(report["per_class"]) == set(CLASS_NAMES) and report["num_samples"] == len(load_datalist(demo_datalist)["test"])
    # evaluation writes its own file beside the report; the confusion matrix counts every test image
    assert len(_predictions(tmp_path / "eval", "test_predictions.csv")) == report["num_samples"]
    assert sum(map(sum, report["confusion_matrix"]["counts"])) == report["num_samples"]
    assert report["confusion_matrix"]["class_names"] == list(CLASS_NAMES)
    # inference: one row per image, four class probabilities summing to 1
    predictions = _predictions(tmp_path / "pred")
    assert sorted(predictions) == sorted(names)
    assert all(len(p) == 4 and abs(sum(p) - 1) < 1e-4 for p in predictions.values())

    # the merged model loads strictly into inference.json's network_def; its TorchScript export gives the same outputs
    net = _parser(VIT_INFER).get_parsed_content("network_def")
    net.load_state_dict(torch.load(model, weights_only=True), strict=True)
    assert not any("lora" in k for k in net.state_dict())
    check_export(BUNDLE, VIT_INFER, model, [3, 1, 64, 64], atol=1e-5)
    with torch.no_grad():
        # and inference's probabilities are the softmax of that network on the preprocessed image, computed in the
        # bundle's precision ('auto': bf16 on a CPU with AVX-512 BF16, whose 8-bit mantissa the tolerance allows)
        parser = _parser(VIT_INFER)
        image = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "images" / names[0])})["image"]
        inferer = parser.get_parsed_content("inferer")
        expected = torch.softmax(inferer(image[None].float(), net.eval()), dim=1)[0]
        exact = torch.softmax(net(image[None].float()), dim=1)[0]
    bf16 = autocast_dtype(inferer.precision, "cpu") is not None
    assert torch.allclose(torch.tensor(predictions[names[0]]), expected, atol=1e-2 if bf16 else 1e-4)
    assert torch.allclose(expected, exact, atol=5e-2 if bf16 else 1e-6)  # measured 0.025 after one epoch


def _fine_tuned_files(configs: list[str], init: str, ckpt_dir: Path) -> tuple[Path, Path]:
    """The model and target-parameter files fine-tuning with ``init`` writes into ``ckpt_dir`` (``model.pt`` and
    ``target_parameters.safetensors`` for the bundle's ``default_init``, ``*_<init>`` otherwise)."""
    parser = _parser(configs, init=init, ckpt_dir=str(ckpt_dir))
    return ckpt_dir / parser.get_parsed_content("model_name"), Path(parser.get_parsed_content("target_parameters"))


@needs_weights
def test_default_runs_tpp_train_evaluate_and_inference(demo_datalist, tmp_path):
    """The default network, LiteMedSAM's TinyViT encoder (no stage 0): TPP (SimMIM) -> LoRA from TPP -> evaluation ->
    inference -> ckpt_export, 32 px."""
    common = {"datalist": demo_datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1, "tpp_epochs": 1, "image_size": 32}
    run(TPP, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "tpp"), **common)
    run(TRAIN, bundle=BUNDLE, output_dir=str(tmp_path / "logs" / "train"), init="tpp", **common)
    run(EVALUATE, bundle=BUNDLE, output_dir=str(tmp_path / "eval"), init="tpp", **common)
    names = _copy_test_images(demo_datalist, tmp_path / "images", 3)
    models = tmp_path / "models"
    model, target = _fine_tuned_files(TRAIN, "tpp", models)
    run(INFER, bundle=BUNDLE, workflow_type="infer", input_dir=str(tmp_path / "images"),
        output_dir=str(tmp_path / "pred"), ckpt_dir=str(models), image_size=32, model_file=str(model))

    manifest = read_manifest(models / "tpp_target_parameters.safetensors")
    assert manifest["backbone"]["class"] == "TinyViTClassifier" and manifest["config"]["target_modules"] == "attention_mlp"
    assert manifest["backbone"]["fingerprint"] == read_manifest(target)["backbone"]["fingerprint"]
    report = json.loads((tmp_path / "eval" / "classification_report.json").read_text())
    assert set(report["per_class"]) == set(CLASS_NAMES)
    predictions = _predictions(tmp_path / "pred")
    assert sorted(predictions) == sorted(names) and all(len(p) == 4 for p in predictions.values())
    net = _parser(INFER, image_size=32).get_parsed_content("network_def")
    net.load_state_dict(torch.load(model, weights_only=True), strict=True)
    assert net.state_dict()["patch_embed.conv1.conv.weight"].shape[1] == 3
    # the merged TinyViT exports to TorchScript too
    check_export(BUNDLE, INFER, model, [2, 3, 32, 32], atol=1e-5, image_size=32)


def _head_norm(network: torch.nn.Module) -> torch.nn.BatchNorm1d:
    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(norms) == 1 and norms[0].momentum is None, norms
    return norms[0]


def _vit_stages_and_report(tmp: Path, datalist: str, stage0: int, tpp: int, train: int, batch_size: int) -> dict:
    """The own ViT: stage 0, TPP, LoRA fine-tuning from TPP and evaluation; the test split's classification report."""
    common = {"datalist": datalist, "ckpt_dir": str(tmp / "models"), "train#dataloader#batch_size": batch_size}
    run(VIT_PRETRAIN, bundle=BUNDLE, output_dir=str(tmp / "logs" / "pretrain"), num_epochs=stage0, **common)
    run(VIT_TPP, bundle=BUNDLE, output_dir=str(tmp / "logs" / "tpp"), tpp_epochs=tpp, **common)
    common["init"] = "tpp"  # the own ViT's default_init, given as the stage's meaning
    wf = run(VIT_TRAIN, bundle=BUNDLE, output_dir=str(tmp / "logs" / "train"), num_epochs=train, **common)
    # the head norm's statistics are the last epoch's (HeadNormStatistics), not a cumulative
    # average over every epoch of a changing LoRA network
    steps = len(wf.parser.get_parsed_content("train#dataloader"))
    assert int(_head_norm(wf.parser.get_parsed_content("network")).num_batches_tracked) == steps
    run(VIT_EVALUATE, bundle=BUNDLE, output_dir=str(tmp / "eval"), **common)
    return json.loads((tmp / "eval" / "classification_report.json").read_text())


def _real_subsample(tmp: Path) -> str:
    """The converter on the real folder, then a stratified subsample of its split (400 / 60 / 200 images)."""
    folder = require_data("brain_tumor_mri") / "Training"
    full = load_datalist(prepare_class_folders(data_dir=str(folder), output=str(tmp / "full.json")))
    assert full["labels"] == {str(i): c for i, c in enumerate(CLASS_NAMES)}
    per_class = {"training": 100, "validation": 15, "test": 50}
    small = {**full, **{s: [d for c in range(4) for d in [x for x in full[s] if x["label"] == c][:n]] for s, n in per_class.items()}}
    return str(write_datalist(small, tmp / "small.json"))


@pytest.mark.slow
def test_gate_vit_lora_from_tpp_beats_trivial_on_synthetic_data(tmp_path):
    """Own ViT: stage 0 (10 epochs), TPP (2) and LoRA from TPP (15) on 4x60 synthetic images, batch 16; the test split
    (n=48)."""
    report = _vit_stages_and_report(tmp_path, _datalist(tmp_path, num_per_class=60), stage0=10, tpp=2, train=15, batch_size=16)
    print(f"synthetic own ViT, LoRA from TPP: balanced accuracy {report['balanced_accuracy']:.3f}, macro AUC {report['macro_auc']:.3f}")
    assert report["num_samples"] == 48
    assert report["balanced_accuracy"] >= 1 / 4 + SYNTHETIC_MARGIN, (report["balanced_accuracy"], report["per_class"])


@pytest.mark.slow
def test_gate_vit_lora_beats_trivial_on_real_brain_mri(tmp_path):
    """Own ViT on the real subsample: stage 0 (8 epochs), TPP (2), LoRA from TPP (6), batch 16, 64 px; balanced
    accuracy on the 200 test images."""
    report = _vit_stages_and_report(tmp_path, _real_subsample(tmp_path), stage0=8, tpp=2, train=6, batch_size=16)
    print(f"real brain MRI subsample, own ViT, LoRA from TPP: balanced accuracy {report['balanced_accuracy']:.3f}, "
          f"macro AUC {report['macro_auc']:.3f}, majority rate {report['majority_rate']:.3f}")
    assert report["num_samples"] == 200
    assert report["balanced_accuracy"] >= 1 / 4 + REAL_MARGIN, (report["balanced_accuracy"], report["per_class"])


@needs_weights
@pytest.mark.slow
def test_gate_default_lora_beats_trivial_on_synthetic_data(tmp_path):
    """The default network (LiteMedSAM), LoRA from its standard start, 6 epochs at 32 px on 4x60 synthetic images,
    batch 16; the test split (n=48)."""
    datalist = _datalist(tmp_path, num_per_class=60)
    report = train_and_evaluate(tmp_path, datalist, "lora", 6, TRAIN, EVALUATE, bundle=BUNDLE, image_size=32,
                                **{"train#dataloader#batch_size": 16})
    print(f"synthetic LiteMedSAM LoRA: balanced accuracy {report['balanced_accuracy']:.3f}, macro AUC {report['macro_auc']:.3f}")
    assert report["num_samples"] == 48
    assert report["balanced_accuracy"] >= 1 / 4 + DEFAULT_SYNTHETIC_MARGIN, (report["balanced_accuracy"], report["per_class"])


@needs_weights
@pytest.mark.slow
def test_gate_default_lora_beats_trivial_on_real_brain_mri(tmp_path):
    """The default network (LiteMedSAM) on the real subsample: LoRA from its standard start, 2 epochs, batch 16,
    64 px; balanced accuracy on the 200 test images."""
    report = train_and_evaluate(tmp_path, _real_subsample(tmp_path), "lora", 2, TRAIN, EVALUATE, bundle=BUNDLE,
                                **{"train#dataloader#batch_size": 16})
    print(f"real brain MRI subsample, LiteMedSAM LoRA: balanced accuracy {report['balanced_accuracy']:.3f}, "
          f"macro AUC {report['macro_auc']:.3f}, majority rate {report['majority_rate']:.3f}")
    assert report["num_samples"] == 200
    assert report["balanced_accuracy"] >= 1 / 4 + DEFAULT_REAL_MARGIN, (report["balanced_accuracy"], report["per_class"])
