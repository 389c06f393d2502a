"""The bundles' configs come from layers (``tools/generate_bundles.py``): what is committed is what the layers
make, the refactoring into layers changed no resolved config, and a layer that cannot be applied is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from tools import config_fingerprints, generate_bundles
from tools.generate_bundles import HEADER_KEY, LayerError, apply_layer, compose


def test_committed_configs_are_what_the_layers_make():
    assert generate_bundles.stale_files() == [], "run python tools/generate_bundles.py and commit what it writes"


def test_every_generated_config_says_so_first():
    for bundle in generate_bundles.bundles():
        for path in (bundle / "configs").glob("*.json"):
            if path.name != "metadata.json":
                assert next(iter(json.loads(path.read_text()))) == HEADER_KEY, path


def test_resolved_configs_are_unchanged():
    """Every stage of every bundle, alone and under each switch, resolves as it did when the fingerprints were
    written (before the configs became layers; rewritten only with a config change that is meant)."""
    committed = json.loads(config_fingerprints.FINGERPRINTS.read_text())
    assert config_fingerprints.changed(config_fingerprints.fingerprints(), committed) == []


def test_fingerprints_see_a_changed_value(tmp_path):
    for bundle in ("breast_us_segmentation", "lung_ct_segmentation"):
        shutil.copytree(ROOT / "bundles" / bundle / "configs", tmp_path / "bundles" / bundle / "configs")
    before = config_fingerprints.fingerprints(tmp_path)
    path = tmp_path / "bundles" / "lung_ct_segmentation" / "configs" / "train.json"
    config = json.loads(path.read_text())
    config["flip_prob"] = 0.25
    path.write_text(json.dumps(config))
    changed = config_fingerprints.changed(config_fingerprints.fingerprints(tmp_path), before)
    assert changed and all(k.startswith("lung_ct_segmentation/") for k in changed)
    assert "lung_ct_segmentation/train" in changed and "lung_ct_segmentation/inference" not in changed


def test_a_new_bundle_is_one_small_layer(tmp_path):
    """A bundle for a new dataset: its family, classes, name and budget; every stage file follows."""
    bundle = tmp_path / "chest_xray_classification"
    bundle.mkdir()
    (bundle / "layer.json").write_text(json.dumps({
        "family": "classification_2d",
        "settings": {"head_norm": True},
        "configs": {"train.json": {"default_class_names": ["normal", "pneumonia"], "experiment_name": "chest_xray",
                                   "num_epochs": 8, "tpp_epochs": 5, "warmup_epochs": 1},
                    "inference.json": {"num_classes": 2, "class_names": ["normal", "pneumonia"]}},
    }))
    configs = compose(bundle)
    brain = compose(ROOT / "bundles" / "brain_mri_classification")  # the same family, with a default switch folded in
    assert set(configs) == set(brain) - {"vit.json"}  # a new bundle stays on the family's default network
    assert configs["train.json"]["default_class_names"] == ["normal", "pneumonia"]
    assert configs["train.json"]["head_norm"] is True and configs["inference.json"]["head_norm"] is True
    same = [name for name in configs if {**configs[name], HEADER_KEY: ""} == {**brain[name], HEADER_KEY: ""}]
    assert {"tpp.json", "evaluate.json", "multi_gpu_train.json"} <= set(same)  # the family's stage wiring


def test_a_required_setting_left_unset_is_refused_naming_the_file_and_id(tmp_path):
    bundle = tmp_path / "no_classes"
    bundle.mkdir()
    (bundle / "layer.json").write_text(json.dumps({"family": "classification_2d", "configs": {}}))
    with pytest.raises(LayerError, match=r"no_classes/layer.json: configs#\S+\.json must set \[.*'"):
        compose(bundle)


def test_an_unknown_family_is_refused_with_the_known_ones(tmp_path):
    (tmp_path / "layer.json").write_text(json.dumps({"family": "classification_4d"}))
    with pytest.raises(LayerError, match=r"'family' is 'classification_4d'; expected one of \['classification_2d'"):
        compose(tmp_path)


def test_ids_reach_literal_keys_lists_and_new_keys():
    config = {"validate#handlers": [{"a": 1}, {"a": 2}], "train": {"dataloader": {"batch_size": 8}}}
    apply_layer(config, {"validate#handlers#1#a": 3, "train#dataloader#batch_size": 4, "train#sampler": None,
                         "validate#key_metric": "x"}, "test")
    assert config == {"validate#handlers": [{"a": 1}, {"a": 3}], "train": {"dataloader": {"batch_size": 4},
                      "sampler": None}, "validate#key_metric": "x"}
    with pytest.raises(LayerError, match=r"test: 'validate#handlers#5' needs an index below 2"):
        apply_layer(config, {"validate#handlers#5": {}}, "test")


def test_check_names_stale_files_and_writes_nothing(tmp_path):
    """``--check`` on a clean tree passes; the CLI is what the README shows."""
    result = subprocess.run([sys.executable, "tools/generate_bundles.py", "--check"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "every generated config is up to date" in result.stdout


@pytest.mark.parametrize("bundle,vit_head_norm,budgets,inits", [
    ("breast_us_classification", False, {"vit": (30, 20), "default": (8, 5)}, {"vit": "tpp", "default": "tpp"}),
    ("brain_mri_classification", True, {"vit": (3, 3), "default": (4, 3)}, {"vit": "tpp", "default": "standard"}),
])
def test_a_default_switch_is_folded_in_and_its_inverse_restores_the_family_default(bundle, vit_head_norm, budgets,
                                                                                   inits):
    """Both classification bundles default to the family's LiteMedSAM switch: the switch is a no-op over it, and
    ``vit.json`` brings back the own ViT with stage 0 (its weights from stage 0's file, its budget and head norm,
    its files under ``models/vit``)."""
    configs = ROOT / "bundles" / bundle / "configs"
    for stage, files in config_fingerprints.STAGES.items():
        if stage != "pretrain":
            with_switch = files[:1] + ["litemedsam.json"] + files[1:]
            assert config_fingerprints.resolved([configs / f for f in files]) == \
                config_fingerprints.resolved([configs / f for f in with_switch]), stage
    from monai.bundle import ConfigParser

    default = ConfigParser.load_config_files([str(configs / "train.json")])
    vit = ConfigParser.load_config_files([str(configs / "train.json"), str(configs / "vit.json")])
    assert default["backbone"]["_target_"].endswith("TinyViTClassifier") and default["head_norm"] is True
    assert vit["backbone"]["_target_"].endswith("ViTClassifier") and not vit["backbone"]["_target_"].endswith("TinyViTClassifier")
    assert vit["backbone_weights"] == "$@ckpt_dir + '/backbone.pt'" and vit["head_norm"] is vit_head_norm
    assert vit["ckpt_dir"] == "$@bundle_root + '/models/vit'"
    assert (vit["num_epochs"], vit["tpp_epochs"]) == budgets["vit"]
    assert (default["num_epochs"], default["tpp_epochs"]) == budgets["default"]
    assert (vit["default_init"], default["default_init"]) == (inits["vit"], inits["default"])  # as each was measured


def test_a_default_switch_naming_an_unknown_id_is_refused():
    from tools.generate_bundles import fold_switch

    built = {"train.json": {"a": 1}, "inference.json": {"a": 1}, "s.json": {"b": 2}}
    with pytest.raises(LayerError, match=r"'b' is not in the config"):
        fold_switch(built, "s.json", "inverse.json", {}, "layer.json")
    with pytest.raises(LayerError, match=r"default_switch#switch 'x.json' is no config of this bundle"):
        fold_switch(built, "x.json", "inverse.json", {}, "layer.json")
