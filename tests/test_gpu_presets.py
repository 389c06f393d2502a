"""The full-resolution presets (``configs/gpu.json``) for users with a GPU, checked on CPU.

Each bundle's ``gpu.json`` is merged last onto any stage or onto ``inference.json``; it sets the encoder's
native input (256 px for LiteMedSAM's TinyViT, 96-voxel crops for SwinUNETR with the published feature size
48). Here: every bundle's training and inference definitions agree under the preset, the network takes the
preset's input, and one training iteration (loading, augmentation, step, validation) runs at the preset's size
for one bundle of each family.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import run
from conftest import ROOT

BUNDLES = ROOT / "bundles"
GPU = "gpu.json"
#: bundle -> (switches before the preset, input shape of one image under the preset)
PRESETS = {
    "breast_us_classification": ([], (3, 256, 256)),
    "breast_us_classification+vit": (["vit.json"], (1, 256, 256)),
    "brain_mri_classification": ([], (3, 256, 256)),
    "breast_us_segmentation": ([], (3, 256, 256)),
    "lung_ct_segmentation": ([], (3, 256, 256)),
    "spleen_ct_segmentation": ([], (1, 96, 96, 96)),
    "brain_mri_segmentation": ([], (2, 96, 96, 96)),
}
#: no earlier stage's files: a random frozen backbone, standard init (then this run's default, so model.pt)
RANDOM = {"backbone_weights": None, "allow_random_backbone": True, "default_init": "standard", "init": "standard"}


def _bundle(key: str) -> Path:
    return BUNDLES / key.split("+")[0]


def _parser(bundle: Path, configs: list[str]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    parser["bundle_root"] = str(bundle)
    return parser


@pytest.mark.parametrize("key", sorted(PRESETS))
def test_preset_sets_the_native_input_and_inference_agrees_with_training(key):
    bundle, (switches, shape) = _bundle(key), PRESETS[key]
    preset = json.loads((bundle / "configs" / GPU).read_text())
    train, infer = (_parser(bundle, [first, *switches, GPU]) for first in ("train.json", "inference.json"))
    for parser in (train, infer):
        for name, value in preset.items():
            assert parser.get_parsed_content(name) == value, (key, name)
    # the backbone's resolved arguments (fresh parsers: a resolved, uninstantiated item stays cached)
    configs = [_parser(bundle, [first, *switches, GPU]).get_parsed_content("backbone", instantiate=False).get_config()
               for first in ("train.json", "inference.json")]
    assert configs[0] == configs[1]
    net = infer.get_parsed_content("network_def").eval()
    with torch.no_grad():
        out = net(torch.rand(1, *shape))
    if "classification" in key:
        assert out.shape == (1, len(infer.get_parsed_content("class_names")))
    else:  # a mask at the input's size
        assert tuple(out.shape[2:]) == shape[1:]


def _one_iteration(bundle: Path, switches: list[str], datalist: str, tmp: Path, **overrides) -> torch.Size:
    """One training iteration and one validation at the preset's size; the shape of the batch trained on."""
    wf = run(["train.json", *switches, GPU], bundle=bundle, datalist=datalist, ckpt_dir=str(tmp / "models"),
             output_dir=str(tmp / "logs"), num_epochs=1, **{"train#trainer#epoch_length": 1}, **RANDOM, **overrides)
    assert (tmp / "models" / "model.pt").is_file()  # validation ran and saved the model
    return wf.parser.get_parsed_content("train#trainer").state.batch[0]["image"].shape


def test_one_iteration_at_256_px_classification(small_demo_datalist, tmp_path):
    shape = _one_iteration(BUNDLES / "breast_us_classification", [], small_demo_datalist, tmp_path,
                           **{"train#dataloader#batch_size": 2})
    assert tuple(shape) == (3, 256, 256)


def test_one_iteration_at_256_px_segmentation(tmp_path):
    from tools.make_demo_data import make_demo_dataset
    from tools.prepare_image_mask_pairs import main as prepare_pairs

    data = make_demo_dataset(tmp_path / "data", num_per_class=4, image_size=64, seed=0, masks=True)
    datalist = prepare_pairs(str(data), str(tmp_path / "datalist.json"), near_duplicates=False)
    shape = _one_iteration(BUNDLES / "breast_us_segmentation", [], datalist, tmp_path, **{"train#dataloader#batch_size": 2})
    assert tuple(shape) == (3, 256, 256)


def test_one_iteration_at_96_voxels_swinunetr_feature_48(tmp_path):
    """The published SwinUNETR size (feature 48) on 96-voxel crops: one crop, one step, then validation."""
    from test_spleen_ct_segmentation_bundle import write_synthetic_ct
    from tools.prepare_nifti_pairs import main as prepare_nifti

    ct, seg = write_synthetic_ct(tmp_path / "data", 4)
    datalist = prepare_nifti(str(tmp_path / "datalist.json"), images_dir=str(ct), labels_dir=str(seg), foreground=1,
                             foreground_name="spleen", val_fraction=0.25, test_fraction=0.25)
    shape = _one_iteration(BUNDLES / "spleen_ct_segmentation", [], datalist, tmp_path, **{"train#num_samples": 1})
    assert tuple(shape) == (1, 96, 96, 96)
