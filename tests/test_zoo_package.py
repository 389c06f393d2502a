"""tools/package_bundle.py: a tiny trained bundle becomes a model-zoo zip that passes, with this repository off the
path, the checks the zoo's ``ci/verify_bundle.py`` runs offline, and infers like the source bundle."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bundle_utils import run
from conftest import ROOT, SCHEMA
from tools.make_demo_data import make_demo_dataset
from tools.package_bundle import PackagingError, main as package
from tools.prepare_image_mask_pairs import main as prepare_pairs
from tools.zoo.large_files import LargeFilesError
from tools.zoo.metadata import MetadataError

BUNDLE = ROOT / "bundles" / "breast_us_segmentation"
NAME = BUNDLE.name
VERSION = "0.1.1"

#: Runs ``python -m <module> <args>`` with this repository unreachable: repository paths leave ``sys.path`` and
#: every import finder that would find ``tpp_components`` elsewhere (the editable install's ``_EditableFinder``)
#: leaves ``sys.meta_path``; the working directory (the unzipped bundle) comes first, as with ``python -m``.
#: It prints where ``tpp_components`` was imported from, for the test to check.
ISOLATE = r"""
import importlib.machinery, importlib.util, os, runpy, sys
repo, module = os.path.realpath(sys.argv[1]), sys.argv[2]
def inside(p):
    p = os.path.realpath(p)
    return p == repo or p.startswith(repo + os.sep)
sys.path[:] = [os.getcwd()] + [p for p in sys.path if p and not inside(p)]
sys.meta_path[:] = [f for f in sys.meta_path if f is importlib.machinery.PathFinder or not (
    "editable" in getattr(f, "__module__", "") or (hasattr(f, "find_spec") and f.find_spec("tpp_components", None)))]
sys.path_importer_cache.clear()
spec = importlib.util.find_spec("tpp_components")
if spec is None or inside(spec.origin) or not spec.origin.startswith(os.getcwd() + os.sep):
    sys.exit(f"tpp_components is not importable from the bundle only: {spec}")
sys.argv = [module] + sys.argv[3:]
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
finally:
    m = sys.modules.get("tpp_components")
    print("TPP_COMPONENTS_FROM", m.__file__ if m else None, flush=True)
"""


def isolated(bundle: Path, module: str, *args: str) -> str:
    """Run ``module`` in a subprocess from ``bundle`` with the repository off the path; return its output.

    PYTHONPATH deliberately names the repository (as an editable install would make it importable): the bootstrap
    must remove it. One thread, as the tests share the cores.
    """
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", ISOLATE, str(ROOT), module, *args], cwd=bundle, env=env,
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{module} {args} failed in '{bundle}':\n{out[-4000:]}"
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One fine-tuning epoch of breast_us_segmentation on synthetic images (random backbone: no weights wheel)."""
    tmp = tmp_path_factory.mktemp("zoo_train")
    data = make_demo_dataset(tmp / "data", num_per_class=4, image_size=64, seed=0, masks=True)
    datalist = prepare_pairs(str(data), str(tmp / "datalist.json"), near_duplicates=False)
    run(["train.json"], bundle=BUNDLE, datalist=datalist, ckpt_dir=str(tmp / "models"), output_dir=str(tmp / "logs"),
        num_epochs=1, default_init="standard", init="standard", backbone_weights=None, allow_random_backbone=True)
    images = tmp / "images"
    images.mkdir()
    first = sorted((data / "benign").glob("benign (*).png"))[0]
    Image.open(first).convert("RGB").resize((90, 70)).save(images / "odd size.png")
    Image.open(first).save(images / "square.png")
    return {"ckpt_dir": tmp / "models", "images": images}


@pytest.fixture(scope="module")
def unzipped(trained, tmp_path_factory) -> Path:
    """The package, unzipped into an empty folder."""
    tmp = tmp_path_factory.mktemp("zoo_pkg")
    zip_path = Path(package(str(BUNDLE), output=str(tmp / f"{NAME}_v{VERSION}.zip"), version=VERSION,
                            changelog="model-zoo package", ckpt_dir=str(trained["ckpt_dir"]), target_parameters=True))
    assert zip_path.is_file() and not list(tmp.glob(".*.tmp"))
    dest = tmp / "unzipped"
    dest.mkdir()
    with zipfile.ZipFile(zip_path) as zf:
        assert {n.split("/")[0] for n in zf.namelist()} == {NAME}  # one bundle folder, as the zoo's zips
        zf.extractall(dest)
    return dest / NAME


def test_package_layout_metadata_and_vendored_code(unzipped):
    # the zoo's necessary and preferred files (an exact LICENSE), and model.ts
    for rel in ("LICENSE", "configs/metadata.json", "configs/inference.json", "models/model.pt", "models/model.ts",
                "models/target_parameters.safetensors"):
        assert (unzipped / rel).is_file(), rel
    assert (unzipped / "LICENSE").read_bytes() == (BUNDLE / "LICENSE").read_bytes()
    assert not (unzipped / "large_files.yml").exists()  # the tiny model is under 25 MB
    # every JSON file as the zoo formats it
    for path in (unzipped / "configs").glob("*.json"):
        assert path.read_text() == json.dumps(json.loads(path.read_text()), indent=4) + "\n", path.name
    # version and changelog updated in the package, not in the source
    meta = json.loads((unzipped / "configs" / "metadata.json").read_text())
    source = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["version"] == VERSION and meta["changelog"][VERSION] == "model-zoo package"
    assert meta["changelog"] == {VERSION: "model-zoo package", **source["changelog"]}
    assert source["version"] != VERSION
    assert meta["supported_apps"] == source["supported_apps"] == {}  # off unless verified (--supported_apps)
    # vendored code: not a requirement any more; what it imports is pinned at the installed versions
    required = meta["required_packages_version"]
    assert "tpp-components" not in required and "tpp-components" in source["required_packages_version"]
    for dist in ("safetensors", "peft", "pytorch-ignite", "einops"):
        assert required[dist] == __import__("importlib.metadata").metadata.version(dist), dist
    assert not {"monai", "torch", "numpy"} & set(required)  # in monai_version / pytorch_version / numpy_version
    # the vendored package is the repository's code byte for byte, and none of it imports tools/ or tests/
    vendored = sorted(p.relative_to(unzipped / "tpp_components") for p in (unzipped / "tpp_components").rglob("*.py"))
    assert vendored and all((unzipped / "tpp_components" / p).read_bytes() == (ROOT / "tpp_components" / p).read_bytes()
                            for p in vendored)
    assert not any(line.lstrip().startswith(("import tools", "from tools", "import tests", "from tests"))
                   for p in vendored for line in (unzipped / "tpp_components" / p).read_text().splitlines())


def test_zoo_checks_pass_with_the_repository_off_the_path(unzipped, tmp_path):
    """verify_metadata, verify_net_in_out and ckpt_export as the zoo's verify_bundle.py calls them."""
    common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--bundle_root", "."]
    if SCHEMA.is_file():
        out = isolated(unzipped, "monai.bundle", "verify_metadata", "--meta_file", "configs/metadata.json",
                       "--filepath", str(SCHEMA))
        assert "metadata is verified with no error" in out
    out = isolated(unzipped, "monai.bundle", "verify_net_in_out", "--net_id", "network_def", *common)
    assert "data shape of network is verified with no error" in out
    assert f"TPP_COMPONENTS_FROM {unzipped / 'tpp_components' / '__init__.py'}" in out
    out = isolated(unzipped, "monai.bundle", "ckpt_export", "--net_id", "network_def", "--filepath",
                   "models/verify_model.ts", "--ckpt_file", "models/model.pt", *common)
    assert f"TPP_COMPONENTS_FROM {unzipped / 'tpp_components' / '__init__.py'}" in out
    # the shipped model.ts loads, and equals the one the reviewer exports
    x = torch.rand(2, 3, 64, 64)
    shipped, exported = (torch.jit.load(str(unzipped / "models" / f)) for f in ("model.ts", "verify_model.ts"))
    with torch.no_grad():
        assert torch.allclose(shipped(x), exported(x), atol=1e-5)
    (unzipped / "models" / "verify_model.ts").unlink()
    if not SCHEMA.is_file():
        pytest.skip(f"offline metadata schema '{SCHEMA}' not found: verify_metadata not run (the rest passed)")


def test_isolation_is_real(unzipped, tmp_path):
    """Without its vendored folder the bundle fails under the bootstrap, though PYTHONPATH names the repository."""
    stripped = tmp_path / NAME
    stripped.mkdir()
    (stripped / "configs").symlink_to(unzipped / "configs")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", ISOLATE, str(ROOT), "json.tool", "configs/metadata.json"],
                          cwd=stripped, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "not importable from the bundle only" in proc.stderr
    # the control: without the bootstrap, the same environment imports the repository's copy
    proc = subprocess.run([sys.executable, "-c", "import tpp_components; print(tpp_components.__file__)"],
                          cwd=stripped, env=env, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == str(ROOT / "tpp_components" / "__init__.py")


def test_unzipped_inference_equals_the_source_bundle(unzipped, trained, tmp_path):
    """``monai.bundle run`` of the packaged inference.json (repository off the path) writes the masks the source
    bundle writes with the trained checkpoint, at each image's own size."""
    # the zoo's unit tests check the workflow properties of every config
    wf = ConfigWorkflow(config_file=str(unzipped / "configs" / "inference.json"), workflow_type="infer",
                        meta_file=str(unzipped / "configs" / "metadata.json"), bundle_root=str(unzipped),
                        input_dir=str(trained["images"]))
    wf.initialize()
    assert not wf.check_properties()
    out = isolated(unzipped, "monai.bundle", "run", "--config_file", "configs/inference.json", "--meta_file",
                   "configs/metadata.json", "--logging_file", "configs/logging.conf", "--input_dir",
                   str(trained["images"]), "--output_dir", str(tmp_path / "pred"))
    assert f"TPP_COMPONENTS_FROM {unzipped / 'tpp_components' / '__init__.py'}" in out
    run(["inference.json"], bundle=BUNDLE, workflow_type="infer", input_dir=str(trained["images"]),
        output_dir=str(tmp_path / "source"), ckpt_dir=str(trained["ckpt_dir"]))
    for name, size in (("odd size", (90, 70)), ("square", (64, 64))):
        packaged = Image.open(tmp_path / "pred" / f"{name}_seg.png")
        assert packaged.size == size and set(np.unique(np.asarray(packaged))) <= {0, 1}
        assert np.array_equal(np.asarray(packaged), np.asarray(Image.open(tmp_path / "source" / f"{name}_seg.png")))


def test_large_files_are_listed_with_hashes_and_left_out(trained, tmp_path):
    url = "https://example.org/{bundle}_v{version}/{path}"
    with pytest.raises(LargeFilesError, match="models/model.pt.*--large_files_url"):
        package(str(BUNDLE), output=str(tmp_path / "no_url.zip"), version=VERSION, changelog="x",
                ckpt_dir=str(trained["ckpt_dir"]), size_limit_mb=1)
    assert not list(tmp_path.iterdir())  # no half-written zip, no temporary file
    zip_path = package(str(BUNDLE), output=str(tmp_path / "small.zip"), version=VERSION, changelog="x",
                       ckpt_dir=str(trained["ckpt_dir"]), size_limit_mb=1, large_files_url=url)
    with zipfile.ZipFile(zip_path) as zf:
        names = set(zf.namelist())
        zf.extract(f"{NAME}/large_files.yml", tmp_path)
    assert f"{NAME}/models/model.pt" not in names and f"{NAME}/models/model.ts" not in names
    assert f"{NAME}/configs/inference.json" in names
    parser = ConfigParser()  # read as the zoo's download_large_files reads it
    parser.read_config(str(tmp_path / NAME / "large_files.yml"))
    entries = {e["path"]: e for e in parser.get()["large_files"]}
    assert set(entries) == {"models/model.pt", "models/model.ts"}
    pt = entries["models/model.pt"]
    assert pt["url"] == f"https://example.org/{NAME}_v{VERSION}/models/model.pt" and pt["hash_type"] == "md5"
    assert pt["hash_val"] == hashlib.md5((trained["ckpt_dir"] / "model.pt").read_bytes()).hexdigest()


@pytest.mark.parametrize("version,changelog,match", [
    ("0.1.0", "again", "'0.1.0' is not newer than '0.1.0'"),
    ("0.0.9", "older", "'0.0.9' is not newer than '0.1.0'"),
    ("0.2.0", None, "needs a changelog text"),
    ("zero", "x", "'zero' is not a version"),
])
def test_version_must_be_newer_than_the_changelog(trained, tmp_path, version, changelog, match):
    with pytest.raises(MetadataError, match=match):
        package(str(BUNDLE), output=str(tmp_path / "p.zip"), version=version, changelog=changelog,
                ckpt_dir=str(trained["ckpt_dir"]))
    assert not (tmp_path / "p.zip").exists()


def test_clear_errors_for_a_missing_or_mismatched_model(trained, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model\.pt' not found: the fine-tuning stage writes it"):
        package(str(BUNDLE), output=str(tmp_path / "p.zip"), ckpt_dir=str(tmp_path / "nowhere"))
    # a TinyViT model.pt does not fit the UNETR switch's network_def: refused before anything is written
    with pytest.raises(PackagingError, match="does not load strictly into inference.json's network_def"):
        package(str(BUNDLE), output=str(tmp_path / "p.zip"), version=VERSION, changelog="x",
                ckpt_dir=str(trained["ckpt_dir"]), switches=["unetr.json"])
    assert not (tmp_path / "p.zip").exists()


def test_swin_unetr_bundle_is_traced_and_keeps_its_network_overrides(tmp_path, caplog):
    """3D: spleen_ct_segmentation's SwinUNETR does not script, so ``--export auto`` traces it; the small-network
    overrides it was built with are written into the packaged configs, so that model.pt fits them.

    model.pt here is the network's initial state (as the zoo's ``_produce_fake_weights`` makes one): what is tested
    is the packaging of a network that only traces, not training, which the spleen bundle's own test covers.
    """
    from volume_bundles import SMALL_SWIN

    spleen = ROOT / "bundles" / "spleen_ct_segmentation"
    parser = ConfigParser()
    parser.read_config(str(spleen / "configs" / "inference.json"))
    for key, value in SMALL_SWIN.items():
        parser[key] = value
    torch.manual_seed(0)
    (tmp_path / "models").mkdir()
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    with caplog.at_level("WARNING", logger="package_bundle"):
        zip_path = package(str(spleen), output=str(tmp_path / "spleen.zip"), version="9.9.9", changelog="zoo package",
                           ckpt_dir=str(tmp_path / "models"), **SMALL_SWIN)
    assert "does not script" in caplog.text and "exporting by tracing at [1, 1, 64, 64, 64]" in caplog.text
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(tmp_path / "unzipped")
    bundle = tmp_path / "unzipped" / spleen.name
    for name in ("inference.json", "train.json"):
        backbone = json.loads((bundle / "configs" / name).read_text())["backbone"]
        assert backbone["depths"] == SMALL_SWIN["backbone#depths"], name
    ts = torch.jit.load(str(bundle / "models" / "model.ts"))
    common = ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", "--bundle_root", "."]
    out = isolated(bundle, "monai.bundle", "verify_net_in_out", "--net_id", "network_def", *common)
    assert "data shape of network is verified with no error" in out
    isolated(bundle, "monai.bundle", "ckpt_export", "--net_id", "network_def", "--filepath", "models/verify_model.ts",
             "--ckpt_file", "models/model.pt", "--use_trace", "True", "--input_shape", "[1, 1, 64, 64, 64]", *common)
    x = torch.rand(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ts(x), torch.jit.load(str(bundle / "models" / "verify_model.ts"))(x), atol=1e-4)


def test_cli_help_shows_the_arguments():
    """``python tools/package_bundle.py --help`` prints the usage (it once crashed on the missing bundle_root)."""
    result = subprocess.run([sys.executable, "tools/package_bundle.py", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=300, env={**os.environ, "PAGER": "cat"})
    assert result.returncode == 0, result.stderr[-2000:]
    usage = result.stdout + result.stderr  # fire writes its help to stderr when no terminal is attached
    assert "BUNDLE_ROOT" in usage and "--changelog" in usage
