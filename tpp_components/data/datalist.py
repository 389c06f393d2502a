"""MONAI datalists for class-per-folder image datasets: scan, split, validate, write.

The format is MONAI's decathlon-style JSON (``monai.data.load_decathlon_datalist`` reads it)
with ``training`` / ``validation`` / ``test`` lists of ``{"image": path, "label": int}`` plus
``labels`` (index -> class name) and ``num_classes``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

from tpp_components.io import atomic_write_text

__all__ = [
    "CLASS_NAMES_BUSI",
    "DatalistError",
    "scan_class_folders",
    "stratified_split",
    "validate_datalist",
    "write_datalist",
    "load_datalist",
    "SPLITS",
]

CLASS_NAMES_BUSI = ("normal", "benign", "malignant")
SPLITS = ("training", "validation", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatalistError(ValueError):
    """A dataset folder or datalist has problems; the message lists every one of them."""


def _is_mask(path: Path) -> bool:
    stem = path.stem
    return stem.endswith("_mask") or "_mask_" in stem


def scan_class_folders(
    root: str | os.PathLike, class_names: Sequence[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> list[dict]:
    """List the images of a one-folder-per-class dataset (masks beside the images are skipped).

    Returns:
        ``[{"image": absolute path, "label": class index}]`` sorted by path.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatalistError(f"dataset folder '{root}' does not exist.")
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    problems = [f"class folder '{root / c}' is missing" for c in class_names if c not in folders]
    problems += [f"folder '{root / f}' is not a known class (expected {list(class_names)})" for f in sorted(folders - set(class_names))]
    if problems:
        raise DatalistError(f"{root}: " + "; ".join(problems))
    items = []
    for label, name in enumerate(class_names):
        for path in sorted((root / name).iterdir()):
            if path.is_file() and path.suffix.lower() in extensions and not _is_mask(path):
                items.append({"image": str(path.resolve()), "label": label})
    return sorted(items, key=lambda d: d["image"])


def stratified_split(items: list[dict], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0) -> dict[str, list]:
    """Split per class with a seeded shuffle; deterministic for a given ``seed``."""
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {list(fractions)}.")
    rng = random.Random(seed)
    out: dict[str, list] = {s: [] for s in SPLITS}
    for label in sorted({d["label"] for d in items}):
        group = sorted((d for d in items if d["label"] == label), key=lambda d: d["image"])
        rng.shuffle(group)
        n_val = max(1, round(fractions[1] * len(group))) if len(group) >= 3 else 0
        n_test = max(1, round(fractions[2] * len(group))) if len(group) >= 3 else 0
        out["validation"] += group[:n_val]
        out["test"] += group[n_val : n_val + n_test]
        out["training"] += group[n_val + n_test :]
    return {s: sorted(v, key=lambda d: d["image"]) for s, v in out.items()}


def _check_image(path: Path) -> str | None:
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            import nibabel

            nibabel.load(str(path)).header  # noqa: B018
        else:
            from PIL import Image

            with Image.open(path) as image:
                image.verify()
    except Exception as e:  # any decoder error means unreadable
        return f"{type(e).__name__}: {e}"
    return None


def validate_datalist(
    datalist: dict, class_names: Sequence[str], base_dir: str | os.PathLike | None = None, check_images: bool = True
) -> None:
    """Check a datalist; raise one :class:`DatalistError` listing every problem by split, index and file.

    Checks: split keys present, ``image`` key present, file exists and is readable, label an
    integer class index, no image listed twice (within or across splits).
    """
    problems, seen = [], {}
    base = Path(base_dir) if base_dir else Path.cwd()
    for split in SPLITS:
        if split not in datalist:
            problems.append(f"split '{split}' is missing (keys: {sorted(datalist)})")
            continue
        for index, item in enumerate(datalist[split]):
            where = f"{split}[{index}]"
            if not isinstance(item, dict) or "image" not in item:
                problems.append(f"{where}: no 'image' key in {item!r}")
                continue
            path = Path(item["image"])
            path = path if path.is_absolute() else base / path
            label = item.get("label")
            if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(class_names):
                problems.append(f"{where} '{path}': label {label!r} is not a class index 0..{len(class_names) - 1} {list(class_names)}")
            key = str(path.resolve())
            if key in seen:
                problems.append(f"{where} '{path}': duplicate of {seen[key]}")
            seen.setdefault(key, where)
            if not path.is_file():
                problems.append(f"{where} '{path}': file not found")
            elif check_images and (error := _check_image(path)):
                problems.append(f"{where} '{path}': unreadable image ({error})")
    if problems:
        raise DatalistError(f"{len(problems)} problem(s) in the datalist:\n  " + "\n  ".join(problems))


def write_datalist(datalist: dict, path: str | os.PathLike) -> Path:
    """Write ``datalist`` as 4-space-indented JSON, atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(datalist, indent=4) + "\n")
    return path


def load_datalist(path: str | os.PathLike) -> dict:
    """Read a datalist JSON, naming the file on any error."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatalistError(f"datalist '{path}' does not exist.") from None
    except json.JSONDecodeError as e:
        raise DatalistError(f"datalist '{path}' is not valid JSON: {e}") from e
