"""The class-folder converter: class names found or given, near-duplicates kept on one side, awkward folders."""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR, ROOT
from tools.prepare_class_folders import main as prepare_class_folders
from tpp_components.data import (
    DatalistError,
    find_class_names,
    near_duplicate_groups,
    scan_class_folders,
    stratified_split,
)
from tpp_components.data.near_duplicates import difference_hash

BRAIN_MRI_DIR = DATA_DIR / "brain_tumor_mri" / "Training"


def _scan(seed: int, size: int = 64) -> np.ndarray:
    """A distinct grey 'scan': smooth random blobs, so different seeds give unrelated hashes."""
    coarse = np.random.default_rng(seed).uniform(0, 255, (6, 6)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))


def _save(path: Path, pixels: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    (img.convert("RGB") if mode == "RGB" else img).save(path)
    return path


def test_difference_hash_sees_through_reencoding_and_colour(tmp_path: Path) -> None:
    grey = _save(tmp_path / "a.png", _scan(1))
    rgb_jpeg = tmp_path / "b.jpg"
    Image.open(grey).convert("RGB").resize((96, 96)).save(rgb_jpeg, quality=70)
    other = _save(tmp_path / "c.png", _scan(2))
    ha, hb, hc = (np.unpackbits(difference_hash(p)) for p in (grey, rgb_jpeg, other))
    assert ha.size == 256
    assert (ha != hb).sum() <= 4 < (ha != hc).sum()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    with pytest.raises(ValueError, match="broken.png"):
        difference_hash(tmp_path / "broken.png")


def test_near_duplicate_groups_are_transitive(tmp_path: Path) -> None:
    base = _scan(3)
    paths = [_save(tmp_path / "x0.png", base), _save(tmp_path / "x1.png", base + 2),
             _save(tmp_path / "y.png", _scan(4)), _save(tmp_path / "x2.png", base + 4)]
    groups = near_duplicate_groups(paths, max_distance=4)
    assert groups[0] == groups[1] == groups[3] == 0 and groups[2] == 2
    assert near_duplicate_groups([], 4) == []
    with pytest.raises(ValueError, match="max_distance"):
        near_duplicate_groups(paths, max_distance=-1)


def test_grouped_split_keeps_groups_together_and_plain_split_unchanged() -> None:
    items = [{"image": f"/d/c{c}/{i:03d}.png", "label": c} for c in range(2) for i in range(40)]
    plain = stratified_split(items, (0.6, 0.2, 0.2), seed=5)
    singletons = stratified_split([{**item, "group": n} for n, item in enumerate(items)], (0.6, 0.2, 0.2), seed=5)
    assert singletons == plain  # every item its own group: the plain split, "group" dropped
    grouped = [{**item, "group": (item["label"], int(item["image"][-7:-4]) // 4)} for item in items]
    splits = stratified_split(grouped, (0.6, 0.2, 0.2), seed=5)
    where = {}
    for split, part in splits.items():
        assert all("group" not in item for item in part)
        for item in part:
            where.setdefault((item["label"], int(item["image"][-7:-4]) // 4), set()).add(split)
    assert all(len(sides) == 1 for sides in where.values())
    sizes = {s: len(p) for s, p in splits.items()}
    assert sum(sizes.values()) == 80 and abs(sizes["validation"] - 16) <= 8 and abs(sizes["test"] - 16) <= 8


def test_converter_finds_class_names_and_groups_duplicates(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "My data [v2]"
    for c, name in enumerate(["tumour a", "no tumour", "tumour (b)"]):
        for i in range(10):
            pixels = _scan(100 * c + i)
            _save(data / name / f"img {i}.jpg", pixels, mode="RGB" if i % 2 else "L")
        _save(data / name / "img 0_mask.png", _scan(999))  # a mask beside its image: skipped
        _save(data / name / "img 0 copy.png", _scan(100 * c) + 1)  # a re-encoded copy of img 0
    assert find_class_names(data) == ("no tumour", "tumour (b)", "tumour a")
    out = prepare_class_folders(str(data), str(tmp_path / "out" / "list.json"), seed=1)
    datalist = json.loads(Path(out).read_text())
    assert datalist["labels"] == {"0": "no tumour", "1": "tumour (b)", "2": "tumour a"}
    items = {Path(i["image"]).name + "|" + Path(i["image"]).parent.name: s
             for s in ("training", "validation", "test") for i in datalist[s]}
    assert len(items) == 33 and not any("_mask" in k for k in items)
    for name in ("tumour a", "no tumour", "tumour (b)"):
        assert items[f"img 0.jpg|{name}"] == items[f"img 0 copy.png|{name}"]
    printed = capsys.readouterr().out
    assert "3 groups" in printed and "6 images" in printed
    given = json.loads(Path(prepare_class_folders(str(data), str(tmp_path / "given.json"),
                                                  class_names=["tumour a", "tumour (b)", "no tumour"])).read_text())
    assert given["labels"]["0"] == "tumour a"


def test_converter_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DatalistError, match="not found"):
        find_class_names(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatalistError, match="no sub-folder"):
        prepare_class_folders(str(tmp_path / "empty"), str(tmp_path / "x.json"))
    _save(tmp_path / "d" / "a" / "1.png", _scan(1))
    (tmp_path / "d" / "b").mkdir()
    with pytest.raises(DatalistError, match=r"d/b holds no image"):
        scan_class_folders(tmp_path / "d")
    assert not (tmp_path / "x.json").exists()
    with pytest.raises(DatalistError, match="missing class folder 'c'"):
        prepare_class_folders(str(tmp_path / "d"), str(tmp_path / "x.json"), class_names=["a", "b", "c"])


def test_converter_on_real_brain_mri(tmp_path: Path) -> None:
    if not BRAIN_MRI_DIR.is_dir():
        pytest.skip(f"real brain tumour MRI data not found at {BRAIN_MRI_DIR} (set TPP_DATA_DIR)")
    datalist = json.loads(Path(prepare_class_folders(str(BRAIN_MRI_DIR), str(tmp_path / "brain.json"))).read_text())
    assert datalist["labels"] == {"0": "glioma", "1": "meningioma", "2": "notumor", "3": "pituitary"}
    splits = {s: datalist[s] for s in ("training", "validation", "test")}
    assert sum(len(p) for p in splits.values()) == 5708
    # no exact duplicate (identical 256-bit hash) across splits; the plain split (seed 0) has 87
    side = {}
    for s, part in splits.items():
        for item in part:
            side.setdefault(difference_hash(item["image"]).tobytes(), set()).add(s)
    assert sum(len(v) > 1 for v in side.values()) == 0
    for s, part in splits.items():
        assert set(Counter(i["label"] for i in part)) == {0, 1, 2, 3}


@pytest.mark.parametrize("script", ["prepare_class_folders.py", "prepare_busi.py"])
def test_converters_run_as_scripts_from_anywhere(script, tmp_path):
    """``python tools/<converter>.py`` from another folder, as the READMEs show (imports ``tools`` itself)."""
    import subprocess

    data = tmp_path / "data"
    for c, name in enumerate(["normal", "benign", "malignant"]):
        for i in range(3):
            _save(data / name / f"{name} ({i}).png", _scan(10 * c + i))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(ROOT / "tools" / script), "--data_dir", str(data), "--output", "out.json"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "out.json").read_text())["num_classes"] == 3
