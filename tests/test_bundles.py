"""What every bundle of the collection must have and pass; every folder under bundles/ is checked (a new bundle joins by existing)."""

from __future__ import annotations

import json

import pytest

from conftest import ROOT, SCHEMA

#: every bundle under bundles/
BUNDLES = sorted(p.name for p in (ROOT / "bundles").iterdir() if (p / "configs").is_dir())

REQUIRED_FILES = ["LICENSE", "configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/tpp.json",
                  "configs/evaluate.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt"]


def test_every_folder_under_bundles_is_a_bundle():
    assert sorted(p.name for p in (ROOT / "bundles").iterdir() if p.is_dir()) == BUNDLES, "a folder under bundles/ has no configs/"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_files_and_json_style(bundle):
    root = ROOT / "bundles" / bundle
    assert [f for f in REQUIRED_FILES if not (root / f).is_file()] == []
    for path in sorted((root / "configs").glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path} is not 4-space indented JSON (the zoo's style)"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_verifies_against_schema(bundle):
    if not SCHEMA.is_file():
        pytest.skip(f"metadata schema '{SCHEMA}' not found (set TPP_SCHEMA)")
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(ROOT / "bundles" / bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_verify_net_in_out(bundle):
    from monai.bundle import verify_net_in_out

    configs = ROOT / "bundles" / bundle / "configs"
    verify_net_in_out(net_id="network_def", meta_file=str(configs / "metadata.json"),
                      config_file=str(configs / "inference.json"), device="cpu", bundle_root=str(ROOT / "bundles" / bundle))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_augmentation_is_a_named_setting_that_turns_it_off(bundle):
    """Each random augmentation's probability is a top-level setting (``--flip_prob 0`` turns flips off: they
    mirror anatomy), and setting it to 0 reaches the transform."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    raw = parser.get("train#augmentation")
    names = {t["prob"][1:] for t in raw}
    assert raw and all(isinstance(t["prob"], str) and t["prob"].startswith("@") for t in raw), raw
    assert "flip_prob" in names
    for name in names:
        parser[name] = 0.0
    transforms = parser.get_parsed_content("train#augmentation")
    assert [t.prob for t in transforms] == [0.0] * len(raw)
