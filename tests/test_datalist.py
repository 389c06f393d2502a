"""Datalist tools: folder scan, stratified split, validation, the BUSI converter and the demo data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR
from tools import prepare_busi
from tools.make_demo_data import make_demo_dataset
from tpp_components.data import (
    CLASS_NAMES_BUSI,
    DatalistError,
    load_datalist,
    scan_class_folders,
    stratified_split,
    validate_datalist,
    write_datalist,
)

BUSI_DIR = DATA_DIR / "busi_classification"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), num_per_class=12, image_size=32, seed=0)


def _png(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)
    return path


def _datalist(tmp_path: Path, n: int = 3) -> dict:
    items = [{"image": str(_png(tmp_path / f"img ({i}).png")), "label": i % 3} for i in range(n)]
    return {"training": items, "validation": [], "test": []}


def test_demo_data_layout_and_determinism(tmp_path: Path, demo_dir: Path) -> None:
    assert (demo_dir / "README.txt").read_text().lower().count("synthetic") >= 1
    for name in CLASS_NAMES_BUSI:
        files = sorted(p.name for p in (demo_dir / name).iterdir())
        assert files == sorted(f"{name} ({n}).png" for n in range(1, 13))
        img = Image.open(demo_dir / name / f"{name} (1).png")
        assert img.mode == "L" and img.size == (32, 32)
    again = make_demo_dataset(tmp_path / "again", num_per_class=12, image_size=32, seed=0)
    other = make_demo_dataset(tmp_path / "other", num_per_class=12, image_size=32, seed=1)
    for p in demo_dir.rglob("*.png"):
        rel = p.relative_to(demo_dir)
        assert p.read_bytes() == (again / rel).read_bytes(), rel
    assert any(p.read_bytes() != (other / p.relative_to(demo_dir)).read_bytes() for p in demo_dir.rglob("*.png"))


def _features(path: Path) -> tuple[float, float]:
    """Darkest 4x4-block mean relative to the image mean, and the column below it relative to the mean."""
    img = np.asarray(Image.open(path), dtype=float)
    blocks = img.reshape(img.shape[0] // 4, 4, img.shape[1] // 4, 4).mean(axis=(1, 3))
    i, j = np.unravel_index(np.argmin(blocks[:-2]), blocks[:-2].shape)
    below = blocks[i + 2 :, max(j - 1, 0) : j + 2].mean()
    return blocks[i, j] / img.mean(), below / img.mean()


def test_demo_data_has_learnable_structure(tmp_path: Path) -> None:
    root = make_demo_dataset(tmp_path / "demo", num_per_class=20, image_size=64, seed=3)
    feats = {c: np.array([_features(p) for p in (root / c).glob("*.png")]) for c in CLASS_NAMES_BUSI}
    dark = {c: f[:, 0] for c, f in feats.items()}
    # lesions are much darker than any region of a normal image
    assert dark["normal"].mean() - max(dark["benign"].mean(), dark["malignant"].mean()) > 0.2
    assert np.mean(dark["normal"] > 0.5) > 0.9 and np.mean(dark["benign"] < 0.5) > 0.9
    # the posterior shadow darkens the tissue below malignant lesions only
    assert feats["benign"][:, 1].mean() - feats["malignant"][:, 1].mean() > 0.1


def test_scan_skips_masks_and_handles_odd_names(tmp_path: Path) -> None:
    for name in CLASS_NAMES_BUSI:
        _png(tmp_path / name / f"{name} (1).png")
        _png(tmp_path / name / f"{name} (1)_mask.png")
        _png(tmp_path / name / f"{name} (1)_mask_1.png")
        _png(tmp_path / name / f"{name} [2] x.PNG")
        (tmp_path / name / "notes.txt").write_text("not an image")
    items = scan_class_folders(tmp_path, CLASS_NAMES_BUSI)
    assert len(items) == 6
    assert [i["image"] for i in items] == sorted(i["image"] for i in items)
    assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in items)
    assert not any("_mask" in Path(i["image"]).name for i in items)
    assert {Path(i["image"]).name: i["label"] for i in items}["benign (1).png"] == 1
    assert {Path(i["image"]).name: i["label"] for i in items}["malignant [2] x.PNG"] == 2


def test_scan_reports_unknown_and_missing_class_folders(tmp_path: Path) -> None:
    _png(tmp_path / "benign" / "benign (1).png")
    _png(tmp_path / "Benign_old" / "x.png")
    with pytest.raises(DatalistError) as err:
        scan_class_folders(tmp_path, CLASS_NAMES_BUSI)
    msg = str(err.value)
    assert "Benign_old" in msg and "normal" in msg and "malignant" in msg and "expected" in msg


def test_stratified_split(demo_dir: Path) -> None:
    items = scan_class_folders(demo_dir, CLASS_NAMES_BUSI)
    splits = stratified_split(items, (0.6, 0.2, 0.2), seed=0)
    assert set(splits) == {"training", "validation", "test"}
    seen = [i["image"] for part in splits.values() for i in part]
    assert len(seen) == len(set(seen)) == len(items) and set(seen) == {i["image"] for i in items}
    for part, expected in zip(splits.values(), (8, 2, 2)):
        assert Counter(i["label"] for i in part) == {0: expected, 1: expected, 2: expected}
    assert stratified_split(items, (0.6, 0.2, 0.2), seed=0) == splits
    assert stratified_split(list(reversed(items)), (0.6, 0.2, 0.2), seed=0) == splits
    assert stratified_split(items, (0.6, 0.2, 0.2), seed=1) != splits
    small = [{"image": f"{c}{k}.png", "label": c} for c in range(3) for k in range(3)]
    assert all(Counter(i["label"] for i in part) == {0: 1, 1: 1, 2: 1} for part in stratified_split(small).values())
    with pytest.raises(ValueError, match="0.9"):
        stratified_split(items, (0.5, 0.2, 0.2))


def test_validate_accepts_good_datalist_relative_to_base_dir(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a (1).png")
    datalist = {"training": [{"image": "imgs/a (1).png", "label": 0}], "validation": [], "test": []}
    validate_datalist(datalist, CLASS_NAMES_BUSI, base_dir=tmp_path)
    with pytest.raises(DatalistError, match="not found"):
        validate_datalist(datalist, CLASS_NAMES_BUSI, base_dir=tmp_path / "elsewhere")


def test_validate_reports_every_problem_at_once(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 3)
    garbage = tmp_path / "garbage (7).png"
    garbage.write_bytes(b"this is not a png at all")
    datalist["training"].append({"image": str(tmp_path / "gone [3].png"), "label": 0})
    datalist["training"].append({"image": str(garbage), "label": 1})
    datalist["validation"].append({"image": str(_png(tmp_path / "odd (9).png")), "label": 7})
    datalist["test"].append({"image": datalist["training"][0]["image"], "label": 0})
    datalist["test"].append({"label": 0})
    with pytest.raises(DatalistError) as err:
        validate_datalist(datalist, CLASS_NAMES_BUSI)
    msg = str(err.value)
    assert "gone [3].png" in msg and "not found" in msg and "training[3]" in msg
    assert "garbage (7).png" in msg and "unreadable" in msg and "training[4]" in msg
    assert "odd (9).png" in msg and "7" in msg and "validation[0]" in msg and "malignant" in msg
    assert "img (0).png" in msg and "duplicate" in msg and "test[0]" in msg and "training[0]" in msg
    assert "test[1]" in msg and "'image'" in msg
    assert "5 problem(s)" in msg
    # without image checks the garbage file passes, the other problems remain
    with pytest.raises(DatalistError, match="4 problem"):
        validate_datalist(datalist, CLASS_NAMES_BUSI, check_images=False)


def test_validate_reports_missing_splits_and_label_types(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 1)
    datalist["training"][0]["label"] = "benign"
    del datalist["test"]
    with pytest.raises(DatalistError) as err:
        validate_datalist(datalist, CLASS_NAMES_BUSI)
    assert "'test'" in str(err.value) and "'benign'" in str(err.value) and "img (0).png" in str(err.value)


def test_write_and_load_datalist(tmp_path: Path) -> None:
    datalist = _datalist(tmp_path, 3)
    path = write_datalist(datalist, tmp_path / "out" / "dl.json")
    assert load_datalist(path) == datalist
    assert "\n    " in path.read_text() and not list(path.parent.glob("*.tmp"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatalistError, match="bad.json"):
        load_datalist(bad)
    with pytest.raises(DatalistError, match="missing.json"):
        load_datalist(tmp_path / "missing.json")


def test_prepare_busi_on_demo_data(tmp_path: Path, demo_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = prepare_busi.main(str(demo_dir), str(tmp_path / "busi.json"), seed=2)
    datalist = load_datalist(out)
    validate_datalist(datalist, CLASS_NAMES_BUSI)
    assert datalist["labels"] == {"0": "normal", "1": "benign", "2": "malignant"} and datalist["num_classes"] == 3
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 36
    assert all(Path(i["image"]).is_absolute() for s in ("training", "validation", "test") for i in datalist[s])
    assert "training" in capsys.readouterr().out


def test_prepare_busi_on_real_data(tmp_path: Path) -> None:
    if not BUSI_DIR.is_dir():
        pytest.skip(f"real BUSI data not found at {BUSI_DIR} (set TPP_DATA_DIR)")
    datalist = json.loads(Path(prepare_busi.main(str(BUSI_DIR), str(tmp_path / "busi.json"))).read_text())
    items = [i for s in ("training", "validation", "test") for i in datalist[s]]
    counts = Counter(CLASS_NAMES_BUSI[i["label"]] for i in items)
    assert len(items) == 780 and counts == {"benign": 437, "malignant": 210, "normal": 133}
    for split in ("training", "validation", "test"):
        assert set(Counter(i["label"] for i in datalist[split])) == {0, 1, 2}
