"""The NIfTI pair converter: MSD dataset.json, two folders paired by name, geometry checks, foreground ids."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel
import numpy as np
import pytest

from conftest import DATA_DIR
from tools.prepare_nifti_pairs import main as prepare_nifti, split_volumes
from tpp_components.data import DatalistError
from tpp_components.data.nifti_pairs import check_volume_pair

TOTALSEG_DIR = DATA_DIR / "totalseg_ct"


def _volume(path: Path, data: np.ndarray, spacing: tuple[float, float, float] = (1.5, 1.5, 3.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(nibabel.Nifti1Image(data, np.diag([*spacing, 1.0])), str(path))
    return path


def _msd(root: Path, n: int = 5) -> Path:
    training = []
    for i in range(n):
        rng = np.random.default_rng(i)
        _volume(root / "imagesTr" / f"spleen_{i}.nii.gz", rng.normal(0, 100, (12, 10, 8)).astype(np.float32))
        label = np.zeros((12, 10, 8), np.uint8)
        label[2:5, 2:5, 2:4] = 1
        label[7:9, 6:8, 5:7] = 2 if i != 3 else 0  # volume 3 has no label 2
        _volume(root / "labelsTr" / f"spleen_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Spleen", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen", "2": "tumour"},
        "training": training, "test": []}))
    return root


def test_msd_task_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    task = _msd(tmp_path / "Task09 Spleen (copy)")
    datalist = json.loads(Path(prepare_nifti(str(tmp_path / "out.json"), msd_dir=str(task), foreground=2)).read_text())
    assert datalist["labels"] == {"0": "background", "1": "tumour"} and datalist["foreground_label_ids"] == [2]
    assert datalist["modality"] == {"0": "CT"} and datalist["name"] == "Spleen"
    assert [len(datalist[s]) for s in ("training", "validation", "test")] == [3, 1, 1]
    assert all(Path(e["image"]).is_file() and Path(e["label"]).is_file()
               for s in ("training", "validation", "test") for e in datalist[s])
    assert [Path(p).name for p in datalist["without_foreground"]] == ["spleen_3.nii.gz"]
    assert "1 label volume(s) hold no foreground" in capsys.readouterr().out
    with pytest.raises(DatalistError, match=r"foreground id\(s\) \[7\]"):
        prepare_nifti(str(tmp_path / "none.json"), msd_dir=str(task), foreground=7)


def test_msd_errors_name_the_file(tmp_path: Path) -> None:
    task = _msd(tmp_path / "task")
    (task / "labelsTr" / "spleen_1.nii.gz").unlink()
    with pytest.raises(DatalistError, match=r"training\[1\]: label file not found: .*spleen_1.nii.gz"):
        prepare_nifti(str(tmp_path / "out.json"), msd_dir=str(task))
    (task / "dataset.json").write_text("{not json")
    with pytest.raises(DatalistError, match="dataset.json is not valid JSON"):
        prepare_nifti(str(tmp_path / "out.json"), msd_dir=str(task))
    with pytest.raises(DatalistError, match="has no dataset.json"):
        prepare_nifti(str(tmp_path / "out.json"), msd_dir=str(tmp_path))
    assert not (tmp_path / "out.json").exists()


def test_two_folders_with_a_label_pattern_and_geometry_checks(tmp_path: Path) -> None:
    data = np.zeros((8, 8, 6), np.float32)
    label = np.zeros((8, 8, 6), np.uint8)
    label[2:4, 2:4, 2:4] = 5
    for i in range(3):
        _volume(tmp_path / "ct" / f"case {i}.nii.gz", data)
        _volume(tmp_path / "seg" / f"case {i}_seg.nii.gz", label)
    _volume(tmp_path / "ct" / "case 9.nii.gz", data)  # no label: reported
    out = prepare_nifti(str(tmp_path / "liver.json"), images_dir=str(tmp_path / "ct"), labels_dir=str(tmp_path / "seg"),
                        label_pattern=r"(?P<stem>.+)_seg", foreground=5, foreground_name="liver")
    datalist = json.loads(Path(out).read_text())
    assert datalist["labels"]["1"] == "liver" and [Path(p).name for p in datalist["without_label"]] == ["case 9.nii.gz"]
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 3
    _volume(tmp_path / "seg" / "case 1_seg.nii.gz", label, spacing=(1.0, 1.0, 1.0))
    assert "different voxel-to-world affines" in check_volume_pair(tmp_path / "ct" / "case 1.nii.gz", tmp_path / "seg" / "case 1_seg.nii.gz")
    _volume(tmp_path / "seg" / "case 2_seg.nii.gz", label[:, :, :5])
    with pytest.raises(DatalistError, match=r"(?s)2 image/label pair.*case 2_seg.nii.gz' has shape \(8, 8, 5\)"):
        prepare_nifti(str(tmp_path / "bad.json"), images_dir=str(tmp_path / "ct"), labels_dir=str(tmp_path / "seg"),
                      label_pattern=r"(?P<stem>.+)_seg", foreground=5)
    assert not (tmp_path / "bad.json").exists()
    with pytest.raises(ValueError, match="either --msd_dir"):
        prepare_nifti(str(tmp_path / "x.json"), images_dir=str(tmp_path / "ct"))


def test_split_volumes() -> None:
    pairs = [{"image": f"/v/{i}.nii.gz", "label": f"/l/{i}.nii.gz"} for i in range(10)]
    parts = split_volumes(pairs, (0.6, 0.2, 0.2), seed=0)
    assert [len(parts[s]) for s in ("training", "validation", "test")] == [6, 2, 2]
    assert split_volumes(list(reversed(pairs)), (0.6, 0.2, 0.2), seed=0) == parts
    assert [len(v) for v in split_volumes(pairs[:3], (0.9, 0.05, 0.05), 0).values()] == [1, 1, 1]
    assert [len(v) for v in split_volumes(pairs[:1], (0.6, 0.2, 0.2), 0).values()] == [1, 0, 0]


def test_real_totalsegmentator_ct_spleen(tmp_path: Path) -> None:
    if not TOTALSEG_DIR.is_dir():
        pytest.skip(f"real TotalSegmentator CT not found at {TOTALSEG_DIR} (set TPP_DATA_DIR)")
    (tmp_path / "ct").mkdir()
    (tmp_path / "seg").mkdir()
    (tmp_path / "ct" / "example.nii.gz").symlink_to(TOTALSEG_DIR / "example_ct.nii.gz")
    (tmp_path / "seg" / "example.nii.gz").symlink_to(TOTALSEG_DIR / "example_seg_full_oldv1.nii.gz")
    datalist = json.loads(Path(prepare_nifti(str(tmp_path / "spleen.json"), images_dir=str(tmp_path / "ct"),
                                             labels_dir=str(tmp_path / "seg"), foreground=1,
                                             foreground_name="spleen")).read_text())
    assert len(datalist["training"]) == 1 and datalist["without_foreground"] == []
    label = np.asarray(nibabel.load(datalist["training"][0]["label"]).dataobj)
    assert (label == 1).sum() > 100  # the spleen is there (label 1 in class_maps.json's total_v1)
