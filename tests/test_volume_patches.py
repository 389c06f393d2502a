"""Slicing 3D volumes into 2D patches: MONAI resampling and windowing, patches on the foreground, split by volume."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest

from conftest import DATA_DIR
from tools.prepare_nifti_pairs import main as prepare_nifti
from tools.prepare_volume_patches import main as prepare_patches
from tpp_components.data import DatalistError

TOTALSEG_DIR = DATA_DIR / "totalseg_ct"


def _ct(root: Path, n: int = 4) -> str:
    for i in range(n):
        ct = np.full((40, 40, 10), -1000.0, np.float32)  # air
        label = np.zeros((40, 40, 10), np.uint8)
        ct[10:30, 10:30, :] = 40.0  # soft tissue
        ct[15 + i:21 + i, 15:21, 3:6] = 200.0  # the "tumour", 3 slices
        label[15 + i:21 + i, 15:21, 3:6] = 1
        for folder, data in (("ct", ct), ("seg", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nibabel.save(nibabel.Nifti1Image(data, np.diag([1.0, 1.0, 5.0, 1.0])), str(root / folder / f"case{i}.nii.gz"))
    return prepare_nifti(str(root / "volumes.json"), images_dir=str(root / "ct"), labels_dir=str(root / "seg"))


def test_patches_centre_the_foreground_and_keep_volumes_together(tmp_path):
    volumes = _ct(tmp_path)
    out = prepare_patches(volumes, str(tmp_path / "patches.json"), spacing=2.0, window=(-100, 300), patch_size=16,
                          negatives=1)
    datalist = json.loads(Path(out).read_text())
    entries = {s: datalist[s] for s in ("training", "validation", "test")}
    assert sum(len(v) for v in entries.values()) == 4 * (3 + 1) and all(entries.values())
    side = {}
    for split, part in entries.items():
        for e in part:
            side.setdefault(Path(e["image"]).parent.name, set()).add(split)
    assert len(side) == 4 and all(len(s) == 1 for s in side.values())
    positive = [e for part in entries.values() for e in part if np.load(e["label"]).any()]
    assert len(positive) == 12
    image, label = np.load(positive[0]["image"]), np.load(positive[0]["label"])
    assert image.shape == label.shape == (16, 16) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0  # windowed to [0, 1]
    assert label.sum() == 9  # 6 x 6 voxels at 1 mm resampled to 2 mm: 3 x 3, centred in the patch
    assert label[7:10, 7:10].all()  # centred: the patch's middle pixel is 8
    # window -100..300 HU: the 200 HU "tumour" is 0.75, the 40 HU tissue around it 0.35
    assert np.allclose(image[label == 1], 0.75) and np.allclose(image[5:12, 5:12][label[5:12, 5:12] == 0], 0.35)


def test_broken_volume_is_named(tmp_path):
    volumes = _ct(tmp_path, n=1)
    Path(json.loads(Path(volumes).read_text())["training"][0]["image"]).write_bytes(b"not a nifti")
    with pytest.raises(DatalistError, match="cannot load volume pair .*case0.nii.gz"):
        prepare_patches(volumes, str(tmp_path / "patches.json"))
    assert not (tmp_path / "patches.json").exists()


def test_real_totalsegmentator_spleen_patches(tmp_path):
    if not TOTALSEG_DIR.is_dir():
        pytest.skip(f"real TotalSegmentator CT not found at {TOTALSEG_DIR} (set TPP_DATA_DIR)")
    for folder, name in (("ct", "example_ct.nii.gz"), ("seg", "example_seg_full_oldv1.nii.gz")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "example.nii.gz").symlink_to(TOTALSEG_DIR / name)
    volumes = prepare_nifti(str(tmp_path / "v.json"), images_dir=str(tmp_path / "ct"), labels_dir=str(tmp_path / "seg"),
                            foreground=1, foreground_name="spleen")
    datalist = json.loads(Path(prepare_patches(volumes, str(tmp_path / "p.json"), window=(-160, 240))).read_text())
    patches = datalist["training"]
    assert datalist["labels"]["1"] == "spleen"
    assert len(patches) == 32 and sum(np.load(e["label"]).any() for e in patches) == 30  # measured: 30 slices hold spleen
