"""The image / mask-pair converter: naming patterns, united masks, images without masks, bad pairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import DATA_DIR
from tools.prepare_image_mask_pairs import main as prepare_pairs
from tpp_components.data import DatalistError
from tpp_components.data.mask_pairs import scan_image_mask_pairs

BUSI_SEG_DIR = DATA_DIR / "busi_segmentation"


def _image(path: Path, size: tuple[int, int] = (40, 30), seed: int = 0, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    img = Image.fromarray(pixels)
    (img.convert(mode) if mode != "L" else img).save(path)
    return path


def _mask(path: Path, box: tuple[int, int, int, int] | None, size: tuple[int, int] = (40, 30), mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.zeros((size[1], size[0]), np.uint8)
    if box is not None:
        x0, y0, x1, y1 = box
        pixels[y0:y1, x0:x1] = 255
    img = Image.fromarray(pixels)
    (img.convert(mode) if mode != "L" else img).save(path)
    return path


def _busi_like(root: Path) -> Path:
    for c, name in enumerate(["benign", "malignant", "normal"]):
        for i in range(1, 11):
            image = _image(root / name / f"{name} ({i}).png", seed=10 * c + i, mode="RGB" if i % 3 == 0 else "L")
            if name == "normal":
                _mask(image.with_name(f"{name} ({i})_mask.png"), None)
            elif not (name == "benign" and i == 10):  # one image without a mask
                _mask(image.with_name(f"{name} ({i})_mask.png"), (2, 2, 10, 10), mode="RGB" if i == 1 else "L")
    _mask(root / "benign" / "benign (2)_mask_1.png", (20, 15, 30, 25))  # a second lesion
    return root


def test_scan_pairs_with_the_default_and_a_custom_pattern(tmp_path: Path) -> None:
    root = _busi_like(tmp_path / "busi [seg]")
    pairs = {p.image.name: p for p in scan_image_mask_pairs(root)}
    assert len(pairs) == 30
    assert [m.name for m in pairs["benign (2).png"].masks] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]
    assert pairs["benign (10).png"].masks == [] and pairs["normal (1).png"].group == "normal"
    other = tmp_path / "other"
    _image(other / "images" / "case 1.png")
    _mask(tmp_path / "labels" / "images" / "case 1-seg.png", (0, 0, 4, 4))
    found = scan_image_mask_pairs(other, r"(?P<stem>.+)-seg", mask_root=tmp_path / "labels")
    assert [m.name for m in found[0].masks] == ["case 1-seg.png"]
    with pytest.raises(DatalistError, match="named group 'stem'"):
        scan_image_mask_pairs(root, r".+_mask")
    _image(root / "malignant" / "malignant (1).jpg")
    with pytest.raises(DatalistError, match=r"differ only in extension.*malignant \(1\)"):
        scan_image_mask_pairs(root)
    (root / "malignant" / "malignant (1).jpg").unlink()
    _mask(root / "benign" / "stray (9)_mask.png", None)
    with pytest.raises(DatalistError, match=r"stray \(9\)_mask.png"):
        scan_image_mask_pairs(root)


def test_converter_unites_masks_reports_missing_and_keeps_empty(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _busi_like(tmp_path / "data")
    out = prepare_pairs(str(root), str(tmp_path / "out" / "seg.json"), seed=0)
    datalist = json.loads(Path(out).read_text())
    entries = {Path(e["image"]).name: e for s in ("training", "validation", "test") for e in datalist[s]}
    assert len(entries) == 29 and datalist["labels"] == {"0": "background", "1": "lesion"}
    assert [Path(p).name for p in datalist["without_mask"]] == ["benign (10).png"]
    united = np.asarray(Image.open(entries["benign (2).png"]["label"]))
    assert united.shape == (30, 40) and set(np.unique(united)) == {0, 1}
    assert united[5, 5] == 1 and united[20, 25] == 1 and united.sum() == 64 + 100
    assert np.asarray(Image.open(entries["benign (1).png"]["label"])).sum() == 64  # RGB mask read as grey
    assert np.asarray(Image.open(entries["normal (4).png"]["label"])).sum() == 0
    assert {e["class"] for e in entries.values()} == {"benign", "malignant", "normal"}
    printed = capsys.readouterr().out
    assert "1 with several masks" in printed and "10 empty masks" in printed and "without a mask" in printed


def test_converter_warns_of_outline_masks_and_fills_them_on_request(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A 1-px ring (HC18's ellipse annotations) is named in a warning; ``--fill_holes True`` writes the region."""
    root = tmp_path / "data"
    for i in range(10):
        _image(root / f"{i:03d}_HC.png", seed=i)
        ring = np.zeros((30, 40), np.uint8)
        ring[5:25, 8:32] = 255
        ring[6:24, 9:31] = 0  # a closed outline: 1 px wide
        Image.fromarray(ring).save(root / f"{i:03d}_HC_Annotation.png")
    _mask(root / "010_HC_Annotation.png", (8, 5, 32, 25))  # one filled region: not named
    _image(root / "010_HC.png", seed=10)
    pattern = r"(?P<stem>.+)_Annotation"
    out = prepare_pairs(str(root), str(tmp_path / "seg.json"), mask_pattern=pattern, near_duplicates=False)
    printed = capsys.readouterr().out
    assert "WARNING: mask" in printed and "000_HC_Annotation.png' looks like an outline" in printed
    assert "010_HC_Annotation.png" not in printed and "--fill_holes True" in printed
    first = next(e for s in ("training", "validation", "test") for e in json.loads(Path(out).read_text())[s])
    assert np.asarray(Image.open(first["label"])).sum() < 100  # written as given: an outline
    out = prepare_pairs(str(root), str(tmp_path / "filled.json"), mask_pattern=pattern, near_duplicates=False,
                        fill_holes=True)
    assert "looks like an outline" not in capsys.readouterr().out
    for e in (e for s in ("training", "validation", "test") for e in json.loads(Path(out).read_text())[s]):
        assert np.asarray(Image.open(e["label"])).sum() == 20 * 24  # every mask the filled region


def test_converter_refuses_a_mask_of_another_size_before_writing(tmp_path: Path) -> None:
    root = _busi_like(tmp_path / "data")
    _mask(root / "malignant" / "malignant (3)_mask_1.png", (0, 0, 5, 5), size=(55, 46))
    output = tmp_path / "out" / "seg.json"
    with pytest.raises(DatalistError, match=r"malignant \(3\)_mask_1.png' is 55x46 pixels .* 40x30"):
        prepare_pairs(str(root), str(output))
    assert not output.exists() and not (tmp_path / "out" / "seg_masks").exists()
    datalist = json.loads(Path(prepare_pairs(str(root), str(output), skip_bad_pairs=True)).read_text())
    assert len(datalist["left_out"]) == 1 and "malignant (3)_mask_1.png" in datalist["left_out"][0]
    assert sum(len(datalist[s]) for s in ("training", "validation", "test")) == 28


def test_converter_on_real_busi_segmentation(tmp_path: Path) -> None:
    if not BUSI_SEG_DIR.is_dir():
        pytest.skip(f"real BUSI segmentation data not found at {BUSI_SEG_DIR} (set TPP_DATA_DIR)")
    # this copy has one second mask of another size (benign (4)_mask_1.png, 555x465 for a 416x416 image)
    with pytest.raises(DatalistError, match=r"benign \(4\)_mask_1.png"):
        prepare_pairs(str(BUSI_SEG_DIR), str(tmp_path / "seg.json"))
    datalist = json.loads(Path(prepare_pairs(str(BUSI_SEG_DIR), str(tmp_path / "seg.json"), skip_bad_pairs=True)).read_text())
    entries = [e for s in ("training", "validation", "test") for e in datalist[s]]
    assert len(entries) == 148 and len(datalist["left_out"]) == 1
    for entry in entries[:20]:
        with Image.open(entry["image"]) as img, Image.open(entry["label"]) as mask:
            assert img.size == mask.size
    foreground = [np.asarray(Image.open(e["label"])).any() for e in entries if e["class"] != "normal"]
    assert all(foreground)
