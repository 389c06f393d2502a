"""The HDF5 patch converter: patches to .npy read by MONAI, patients kept on one side, broken files named."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from monai.transforms import LoadImaged

from conftest import DATA_DIR
from tools.prepare_hdf5_patches import main as prepare_patches
from tpp_components.data import DatalistError

LUNG_H5 = DATA_DIR / "msd_lung_patches" / "val_patches.h5"


def _h5(path: Path, n: int = 24, size: int = 16, **extra: np.ndarray) -> Path:
    rng = np.random.default_rng(0)
    labels = np.zeros((n, 1, size, size))
    labels[::2, 0, 4:8, 4:8] = 1.0  # every other patch has foreground
    with h5py.File(path, "w") as f:
        f["images"] = rng.random((n, 1, size, size), dtype=np.float32)
        f["labels"] = labels
        for key, value in extra.items():
            f[key] = value
    return path


def _entries(datalist: dict) -> dict[str, list[dict]]:
    return {s: datalist[s] for s in ("training", "validation", "test")}


def test_patches_become_monai_readable_files_split_by_patient(tmp_path: Path) -> None:
    source = _h5(tmp_path / "patches.h5", patient=np.repeat(np.arange(6), 4))
    datalist = json.loads(Path(prepare_patches(str(source), str(tmp_path / "out.json"), group_key="patient")).read_text())
    splits = _entries(datalist)
    assert sum(len(v) for v in splits.values()) == 24 and all(splits.values())
    side = {}
    for split, entries in splits.items():
        for e in entries:
            side.setdefault(int(Path(e["image"]).name[:5]) // 4, set()).add(split)
    assert all(len(s) == 1 for s in side.values())  # each patient's 4 patches on one side
    loaded = LoadImaged(["image", "label"], ensure_channel_first=True)(splits["training"][0])
    assert tuple(loaded["image"].shape) == (1, 16, 16) and set(np.unique(loaded["label"].numpy())) <= {0, 1}
    index = int(Path(splits["training"][0]["image"]).name[:5])
    with h5py.File(source) as f:
        np.testing.assert_array_equal(loaded["image"][0].numpy(), f["images"][index, 0])
    by_block = json.loads(Path(prepare_patches(str(source), str(tmp_path / "b.json"), group_size=4)).read_text())
    assert by_block["split_by"] == "blocks of 4"


def test_broken_inputs_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatalistError, match="cannot open HDF5 file '.*junk.h5'"):
        prepare_patches(str(tmp_path / "junk.h5"), str(tmp_path / "out.json"))
    good = _h5(tmp_path / "good.h5")
    with pytest.raises(DatalistError, match=r"no dataset \['masks'\]"):
        prepare_patches(str(good), str(tmp_path / "out.json"), label_key="masks")
    with h5py.File(tmp_path / "short.h5", "w") as f:
        f["images"] = np.zeros((4, 16, 16), np.float32)
        f["labels"] = np.zeros((3, 16, 16))
    with pytest.raises(DatalistError, match=r"'images' has shape \(4, 16, 16\) but 'labels' has \(3, 16, 16\)"):
        prepare_patches([str(good), str(tmp_path / "short.h5")], str(tmp_path / "out.json"))
    nan = np.zeros((4, 16, 16), np.float32)
    nan[2, 0, 0] = np.nan
    with h5py.File(tmp_path / "nan.h5", "w") as f:
        f["images"], f["labels"] = nan, np.zeros((4, 16, 16))
    with pytest.raises(DatalistError, match=r"NaN or infinite values \(patches \[2\]\)"):
        prepare_patches(str(tmp_path / "nan.h5"), str(tmp_path / "out.json"))
    assert not (tmp_path / "out.json").exists() and not (tmp_path / "out_patches").exists()
    prepare_patches(str(good), str(tmp_path / "out.json"))
    assert "may land in training and test" in capsys.readouterr().out


def test_real_msd_lung_patches(tmp_path: Path) -> None:
    if not LUNG_H5.is_file():
        pytest.skip(f"real MSD lung patches not found at {LUNG_H5} (set TPP_DATA_DIR)")
    datalist = json.loads(Path(prepare_patches(str(LUNG_H5), str(tmp_path / "lung.json"), group_size=10)).read_text())
    entries = [e for part in _entries(datalist).values() for e in part]
    assert len(entries) == 130 and all(_entries(datalist).values())
    with_tumour = sum(bool(np.load(e["label"]).any()) for e in entries)
    assert with_tumour == 111  # measured: 111 of the 130 patches hold tumour
