"""Published splits and separate test folders: ``prepare_class_folders.py --split_dirs / --test_dir`` and
``add_test_folder.py`` keep every image in the split of its folder, carve only the splits without one, report
near-duplicates across splits, refuse classes the training data does not know, and leave the rest as it was."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT
from tools.add_test_folder import main as add_test_folder
from tools.prepare_class_folders import main as prepare_class_folders
from tpp_components.data import (
    SPLITS,
    DatalistError,
    build_datalist,
    complete_splits,
    near_duplicate_groups,
    scan_class_folders,
    split_fractions,
    stratified_split,
)

CLASSES = ("NORMAL", "PNEUMONIA")
#: images per class in each split folder of the chest X-ray-like layout
SIZES = {"train": 8, "val": 2, "test": 3}


def _scan(seed: int, size: int = 32) -> np.ndarray:
    """A distinct grey image: smooth random blobs, so that different seeds give unrelated difference hashes."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (6, 6)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _save(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def chest(tmp_path: Path) -> Path:
    """``chest/{train,val,test}/{NORMAL,PNEUMONIA}/<n>.png``, every image different, a mask beside one."""
    root = tmp_path / "chest"
    seed = 0
    for split, count in SIZES.items():
        for name in CLASSES:
            for n in range(count):
                seed += 1
                _save(root / split / name / f"{split}_{n}.png", _scan(seed))
    _save(root / "train" / "NORMAL" / "train_0_mask.png", _scan(999))  # skipped, as everywhere
    return root


def _images(folder: Path) -> dict[str, int]:
    """The images of a folder of class folders and their labels, as the datalist should hold them."""
    return {str(item["image"]): item["label"] for item in scan_class_folders(folder, CLASSES, missing_ok=True)}


def _entries(datalist: dict, *splits: str) -> dict[str, int]:
    found = [(item["image"], item["label"]) for split in splits for item in datalist[split]]
    assert len(found) == len({image for image, _ in found}), "an image is listed twice"
    return dict(found)


def _read(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def test_split_folders_are_kept_exactly(chest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = prepare_class_folders(str(chest), str(tmp_path / "chest.json"),
                                split_dirs={"training": "train", "validation": "val", "test": "test"})
    datalist = _read(out)
    assert datalist["labels"] == {"0": "NORMAL", "1": "PNEUMONIA"}
    for split, folder in zip(SPLITS, ("train", "val", "test")):
        assert _entries(datalist, split) == _images(chest / folder), split
        assert len(datalist[split]) == 2 * SIZES[folder]
    assert datalist["split_folders"] == {s: str(chest / f) for s, f in zip(SPLITS, ("train", "val", "test"))}
    printed = capsys.readouterr().out
    assert f"validation: the folder {chest / 'val'}" in printed and "span the given split folders" not in printed


def test_validation_is_carved_from_training_when_only_train_and_test_are_given(chest: Path, tmp_path: Path) -> None:
    copy = _save(chest / "train" / "PNEUMONIA" / "train_0 copy.png", _scan(SIZES["train"] + 1) + 1)  # re-encoded
    datalist = _read(prepare_class_folders(str(chest), str(tmp_path / "chest.json"), val_fraction=0.25, seed=3,
                                           split_dirs={"training": "train", "test": "test"}))
    assert _entries(datalist, "test") == _images(chest / "test")
    assert _entries(datalist, "training", "validation") == _images(chest / "train")
    assert sorted(item["label"] for item in datalist["validation"]) == [0, 0, 1, 1]  # stratified: 0.25 of 8 (9)
    side = {item["image"]: split for split in SPLITS for item in datalist[split]}
    assert side[str(copy)] == side[str(chest / "train" / "PNEUMONIA" / "train_0.png")]  # a group stays on one side
    again = _read(prepare_class_folders(str(chest), str(tmp_path / "again.json"), val_fraction=0.25, seed=4,
                                        split_dirs={"training": "train", "test": "test"}))
    assert again["test"] == datalist["test"] and again["validation"] != datalist["validation"]


def test_near_duplicate_across_given_splits_is_warned_and_not_moved(chest: Path, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture) -> None:
    original = chest / "train" / "NORMAL" / "train_2.png"
    copy = _save(chest / "test" / "NORMAL" / "copy of train_2.png", np.asarray(Image.open(original), float) + 1)
    datalist = _read(prepare_class_folders(str(chest), str(tmp_path / "chest.json"),
                                           split_dirs={"training": "train", "validation": "val", "test": "test"}))
    assert str(copy) in {item["image"] for item in datalist["test"]}
    assert str(original) in {item["image"] for item in datalist["training"]}
    printed = capsys.readouterr().out
    warning = next(line for line in printed.splitlines() if "span the given split folders" in line)
    assert warning.startswith("warning: 1 near-duplicate group(s)")
    assert str(original) in warning and str(copy) in warning


def test_unknown_class_in_a_split_folder_is_refused_and_a_missing_one_is_fine(chest: Path, tmp_path: Path) -> None:
    out = tmp_path / "chest.json"
    _save(chest / "test" / "COVID" / "c.png", _scan(500))
    with pytest.raises(DatalistError) as err:
        prepare_class_folders(str(chest), str(out), split_dirs={"training": "train", "test": "test"})
    message = str(err.value)
    assert "'COVID'" in message and str(chest / "test") in message and "NORMAL" in message
    assert f"not a class of the training folder {chest / 'train'}" in message
    assert not out.exists()
    for image in (chest / "test" / "COVID").iterdir():
        image.unlink()
    (chest / "test" / "COVID").rmdir()
    for image in (chest / "test" / "PNEUMONIA").iterdir():
        image.unlink()
    (chest / "test" / "PNEUMONIA").rmdir()
    datalist = _read(prepare_class_folders(str(chest), str(out), split_dirs={"training": "train", "test": "test"}))
    assert datalist["labels"] == {"0": "NORMAL", "1": "PNEUMONIA"} and {i["label"] for i in datalist["test"]} == {0}
    with pytest.raises(DatalistError, match="missing class folder 'PNEUMONIA'"):  # training needs every class
        prepare_class_folders(str(chest), str(out), split_dirs={"training": "test"}, class_names=list(CLASSES))
    with pytest.raises(DatalistError, match="'train_set'"):
        prepare_class_folders(str(chest), str(out), split_dirs={"train_set": "train"})


def test_test_dir_is_the_test_section(chest: Path, tmp_path: Path) -> None:
    datalist = _read(prepare_class_folders(str(chest / "train"), str(tmp_path / "chest.json"),
                                           test_dir=str(chest / "test")))
    assert _entries(datalist, "test") == _images(chest / "test")
    assert _entries(datalist, "training", "validation") == _images(chest / "train")
    assert len(datalist["validation"]) == 2  # 0.1 of 8 per class, at least one
    assert datalist["split_folders"] == {"training": str(chest / "train"), "test": str(chest / "test")}
    with pytest.raises(DatalistError, match="two test folders"):
        prepare_class_folders(str(chest), str(tmp_path / "x.json"), split_dirs={"training": "train", "test": "test"},
                              test_dir=str(chest / "val"))


def test_without_the_new_options_the_converter_is_unchanged(chest: Path, tmp_path: Path) -> None:
    """The datalist is the plain grouped stratified split of the folder, with the keys it always had."""
    folder = chest / "train"
    for near_duplicates in (True, False):
        datalist = _read(prepare_class_folders(str(folder), str(tmp_path / "plain.json"), seed=7, val_fraction=0.25,
                                               test_fraction=0.25, near_duplicates=near_duplicates))
        items = scan_class_folders(folder)
        if near_duplicates:
            for item, group in zip(items, near_duplicate_groups([i["image"] for i in items], 4)):
                item["group"] = group
        expected = build_datalist(stratified_split(items, split_fractions(0.25, 0.25), seed=7), CLASSES, name="train")
        expected.update(source=str(folder), seed=7, **({"near_duplicate_max_distance": 4} if near_duplicates else {}))
        assert datalist == expected
        assert [len(datalist[s]) for s in SPLITS] == [8, 4, 4]


def test_complete_splits_refuses_a_given_split_with_a_fraction() -> None:
    items = {"training": [{"image": f"t{i}.png", "label": 0} for i in range(4)],
             "test": [{"image": "x.png", "label": 0}]}
    assert complete_splits(items, (1.0, 0.0, 0.0))["test"] == [{"image": "x.png", "label": 0}]
    with pytest.raises(ValueError, match="'test'"):
        complete_splits(items, (0.8, 0.0, 0.2))


# ---------------------------------------------------------------- add_test_folder.py

@pytest.fixture
def trained(chest: Path, tmp_path: Path) -> Path:
    """The datalist of the training folder alone, as the converter writes it (its test section is carved)."""
    return Path(prepare_class_folders(str(chest / "train"), str(tmp_path / "train.json")))


def _between(text: str, start: str, end: str) -> str:
    return text[text.index(start) : text.index(end)]


def test_add_test_folder_keeps_training_and_validation_byte_for_byte(chest: Path, tmp_path: Path, trained: Path,
                                                                     capsys: pytest.CaptureFixture) -> None:
    before = trained.read_bytes()
    out = Path(add_test_folder(str(trained), str(chest / "test"), str(tmp_path / "with_test.json")))
    assert trained.read_bytes() == before, "the input datalist was changed"
    old, new = _read(trained), _read(out)
    assert _between(out.read_text(), '"training"', '"test"') == _between(trained.read_text(), '"training"', '"test"')
    kept = {k: v for k, v in old.items() if k != "test"}
    assert {k: v for k, v in new.items() if k not in ("test", "test_source")} == kept
    assert list(new) == [*old, "test_source"]
    assert _entries(new, "test") == _images(chest / "test") and new["test_source"] == str(chest / "test")
    printed = capsys.readouterr().out
    assert f"replaces the {len(old['test'])} test images" in printed and "warning" not in printed


def test_add_test_folder_refuses_unknown_classes_and_images_of_training(chest: Path, tmp_path: Path,
                                                                         trained: Path) -> None:
    out = tmp_path / "with_test.json"
    _save(chest / "test" / "Pneumonia_bacterial" / "b.png", _scan(600))
    with pytest.raises(DatalistError) as err:
        add_test_folder(str(trained), str(chest / "test"), str(out))
    message = str(err.value)
    assert "'Pneumonia_bacterial'" in message and str(chest / "test") in message
    assert f"not a class of datalist {trained}" in message and "['NORMAL', 'PNEUMONIA']" in message
    training_image = _read(trained)["training"][0]["image"]
    with pytest.raises(DatalistError, match="duplicate entry") as err:  # the training folder given as test folder
        add_test_folder(str(trained), str(chest / "train"), str(out))
    assert training_image in str(err.value)
    unlabelled = tmp_path / "unlabelled.json"
    unlabelled.write_text(json.dumps({k: v for k, v in _read(trained).items() if k != "labels"}))
    with pytest.raises(DatalistError, match="has no 'labels'"):
        add_test_folder(str(unlabelled), str(chest / "val"), str(out))
    assert not out.exists()


def test_add_test_folder_warns_of_a_near_duplicate_of_training(chest: Path, tmp_path: Path, trained: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    original = Path(_read(trained)["training"][0]["image"])
    copy = chest / "val" / original.parent.name / "copy.jpg"
    Image.open(original).convert("RGB").save(copy, quality=90)
    add_test_folder(str(trained), str(chest / "val"), str(tmp_path / "with_val.json"))
    warning = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("warning"))
    assert "1 near-duplicate group(s)" in warning and str(original) in warning and str(copy) in warning


def test_tools_run_as_scripts_with_a_dict_option(chest: Path, tmp_path: Path) -> None:
    """``--split_dirs "{...}"`` as the README writes it, and an error's last line naming the folder."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
    done = run(str(ROOT / "tools" / "prepare_class_folders.py"), "--data_dir", str(chest), "--output", "chest.json",
               "--split_dirs", "{'training': 'train', 'test': 'test'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert _entries(_read(tmp_path / "chest.json"), "test") == _images(chest / "test")
    _save(chest / "val" / "COVID" / "c.png", _scan(700))
    done = run(str(ROOT / "tools" / "add_test_folder.py"), "--datalist", "chest.json", "--test_dir", str(chest / "val"),
               "--output", "chest_val.json")
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode != 0 and "'COVID'" in last and "DatalistError" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "chest_val.json").exists()
