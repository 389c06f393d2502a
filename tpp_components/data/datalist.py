"""Build, split, check and store classification datalists (MONAI ``load_decathlon_datalist`` style).

A datalist is a JSON object::

    {"name": "busi", "labels": {"0": "normal", "1": "benign", "2": "malignant"}, "num_classes": 3,
     "training": [{"image": "/abs/path.png", "label": 1}, ...], "validation": [...], "test": [...]}
"""

from __future__ import annotations

import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

from tpp_components.io import atomic_write_text

__all__ = [
    "CLASS_NAMES_BUSI", "IMAGE_EXTENSIONS", "MASK_FILE_PATTERN", "SPLITS", "DatalistError", "build_datalist",
    "complete_splits", "find_class_names", "is_mask_file", "load_datalist", "scan_class_folders", "scan_split_folders",
    "split_fractions", "stratified_split", "validate_datalist", "write_datalist",
]

#: BUSI class names; the label index of a class is its position.
CLASS_NAMES_BUSI: tuple[str, ...] = ("normal", "benign", "malignant")
#: file name endings accepted as images by :func:`scan_class_folders`.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: names (without extension) of segmentation masks stored beside their images, matched whole and in any case:
#: BUSI's ``x_mask`` and ``x_mask_1`` (a second lesion), HC18's ``x_Annotation``. The group ``stem`` is the
#: image's name, so the same pattern pairs masks with images (:func:`~tpp_components.data.scan_image_mask_pairs`).
MASK_FILE_PATTERN: str = r"(?i)(?P<stem>.+)_(?:mask|annotation)(?:_\d+)?"
#: split keys every datalist must have, in order.
SPLITS: tuple[str, ...] = ("training", "validation", "test")


class DatalistError(ValueError):
    """A dataset folder or a datalist is malformed; the message lists every problem found."""


def _raise_problems(what: str, problems: Sequence[str]) -> None:
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DatalistError(f"{what} has {len(problems)} problem(s):\n{lines}")


def _strip_extension(name: str) -> str:
    lower = name.lower()
    for ext in (".nii.gz", *IMAGE_EXTENSIONS, ".nii"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem


def is_mask_file(path: str | os.PathLike, pattern: str = MASK_FILE_PATTERN) -> bool:
    """Whether ``path`` is a segmentation mask stored beside its image.

    Args:
        path: a file; only its name counts.
        pattern: regular expression matched against the whole name without extension (default
            :data:`MASK_FILE_PATTERN`: ``x_mask.png``, ``x_mask_1.png``, ``x_Annotation.png``).
    """
    return re.fullmatch(pattern, _strip_extension(Path(path).name)) is not None




def find_class_names(root: str | os.PathLike) -> tuple[str, ...]:
    """The class names of a one-folder-per-class dataset: its visible sub-folders, sorted.

    Raises:
        DatalistError: ``root`` is missing or has no sub-folder.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatalistError(f"dataset folder not found: {root}")
    names = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not names:
        raise DatalistError(f"dataset folder {root} has no sub-folder: expected one folder of images per class")
    return names


def scan_class_folders(
    root: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    missing_ok: bool = False,
    classes_from: str | None = None,
) -> list[dict[str, Any]]:
    """List the images of a one-folder-per-class dataset.

    Args:
        root: folder holding one sub-folder per class, named as in ``class_names``.
        class_names: class names; the label of a class is its index in this sequence. ``None``:
            every sub-folder is a class, in sorted order (:func:`find_class_names`).
        extensions: accepted file name endings (case-insensitive).
        missing_ok: accept a ``root`` without a folder for some classes (a test set with no example
            of a class); it still needs one class folder.
        classes_from: where ``class_names`` come from (``"the training folder /data/train"``,
            ``"datalist busi.json"``), named in the error for a folder that is no class.

    Returns:
        ``[{"image": absolute path, "label": int}]`` sorted by path; mask files are skipped.

    Raises:
        DatalistError: ``root`` is missing, has sub-folders that are not classes, lacks a class
            folder (all of them with ``missing_ok``), or a class folder holds no image.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatalistError(f"dataset folder not found: {root}")
    if class_names is None:
        class_names = find_class_names(root)
    exts = tuple(e.lower() for e in extensions)
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    source = f"not a class of {classes_from}; " if classes_from else ""
    problems = [
        f"unexpected folder {name!r} in {root} ({source}expected class folders: {list(class_names)})"
        for name in sorted(subdirs - set(class_names))
    ]
    if not missing_ok or not subdirs & set(class_names):
        problems += [f"missing class folder {name!r} in {root}" for name in class_names if name not in subdirs]
    _raise_problems(f"dataset folder {root}", problems)

    items: list[dict[str, Any]] = []
    for label, name in enumerate(class_names):
        if name not in subdirs:  # missing_ok
            continue
        files = [p for p in (root / name).iterdir() if p.is_file() and p.name.lower().endswith(exts)]
        files = [p for p in files if not is_mask_file(p)]
        if not files:
            problems.append(f"class folder {root / name} holds no image ending in {list(exts)}")
        items += [{"image": str(p), "label": label} for p in files]
    _raise_problems(f"dataset folder {root}", problems)
    return sorted(items, key=lambda item: item["image"])


def scan_split_folders(
    folders: Mapping[str, str | os.PathLike], class_names: Sequence[str] | None = None
) -> tuple[tuple[str, ...], dict[str, list[dict[str, Any]]]]:
    """List the images of a dataset published in split folders (``train/``, ``val/``, ``test/``) of class folders.

    The training folder holds a folder for every class; a validation or test folder may lack some (a
    test set with no example of a class) but holds no class that training does not know.

    Args:
        folders: split key (``"training"``, ``"validation"``, ``"test"``) -> its folder of class folders;
            ``"training"`` is required.
        class_names: class names in label order; default: the class folders of the training folder, sorted.

    Returns:
        ``(class names, {split: items})`` with the items of every split in ``folders``, as
        :func:`scan_class_folders` lists them.

    Raises:
        DatalistError: a key is no split or ``"training"`` is missing; a folder is missing; the training
            folder lacks a class folder; another folder has a class folder that is not a class (the message
            names the folder and the classes).
    """
    unknown = sorted(set(folders) - set(SPLITS))
    if unknown or "training" not in folders:
        raise DatalistError(f"split folders {dict(folders)}: keys must be among {list(SPLITS)} and include "
                            f"'training'" + (f", got {unknown}" if unknown else ""))
    training = Path(folders["training"]).expanduser().resolve()
    classes = tuple(class_names) if class_names is not None else find_class_names(training)
    source = f"the training folder {training}" if class_names is None else "class_names"
    items = {
        split: scan_class_folders(folders[split], classes, missing_ok=split != "training", classes_from=source)
        for split in SPLITS if split in folders
    }
    return classes, items


def split_fractions(val_fraction: float, test_fraction: float) -> tuple[float, float, float]:
    """``(training, validation, test)`` fractions from the two a converter takes.

    Raises:
        ValueError: a fraction is negative or the two add up to more than 1.
    """
    fractions = (1.0 - val_fraction - test_fraction, float(val_fraction), float(test_fraction))
    if min(fractions) < 0:
        raise ValueError(f"val_fraction and test_fraction must be >= 0 and add up to at most 1, got {val_fraction} + {test_fraction}")
    return fractions


def _split_sizes(n: int, fractions: Sequence[float]) -> list[int]:
    """Sizes of the training/validation/test parts of a class of ``n`` items."""
    sizes = [0, round(n * fractions[1]), round(n * fractions[2])]
    if n >= 3:  # every split with a positive fraction gets at least one item
        sizes = [max(s, 1) if f > 0 else s for s, f in zip(sizes, fractions)]
        while n - sizes[1] - sizes[2] < (1 if fractions[0] > 0 else 0):
            sizes[1 if sizes[1] >= sizes[2] else 2] -= 1
    sizes[0] = max(n - sizes[1] - sizes[2], 0)
    return sizes


def stratified_split(
    items: Iterable[Mapping[str, Any]], fractions: Sequence[float] = (0.7, 0.1, 0.2), seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Split ``items`` into training/validation/test keeping the class proportions.

    Each class is sorted by image path, shuffled with ``random.Random(seed)`` and cut by
    ``fractions``. A class with at least 3 items appears in every split whose fraction is positive.

    Items that carry a ``"group"`` (near-duplicates, one patient's images) move together: the
    groups of a class (a group's class is its members' most common label) are shuffled and
    training, validation and test are filled in turn, each while a group brings it nearer its
    share of items, so the shares are met up to half a group. Without groups every item is its
    own group and the split is the plain one. The ``"group"`` key is dropped from the output.

    Args:
        items: dicts with ``"image"``, an integer ``"label"`` and optionally a ``"group"``.
        fractions: training, validation and test fractions; must sum to 1.
        seed: seed of the shuffle; the result depends only on it and the items.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted by image path.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"fractions must be three non-negative numbers, got {fractions}")
    if abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions):g})")
    groups: dict[Any, list[dict[str, Any]]] = {}
    for index, item in enumerate(items):
        entry = dict(item)
        groups.setdefault(entry.pop("group", ("item", index)), []).append(entry)
    by_label: dict[int, list[list[dict[str, Any]]]] = {}
    for members in groups.values():
        members.sort(key=lambda item: str(item["image"]))
        label = Counter(int(m["label"]) for m in members).most_common()
        best = max(count for _, count in label)
        by_label.setdefault(min(lab for lab, count in label if count == best), []).append(members)
    rng = random.Random(seed)
    out: dict[str, list[dict[str, Any]]] = {key: [] for key in SPLITS}
    for label in sorted(by_label):
        class_groups = sorted(by_label[label], key=lambda members: str(members[0]["image"]))
        rng.shuffle(class_groups)
        sizes = _split_sizes(sum(len(m) for m in class_groups), fractions)
        split, filled = 0, 0
        for members in class_groups:
            # move on once this group would overshoot the share more than it falls short (singletons:
            # once the share is reached, the plain split)
            while split < len(SPLITS) - 1 and filled + len(members) / 2 > sizes[split]:
                split, filled = split + 1, 0
            out[SPLITS[split]] += members
            filled += len(members)
    return {key: sorted(part, key=lambda item: str(item["image"])) for key, part in out.items()}


def complete_splits(
    given: Mapping[str, Sequence[Mapping[str, Any]]], fractions: Sequence[float], seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Keep the splits given as folders and carve the others from the training items.

    ``given["training"]`` is split by :func:`stratified_split` with ``fractions`` (so near-duplicate
    ``"group"`` s stay on one side); a validation or test split in ``given`` keeps its items and needs a
    zero fraction. With only ``"training"`` given this is ``stratified_split(given["training"], fractions, seed)``.

    Args:
        given: split key -> items (dicts with ``"image"``, ``"label"``, optionally ``"group"``); needs ``"training"``.
        fractions: training, validation and test fractions of the training items (:func:`split_fractions`).
        seed: seed of the split.

    Returns:
        ``{"training": [...], "validation": [...], "test": [...]}``, each sorted by image path, without ``"group"``.

    Raises:
        ValueError: a given split also has a positive fraction (it would get items from both).
    """
    clash = [split for split, fraction in zip(SPLITS[1:], fractions[1:]) if split in given and fraction > 0]
    if clash:
        raise ValueError(f"splits {clash} are given as folders and cannot also be carved from training "
                         f"(fractions {tuple(fractions)}): give them fraction 0")
    out = stratified_split(given["training"], fractions, seed=seed)
    for split in SPLITS[1:]:
        if split in given:
            kept = [{k: v for k, v in item.items() if k != "group"} for item in given[split]]
            out[split] = sorted(kept, key=lambda item: str(item["image"]))
    return out


def build_datalist(
    splits: Mapping[str, Sequence[Mapping[str, Any]]], class_names: Sequence[str], name: str = "dataset"
) -> dict[str, Any]:
    """Wrap the output of :func:`stratified_split` in the datalist format (with the label names)."""
    datalist: dict[str, Any] = {
        "name": name,
        "labels": {str(i): c for i, c in enumerate(class_names)},
        "num_classes": len(class_names),
    }
    datalist.update({key: [dict(item) for item in splits.get(key, [])] for key in SPLITS})
    return datalist


def _image_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as an image, or None when it can."""
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            import nibabel

            nibabel.load(str(path)).header.get_data_shape()
        else:
            from PIL import Image

            with Image.open(path) as img:
                img.load()  # a full decode: verify() passes a truncated JPEG
    except Exception as e:  # any reader error means the file is unusable
        return f"{type(e).__name__}: {e}"
    return None


def validate_datalist(
    datalist: Mapping[str, Any],
    class_names: Sequence[str],
    base_dir: str | os.PathLike | None = None,
    check_images: bool = True,
) -> None:
    """Check a datalist and raise one :class:`DatalistError` listing every problem.

    Checks: the split keys exist and are lists; every entry has an ``"image"`` that exists (and,
    with ``check_images``, can be read) and an integer ``"label"`` in ``range(len(class_names))``;
    no image appears twice across all splits; ``"labels"``/``"num_classes"``, when present, agree
    with ``class_names``.

    Args:
        datalist: the datalist dict.
        class_names: expected class names, in label order.
        base_dir: folder relative image paths are resolved against (default: current directory).
        check_images: also open every image (a full PIL decode; nibabel header for NIfTI).
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    valid = f"0..{len(class_names) - 1} ({', '.join(class_names)})"
    problems: list[str] = []
    if not isinstance(datalist, Mapping):
        raise DatalistError(f"datalist must be a JSON object, got {type(datalist).__name__}")
    expected = {str(i): c for i, c in enumerate(class_names)}
    if "labels" in datalist and dict(datalist["labels"]) != expected:
        problems.append(f"'labels' is {datalist['labels']}, expected {expected}")
    if "num_classes" in datalist and datalist["num_classes"] != len(class_names):
        problems.append(f"'num_classes' is {datalist['num_classes']!r}, expected {len(class_names)}")
    seen: dict[Path, str] = {}
    for split in SPLITS:
        if split not in datalist:
            problems.append(f"required split {split!r} is missing")
            continue
        if not isinstance(datalist[split], list):
            problems.append(f"split {split!r} must be a list, got {type(datalist[split]).__name__}")
            continue
        for index, entry in enumerate(datalist[split]):
            where = f"{split}[{index}]"
            if not isinstance(entry, Mapping) or "image" not in entry:
                problems.append(f"{where}: entry has no 'image' key: {entry!r}")
                continue
            image = entry["image"]
            label = entry.get("label")
            if not isinstance(label, Integral) or isinstance(label, bool) or not 0 <= label < len(class_names):
                problems.append(f"{where} ({image}): label {label!r} is not a known class, valid labels are {valid}")
            if not isinstance(image, (str, os.PathLike)):
                problems.append(f"{where}: 'image' must be a path, got {image!r}")
                continue
            path = Path(image) if Path(image).is_absolute() else base / image
            path = path.resolve()
            if path in seen:
                problems.append(f"{where}: duplicate entry {path} (already listed at {seen[path]})")
            else:
                seen[path] = where
            if not path.is_file():
                problems.append(f"{where}: image file not found: {path}")
            elif check_images and (reason := _image_problem(path)) is not None:
                problems.append(f"{where}: unreadable image {path}: {reason}")
    _raise_problems("datalist", problems)


def write_datalist(datalist: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``datalist`` as indented JSON, atomically (temporary file beside ``path``, then ``os.replace``)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(datalist, indent=4) + "\n")
    return path


def load_datalist(path: str | os.PathLike) -> dict[str, Any]:
    """Read a datalist JSON file.

    Raises:
        DatalistError: the file is missing, is not valid JSON, or is not a JSON object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatalistError(f"datalist file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatalistError(f"datalist file {path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise DatalistError(f"datalist file {path} must hold a JSON object, got {type(data).__name__}")
    return data
