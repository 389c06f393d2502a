"""The patient-folder converter: BraTS 2013 and 2021 naming, split folders, missing or ambiguous channels."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest
from monai.transforms import LoadImaged

from conftest import DATA_DIR
from tools.prepare_patient_folders import main as prepare_patients
from tpp_components.data import DatalistError

BRATS_DIR = DATA_DIR / "brats2013"


def _volume(path: Path, shape: tuple[int, ...] = (10, 9, 8), spacing: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(len(str(path))).normal(size=shape).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([spacing] * 3 + [1.0])), str(path))
    return path


def _brats2021(root: Path, n: int = 5) -> Path:
    for i in range(n):
        case = root / f"BraTS2021_{i:05d}"
        for seq in ("flair", "t1", "t1ce", "t2", "seg"):
            _volume(case / f"BraTS2021_{i:05d}_{seq}.nii.gz")
    return root


def test_brats2021_naming_random_split_and_loadable(tmp_path: Path) -> None:
    root = _brats2021(tmp_path / "BraTS 2021 (subset)")
    out = prepare_patients(str(root), str(tmp_path / "b.json"), channels=["*_flair.nii.gz", "*_t1ce.nii.gz", "*_t2.nii.gz"],
                           foreground=[1, 2, 4])
    datalist = json.loads(Path(out).read_text())
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert datalist["foreground_label_ids"] == [1, 2, 4] and datalist["split_by"].startswith("random")
    entry = datalist["training"][0]
    assert [Path(p).name.split("_")[-1] for p in entry["image"]] == ["flair.nii.gz", "t1ce.nii.gz", "t2.nii.gz"]
    loaded = LoadImaged(["image", "label"], ensure_channel_first=True)(entry)
    assert tuple(loaded["image"].shape) == (3, 10, 9, 8) and tuple(loaded["label"].shape) == (1, 10, 9, 8)


def test_problems_are_listed_per_patient(tmp_path: Path) -> None:
    root = _brats2021(tmp_path / "data", n=3)
    (root / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz").unlink()
    with pytest.raises(DatalistError, match=r"(?s)BraTS2021_00001: channel pattern '\*t1ce\*' matches 0 files"):
        prepare_patients(str(root), str(tmp_path / "x.json"), channels=["*flair*", "*t1ce*"])
    with pytest.raises(DatalistError, match=r"channel pattern '\*t1\*' matches 2 files"):
        prepare_patients(str(root), str(tmp_path / "x.json"), channels=["*t1*"])
    _volume(root / "BraTS2021_00001" / "BraTS2021_00001_t1ce.nii.gz", spacing=2.0)
    with pytest.raises(DatalistError, match=r"BraTS2021_00001_t1ce.nii.gz' have different voxel-to-world affines"):
        prepare_patients(str(root), str(tmp_path / "x.json"), channels=["*flair*", "*t1ce*"])
    with pytest.raises(DatalistError, match="no patient folder"):
        prepare_patients(str(root), str(tmp_path / "x.json"), label_patterns=["*label*"])
    assert not (tmp_path / "x.json").exists()


def test_real_brats2013_keeps_its_split_folders(tmp_path: Path) -> None:
    if not BRATS_DIR.is_dir():
        pytest.skip(f"real BraTS 2013 data not found at {BRATS_DIR} (set TPP_DATA_DIR)")
    datalist = json.loads(Path(prepare_patients(str(BRATS_DIR), str(tmp_path / "brats.json"))).read_text())
    assert datalist["split_by"] == "folders"
    assert {s: sorted(e["patient"][-6:-2] for e in datalist[s]) for s in ("training", "validation", "test")} == {
        "training": ["0005", "0006"], "validation": ["0003", "0004"], "test": ["0001", "0002"]}
    assert all(Path(p).name.startswith(("Flair", "T1c")) for e in datalist["training"] for p in e["image"])
    assert all(Path(e["label"]).name == "OTMultiClass.nii.gz" for e in datalist["test"])
