"""The bad-input catalogue (docs/bad_input.md): every kind of bad input stops a bundle stage or a converter with
an error whose first line names the file, key or value and what was expected, and leaves what was written before
byte-identical. Subprocess tests check what a user of ``python -m monai.bundle run`` sees; the rest run in-process."""

from __future__ import annotations

import errno
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel
import numpy as np
import pytest
import torch
from PIL import Image

from bundle_utils import EVALUATE, TRAIN, VIT_EVALUATE, VIT_INFERENCE, VIT_TPP, VIT_TRAIN, workflow
from conftest import ROOT
from tools.bundle_command import bundle_command
from tools.make_demo_data import make_demo_dataset
from tools.prepare_busi import main as prepare_busi
from tpp_components.bundle_checks import (ConfigOverrideError, InputFileError, OutputFolderError, check_cli_overrides,
                                          culprit)
from tpp_components.data import DatalistError, load_datalist
from tpp_components.networks.weights import WeightsError
from tpp_components.peft import TargetParameterError

BUNDLES = ROOT / "bundles"
CLS, SEG2D, LUNG, SPLEEN, BRAIN = (BUNDLES / n for n in ("breast_us_classification", "breast_us_segmentation",
                                                         "lung_ct_segmentation", "spleen_ct_segmentation",
                                                         "brain_mri_segmentation"))
#: the breast-ultrasound classifier's stages with its own small ViT (``vit.json``): fast, and no weights wheel
CLS_TRAIN, CLS_TPP, CLS_EVALUATE, CLS_INFERENCE = VIT_TRAIN, VIT_TPP, VIT_EVALUATE, VIT_INFERENCE
SENTINEL = b"a model written by an earlier run"


# ---------------------------------------------------------------- helpers

@pytest.fixture
def written(tmp_path) -> Path:
    """A ckpt_dir holding the models of earlier runs (the default init's and the standard init's); the test checks
    they are untouched."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("model.pt", "model_standard.pt"):
        (models / name).write_bytes(SENTINEL)
    yield models
    for name in ("model.pt", "model_standard.pt"):
        assert (models / name).read_bytes() == SENTINEL, f"bad input damaged a previously written file: {name}"


def refused(bundle: Path, configs: list[str], error: type, names: list[str], written: Path, workflow_type="train",
            **overrides) -> str:
    """Build the stage (``initialize``) and return the first line of the error, after checking its type and names."""
    with pytest.raises(Exception) as info:
        workflow(configs, workflow_type=workflow_type, bundle=bundle, ckpt_dir=str(written),
                 **{"output_dir": str(written.parent / "logs"), **overrides})
    cause = culprit(info.value)
    first = str(cause).splitlines()[0]
    assert isinstance(cause, error), f"{type(cause).__name__}: {cause}"
    for name in names:
        assert str(name) in first, f"{name!r} not in the first line: {first}"
    return first


def save_datalist(path: Path, training: list, validation: list | None = None, test: list | None = None) -> str:
    data = {"training": training, "validation": training[:1] if validation is None else validation, "test": test or training[:1]}
    path.write_text(json.dumps(data, indent=4))
    return str(path)


def png(path: Path, size=(32, 32), mode="L", value=None) -> str:
    rng = np.random.default_rng(len(str(path)))
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], len(mode))
    array = rng.integers(0, 255, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return str(path)


def truncate(path: str | Path, keep: float = 0.5) -> str:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return str(path)


def nifti(path: Path, array: np.ndarray, spacing=(2.0, 2.0, 2.0)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(array, np.diag([*spacing, 1.0])), str(path))
    return str(path)


def volume_pair(root: Path, name: str, label_shape=(16, 16, 16), label_spacing=(2.0, 2.0, 2.0), image=None, label=None):
    image = np.random.default_rng(0).normal(0, 1, (16, 16, 16)).astype(np.float32) if image is None else image
    label = np.zeros(label_shape, np.uint8) if label is None else label
    return {"image": nifti(root / f"{name}_ct.nii.gz", image), "label": nifti(root / f"{name}_seg.nii.gz", label, label_spacing)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> str:
    """A valid breast-ultrasound classification datalist (the good-input baseline)."""
    tmp = tmp_path_factory.mktemp("bad_input_demo")
    data = make_demo_dataset(tmp / "data", num_per_class=4, image_size=64, seed=0)
    return prepare_busi(data_dir=str(data), output=str(tmp / "datalist.json"), seed=0, val_fraction=0.25, test_fraction=0.25)


def bundle_cli(bundle: Path, configs: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [*bundle_command(bundle, configs, relative=True), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)


def first_error_line(result: subprocess.CompletedProcess) -> str:
    """The line printed right before the traceback: what a user reads first."""
    lines = result.stderr.splitlines()
    return lines[lines.index("Traceback (most recent call last):") - 1]


# ---------------------------------------------------------------- what a user of monai.bundle run sees

def test_cli_missing_file_names_it_first(demo, tmp_path, written):
    datalist = load_datalist(demo)
    missing = str(tmp_path / "gone.png")
    datalist["training"][0]["image"] = missing
    path = save_datalist(tmp_path / "dl.json", datalist["training"], datalist["validation"])
    result = bundle_cli(CLS, CLS_TRAIN, "--datalist", path, "--ckpt_dir", str(written), "--output_dir", str(tmp_path / "logs"))
    assert result.returncode != 0
    first = first_error_line(result)
    assert first.startswith("ERROR: DatalistError:") and missing in first and "training[0] 'image'" in first, first


def test_cli_malformed_datalist_json_names_the_file(tmp_path, written):
    path = tmp_path / "broken.json"
    path.write_text('{"training": [{"image": "a.png", "label": 0},]}')
    result = bundle_cli(CLS, CLS_TRAIN, "--datalist", str(path), "--ckpt_dir", str(written), "--output_dir", str(tmp_path / "logs"))
    first = first_error_line(result)
    assert result.returncode != 0 and str(path) in first and "not valid JSON" in first and "line 1" in first, first


def test_cli_unknown_override_id_is_refused_with_the_closest_ids(demo, tmp_path, written):
    result = bundle_cli(CLS, CLS_TRAIN, "--datalist", demo, "--num_epoch", "3", "--ckpt_dir", str(written))
    first = first_error_line(result)
    assert result.returncode != 0 and "'--num_epoch'" in first and "'num_epochs'" in first, first
    assert not (Path(written) / "backbone.pt").exists()


def test_cli_inference_on_an_empty_folder_exits_non_zero(tmp_path, written):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = bundle_cli(CLS, CLS_INFERENCE, "--input_dir", str(empty), "--output_dir", str(tmp_path / "pred"),
                        "--ckpt_dir", str(written))
    first = first_error_line(result)
    assert result.returncode != 0 and str(empty) in first and ".png" in first, first
    assert not (tmp_path / "pred").exists() or not any((tmp_path / "pred").iterdir())


def test_override_check_keeps_run_arguments_and_nested_ids(tmp_path):
    """``run``'s own arguments and nested ids pass; an unknown nested id is refused; outside monai.bundle nothing is checked."""
    main = str(Path(__import__("monai").__file__).parent / "bundle" / "__main__.py")
    files = str([str(CLS / "configs" / "train.json"), str(CLS / "configs" / "tpp.json")])
    ok = [main, "run", "--config_file", files, "--meta_file", "m.json", "--logging_file=l.conf", "--bundle_root", ".",
          "--train#trainer#max_epochs", "2", "--peft::r", "4", "--train#dataloader#batch_size", "4", "--run_id", "run",
          "--tpp_epochs=1", "--workflow_type", "train"]
    hook = sys.excepthook
    try:
        check_cli_overrides(ok)
        with pytest.raises(ConfigOverrideError, match=r"'--train#trainer#max_epoch'.*'train#trainer#max_epochs'"):
            check_cli_overrides([main, "run", "--config_file", files, "--train#trainer#max_epoch", "2"])
    finally:
        sys.excepthook = hook
    check_cli_overrides(["pytest", "run", "--config_file", files, "--nonexistent_key", "3"])  # not a bundle run


# ---------------------------------------------------------------- corrupt and truncated files

@pytest.mark.parametrize("kind", ["corrupt_png", "truncated_png", "truncated_jpeg"])
def test_corrupt_or_truncated_2d_image(kind, demo, tmp_path, written):
    datalist = load_datalist(demo)
    source = datalist["training"][1]["image"]
    if kind == "corrupt_png":
        bad = tmp_path / "corrupt.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    elif kind == "truncated_png":
        bad = Path(truncate(shutil.copy(source, tmp_path / "cut.png")))
    else:
        bad = tmp_path / "cut.jpg"
        Image.open(source).convert("L").save(bad, quality=95)
        truncate(bad)
    datalist["training"][1]["image"] = str(bad)
    path = save_datalist(tmp_path / "dl.json", datalist["training"], datalist["validation"])
    first = refused(CLS, CLS_TRAIN, DatalistError, [path, "training[1] 'image'", str(bad), "cannot be decoded"], written, datalist=path)
    assert "expected a complete, readable image" in first


@pytest.mark.parametrize("kind", ["truncated", "not_nifti"])
def test_corrupt_or_truncated_nifti(kind, tmp_path, written):
    pairs = [volume_pair(tmp_path, f"case{i}") for i in range(2)]
    bad = pairs[1]["image"]
    truncate(bad) if kind == "truncated" else Path(bad).write_bytes(b"not a NIfTI volume" * 20)
    path = save_datalist(tmp_path / "dl.json", pairs, pairs[:1])
    refused(SPLEEN, TRAIN, DatalistError, ["training[1] 'image'", bad, "cannot be decoded"], written, datalist=path)


def test_truncated_npy_patch(tmp_path, written):
    entries = []
    for i in range(2):
        np.save(tmp_path / f"p{i}_image.npy", np.zeros((32, 32), np.float32))
        np.save(tmp_path / f"p{i}_label.npy", np.zeros((32, 32), np.uint8))
        entries.append({"image": str(tmp_path / f"p{i}_image.npy"), "label": str(tmp_path / f"p{i}_label.npy")})
    truncate(entries[0]["label"], 0.8)
    path = save_datalist(tmp_path / "dl.json", entries)
    refused(LUNG, TRAIN, DatalistError, ["training[0] 'label'", entries[0]["label"], "cannot be decoded"], written, datalist=path)


# ---------------------------------------------------------------- datalists

def test_datalist_entry_whose_file_is_missing(demo, tmp_path, written):
    datalist = load_datalist(demo)
    datalist["validation"][0]["image"] = str(tmp_path / "nowhere" / "x.png")
    path = save_datalist(tmp_path / "dl.json", datalist["training"], datalist["validation"])
    refused(CLS, CLS_TRAIN, DatalistError, ["validation[0] 'image'", "nowhere/x.png", "file not found"], written, datalist=path)


def test_missing_datalist_file(tmp_path, written):
    path = tmp_path / "no_such_datalist.json"
    refused(CLS, CLS_TRAIN, DatalistError, [str(path), "not found"], written, datalist=str(path))


def test_malformed_datalist_json(tmp_path, written):
    path = tmp_path / "broken.json"
    path.write_text('{"training": [')
    refused(CLS, CLS_TRAIN, DatalistError, [str(path), "not valid JSON"], written, datalist=str(path))


@pytest.mark.parametrize("split", ["training", "validation"])
def test_empty_dataset(split, demo, tmp_path, written):
    datalist = load_datalist(demo)
    datalist[split] = []
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(datalist))
    refused(CLS, CLS_TRAIN, DatalistError, [str(path), f"split '{split}' is empty", "expected a non-empty list"], written,
            datalist=str(path))


def test_evaluate_needs_a_test_split(demo, tmp_path, written):
    datalist = load_datalist(demo)
    del datalist["test"]
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(datalist))
    refused(CLS, CLS_EVALUATE, DatalistError, [str(path), "split 'test' is missing"], written, datalist=str(path))


@pytest.mark.parametrize("label", [3, -1, "benign", None])
def test_class_label_outside_the_classes(label, demo, tmp_path, written):
    datalist = load_datalist(demo)
    datalist["training"][2]["label"] = label
    path = save_datalist(tmp_path / "dl.json", datalist["training"], datalist["validation"])
    refused(CLS, CLS_TRAIN, DatalistError, ["training[2] 'label'", repr(label), "expected an integer in 0..2"], written, datalist=path)


def test_unlabelled_pool_is_fine_for_tpp_but_not_for_fine_tuning(demo, tmp_path, written):
    datalist = load_datalist(demo)
    pool = [{"image": e["image"]} for e in datalist["training"]]
    path = save_datalist(tmp_path / "pool.json", pool, [{"image": e["image"]} for e in datalist["validation"]])
    tpp = dict(backbone_weights=None, allow_random_backbone=True, reuse_decoder=False)
    workflow(CLS_TPP, bundle=CLS, datalist=path, ckpt_dir=str(written), output_dir=str(tmp_path / "tpp"), **tpp)
    refused(CLS, CLS_TRAIN, DatalistError, ["training[0]", "no 'label' key"], written, datalist=path)


# ---------------------------------------------------------------- image / label pairs

def test_2d_image_and_mask_of_different_shape(tmp_path, written):
    entries = [{"image": png(tmp_path / f"{i}.png"), "label": png(tmp_path / f"{i}_mask.png", value=0)} for i in range(2)]
    entries[1]["label"] = png(tmp_path / "1_mask.png", size=(32, 24), value=255)
    path = save_datalist(tmp_path / "dl.json", entries)
    refused(SEG2D, TRAIN, DatalistError, ["training[1] 'label'", entries[1]["label"], "(24, 32)", "(32, 32)", "expected the same shape"],
            written, datalist=path)


@pytest.mark.parametrize("what", ["shape", "spacing"])
def test_3d_image_and_label_of_different_shape_or_spacing(what, tmp_path, written):
    pair = volume_pair(tmp_path, "a", **({"label_shape": (16, 16, 12)} if what == "shape" else {"label_spacing": (1.0, 2.0, 2.0)}))
    path = save_datalist(tmp_path / "dl.json", [volume_pair(tmp_path, "b"), pair])
    expected = "(16, 16, 12)" if what == "shape" else "(1.0, 2.0, 2.0)"
    refused(SPLEEN, TRAIN, DatalistError, ["training[1] 'label'", pair["label"], expected], written, datalist=path)


def test_wrong_number_of_channel_files(tmp_path, written):
    pairs = [volume_pair(tmp_path, f"p{i}") for i in range(2)]
    entries = [{"image": [p["image"], p["image"]], "label": p["label"]} for p in pairs]
    entries[1]["image"] = [pairs[1]["image"]]  # FLAIR only, T1c missing
    path = save_datalist(tmp_path / "dl.json", entries)
    refused(BRAIN, TRAIN, DatalistError, ["training[1] 'image'", "1 channel file(s)", "expected 2 (in_channels)"], written,
            datalist=path)


@pytest.mark.parametrize("where", ["rgba_png", "4d_volume"])
def test_wrong_channel_count_in_one_file(where, demo, tmp_path, written):
    if where == "rgba_png":
        datalist = load_datalist(demo)
        bad = datalist["training"][0]["image"] = png(tmp_path / "rgba.png", mode="RGBA")
        path = save_datalist(tmp_path / "dl.json", datalist["training"], datalist["validation"])
        refused(CLS, CLS_TRAIN, DatalistError, [bad, "(32, 32, 4)", "1 (grey) or 3 (RGB) channels"], written, datalist=path)
    else:
        pair = volume_pair(tmp_path, "x")
        bad = pair["image"] = nifti(tmp_path / "x4d.nii.gz", np.zeros((16, 16, 16, 3), np.float32))
        path = save_datalist(tmp_path / "dl.json", [pair])
        refused(SPLEEN, TRAIN, DatalistError, [bad, "(16, 16, 16, 3)", "expected a 3D volume with 1 channel(s)"], written,
                datalist=path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_intensities(value, tmp_path, written):
    image = np.random.default_rng(0).normal(0, 1, (16, 16, 16)).astype(np.float32)
    image[3, 4, 5] = value
    pairs = [volume_pair(tmp_path, "ok"), volume_pair(tmp_path, "bad", image=image)]
    path = save_datalist(tmp_path / "dl.json", pairs)
    refused(SPLEEN, TRAIN, DatalistError, ["training[1] 'image'", pairs[1]["image"], "1 NaN/inf value(s)", "expected finite"],
            written, datalist=path)


def test_nan_in_a_2d_patch(tmp_path, written):
    image = np.zeros((32, 32), np.float32)
    image[0, 0] = np.nan
    np.save(tmp_path / "p_image.npy", image)
    np.save(tmp_path / "p_label.npy", np.zeros((32, 32), np.uint8))
    entry = {"image": str(tmp_path / "p_image.npy"), "label": str(tmp_path / "p_label.npy")}
    path = save_datalist(tmp_path / "dl.json", [entry])
    refused(LUNG, TRAIN, DatalistError, [entry["image"], "NaN/inf"], written, datalist=path)


@pytest.mark.parametrize("bundle,values,expected", [(LUNG, [0, 1, 3], "[3]"), (SEG2D, [0, 128], "[128]"),
                                                    (SPLEEN, [0, -1], "[-1]"), (SPLEEN, [0, 0.5], "[0.5]")])
def test_segmentation_label_values_outside_the_classes(bundle, values, expected, tmp_path, written):
    if bundle == SPLEEN:
        label = np.zeros((16, 16, 16), np.float32)
        label[:2] = values[1]
        pair = volume_pair(tmp_path, "v", label=label)
    elif bundle == LUNG:
        label = np.array(values * 12 * 32, np.int16)[: 32 * 32].reshape(32, 32)
        np.save(tmp_path / "l_image.npy", np.zeros((32, 32), np.float32))
        np.save(tmp_path / "l_label.npy", label)
        pair = {"image": str(tmp_path / "l_image.npy"), "label": str(tmp_path / "l_label.npy")}
    else:
        pair = {"image": png(tmp_path / "i.png"), "label": png(tmp_path / "i_mask.png", value=values[1])}
    path = save_datalist(tmp_path / "dl.json", [pair])
    refused(bundle, TRAIN, DatalistError, ["training[0] 'label'", pair["label"], expected, "outside the classes"], written,
            datalist=path)


# ---------------------------------------------------------------- checkpoints an earlier stage writes

@pytest.mark.parametrize("bundle", [CLS, BUNDLES / "brain_mri_classification", SEG2D, LUNG, SPLEEN, BRAIN], ids=lambda b: b.name)
def test_evaluation_without_model_pt_names_ckpt_dir_before_reading_data(bundle, demo, tmp_path):
    """Evaluation of a ckpt_dir without ``model.pt`` stops before any image is read or cached (a test image is
    missing too, and the model is what the error names), and says where the file comes from."""
    datalist = load_datalist(demo)
    datalist["test"][0]["image"] = str(tmp_path / "gone.png")
    path = save_datalist(tmp_path / "dl.json", datalist["training"], datalist["validation"], datalist["test"])
    models = tmp_path / "runs" / "models"
    with pytest.raises(Exception) as info:
        workflow(EVALUATE, bundle=bundle, datalist=path, ckpt_dir=str(models), output_dir=str(tmp_path / "eval"))
    cause = culprit(info.value)
    first = str(cause).splitlines()[0]
    assert isinstance(cause, InputFileError), f"{type(cause).__name__}: {cause}"
    assert f"model_file: '{models / 'model.pt'}' not found" in first and "--ckpt_dir" in first, first


# ---------------------------------------------------------------- weights and target parameters

def _tiny_good_run(demo: str, **extra) -> dict:
    """Overrides that build the fine-tuning stage on a random frozen backbone (no stage 0 needed)."""
    return {"datalist": demo, "backbone_weights": None, "allow_random_backbone": True, **extra}


def test_backbone_checkpoint_of_another_architecture(demo, tmp_path, written):
    from tpp_components.networks import ViTClassifier

    other = ViTClassifier(in_channels=1, img_size=(64, 64), patch_size=16, hidden_size=96, mlp_dim=192, num_layers=2,
                          num_heads=3, spatial_dims=2, num_classes=3)
    path = tmp_path / "other_backbone.pt"
    torch.save(other.state_dict(), path)
    refused(CLS, CLS_TRAIN, WeightsError, [str(path), "do not fit ViTClassifier", "missing"], written,
            **_tiny_good_run(demo, backbone_weights=str(path), allow_random_backbone=False, init="standard"))


def _saved_target_parameters(demo: str, tmp: Path, name: str, **overrides) -> str:
    from tpp_components.peft import save_target_parameters

    wf = workflow(CLS_TRAIN, bundle=CLS, init="standard", ckpt_dir=str(tmp / name), output_dir=str(tmp / name / "logs"),
                  **_tiny_good_run(demo, **overrides))
    path = tmp / f"{name}.safetensors"
    save_target_parameters(wf.parser.get_parsed_content("network_def"), path, wf.parser.get_parsed_content("head_modules"))
    return str(path)


@pytest.mark.parametrize("other,expected", [
    ({"peft": {"method": "adapter", "bottleneck": 8}}, "are for method 'adapter', the network uses 'lora'"),
    ({"peft": {"method": "lora", "r": 4, "alpha": 16, "target_modules": "attention"}}, "r: saved 4 vs network 8"),
    ({"seed": 1}, "trained on a different backbone"),
    ({"backbone#spatial_dims": 3, "backbone#img_size": [16, 16, 16]}, "trained on a different backbone"),
], ids=["method", "rank", "backbone", "spatial_dims"])
def test_target_parameters_of_another_method_rank_backbone_or_dims(other, expected, demo, tmp_path, written):
    path = _saved_target_parameters(demo, tmp_path, "other", **other)
    before = Path(path).read_bytes()
    refused(CLS, CLS_TRAIN, TargetParameterError, [path, expected], written,
            **_tiny_good_run(demo, init="tpp", tpp_target_parameters=path))
    assert Path(path).read_bytes() == before


# ---------------------------------------------------------------- output folders

def _make_read_only(folder: Path) -> bool:
    """Make ``folder`` unwritable even for root (the immutable attribute); False when this system cannot."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return True
    return subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0


def test_read_only_output_folder(demo, tmp_path, written):
    folder = tmp_path / "read_only"
    folder.mkdir()
    if not _make_read_only(folder):
        pytest.skip("cannot make a folder read-only here (root without chattr +i)")
    try:
        first = refused(CLS, CLS_TRAIN, OutputFolderError, ["output_dir", str(folder / "logs"), "not writable"], written,
                        **_tiny_good_run(demo, output_dir=str(folder / "logs")))
        assert "expected a folder this user can create files in" in first
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def test_full_disk_while_saving_target_parameters(demo, tmp_path, written, monkeypatch):
    """A full disk (ENOSPC, simulated in the safetensors writer) names the file; the previous TPP file (tensors and
    manifest in one) stays whole."""
    from bundle_utils import run

    tpp = _tiny_good_run(demo, reuse_decoder=False, tpp_epochs=1, ckpt_dir=str(written))
    run(CLS_TPP, bundle=CLS, output_dir=str(tmp_path / "tpp1"), **tpp)
    target = written / "tpp_target_parameters.safetensors"
    before = target.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # the package exports a function of the module's name: patch the module object itself
    monkeypatch.setattr(importlib.import_module("tpp_components.peft.target_parameters"), "save_file", full_disk)
    with pytest.raises(Exception) as info:
        run(CLS_TPP, bundle=CLS, output_dir=str(tmp_path / "tpp2"), **tpp)
    cause = culprit(info.value)
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC and str(target) in str(cause), repr(cause)
    assert target.read_bytes() == before
    assert not [p for p in written.iterdir() if p.name.endswith(".tmp")], "a temporary file was left behind"


# ---------------------------------------------------------------- converters (tools/prepare_*.py)

def _converter(tool: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, f"tools/{tool}.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_converter_empty_class_folder(tmp_path):
    for name in ("benign", "malignant"):
        png(tmp_path / "data" / name / "a.png")
    (tmp_path / "data" / "normal").mkdir()
    out = tmp_path / "out.json"
    result = _converter("prepare_busi", "--data_dir", str(tmp_path / "data"), "--output", str(out))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and str(tmp_path / "data" / "normal") in last and "holds no image" in last, last
    assert not out.exists()


def test_converter_truncated_png(tmp_path):
    for name in ("normal", "benign", "malignant"):
        for i in range(3):
            png(tmp_path / "data" / name / f"{i}.png")
    bad = truncate(tmp_path / "data" / "benign" / "1.png")
    out = tmp_path / "out.json"
    out.write_text("an earlier datalist")
    result = _converter("prepare_busi", "--data_dir", str(tmp_path / "data"), "--output", str(out))
    assert result.returncode != 0 and bad in result.stderr and "unreadable image" in result.stderr, result.stderr[-2000:]
    assert out.read_text() == "an earlier datalist"


def test_converter_corrupt_hdf5(tmp_path):
    path = tmp_path / "patches.h5"
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = np.zeros((10, 1, 16, 16), np.float32), np.zeros((10, 1, 16, 16), np.uint8)
    truncate(path, 0.3)
    result = _converter("prepare_hdf5_patches", "--h5", str(path), "--group_size", "2", "--output", str(tmp_path / "o.json"))
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode != 0 and str(path) in last and "cannot open HDF5 file" in last, last
    assert not (tmp_path / "o.json").exists()


def test_converter_truncated_nifti(tmp_path):
    pairs = [volume_pair(tmp_path / "v", f"c{i}") for i in range(3)]
    for folder in ("images", "labels"):
        (tmp_path / folder).mkdir()
    for i, pair in enumerate(pairs):
        label = np.zeros((16, 16, 16), np.uint8)
        label[4:8, 4:8, 4:8] = 1
        shutil.copy(pair["image"], tmp_path / "images" / f"c{i}.nii.gz")
        nifti(tmp_path / "labels" / f"c{i}.nii.gz", label)
    bad = truncate(tmp_path / "images" / "c1.nii.gz")
    result = _converter("prepare_nifti_pairs", "--images_dir", str(tmp_path / "images"), "--labels_dir",
                        str(tmp_path / "labels"), "--output", str(tmp_path / "o.json"))
    assert result.returncode != 0 and bad in result.stderr and "cannot be decoded" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "o.json").exists()
