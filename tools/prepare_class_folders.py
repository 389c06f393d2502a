"""Convert a one-folder-per-class image dataset into a validated MONAI datalist.

The layout: ``data_dir/<class>/<image>`` (PNG, JPEG, BMP, TIFF; grey or RGB; mask files beside
the images, ``x_mask.png``, are skipped). The classes are the sub-folders (sorted) or given by
``--class_names``, whose order fixes the label indices. Near-duplicate images (difference hashes
within ``--max_distance`` bits) are kept on one side of the split; a near-duplicate group whose
images sit in different class folders is reported.

A dataset published in split folders (``train/``, ``val/``, ``test/``, each holding class folders) keeps
its split with ``--split_dirs``: every image stays in the split of its folder, and a split without a
folder (often validation) is carved from the training folder as above, with ``--val_fraction`` /
``--test_fraction``. ``--test_dir`` names a separate folder of class folders that becomes the whole
``test`` section. The classes are the training folder's (or ``--class_names``); another folder may lack
a class but holds no other. Near-duplicates across the given folders (the same scan in train and test)
are not moved: they are reported with examples. To add a test folder to a datalist written before, use
``tools/add_test_folder.py``.

Examples::

    python tools/prepare_class_folders.py --data_dir ../shared/data/brain_tumor_mri/Training --output brain_mri.json
    python tools/prepare_class_folders.py --data_dir /data/BUSI --output busi.json \\
        --class_names "['normal','benign','malignant']" --near_duplicates False
    python tools/prepare_class_folders.py --data_dir /data/chest_xray --output chest.json \\
        --split_dirs "{'training': 'train', 'validation': 'val', 'test': 'test'}"
    python tools/prepare_class_folders.py --data_dir /data/brain_mri/Training --test_dir /data/brain_mri/Testing \\
        --output brain_mri_test.json
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import fire

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import (  # noqa: E402
    SPLITS,
    DatalistError,
    build_datalist,
    complete_splits,
    near_duplicate_groups,
    scan_split_folders,
    spanning_groups,
    split_fractions,
    validate_datalist,
    write_datalist,
)


def split_folders(
    data_dir: str, split_dirs: Mapping[str, str] | None = None, test_dir: str | None = None
) -> dict[str, Path]:
    """The folder of every split that has one: ``data_dir`` is the training folder unless ``split_dirs`` names one.

    Raises:
        DatalistError: ``split_dirs`` is not a mapping, or it names a test folder and ``test_dir`` another.
    """
    root = Path(data_dir).expanduser().resolve()
    if split_dirs is None:
        folders = {"training": root}
    elif isinstance(split_dirs, Mapping):
        folders = {str(split): root / str(folder) for split, folder in split_dirs.items()}
    else:
        raise DatalistError(f"split_dirs must map splits to folders of {root}, e.g. "
                            f"\"{{'training': 'train', 'validation': 'val', 'test': 'test'}}\", got {split_dirs!r}")
    if test_dir is not None:
        if "test" in folders:
            raise DatalistError(f"two test folders: split_dirs names {folders['test']}, test_dir {test_dir}; give one")
        folders["test"] = Path(test_dir).expanduser().resolve()
    return folders


def spanning_warning(
    what: str, images: Sequence[str], groups: Sequence[int], sides: Sequence[Hashable], examples: int = 3
) -> list[str]:
    """A warning line on the near-duplicate groups that span ``sides`` (one image of each side per example), or none."""
    spanning = spanning_groups(groups, sides)
    if not spanning:
        return []
    shown = [{side: images[members[0]] for side, members in by_side.items()} for by_side in spanning[:examples]]
    return [f"warning: {len(spanning)} near-duplicate group(s) span {what}, e.g. {shown}"]


def print_split_counts(datalist: Mapping[str, Any], class_names: Sequence[str]) -> None:
    """Print the images per split and class, and the total."""
    width = max(9, *(len(c) for c in class_names))
    print(f"{'split':<11} {'total':>5}  " + "  ".join(f"{c:>{width}}" for c in class_names))
    for split in SPLITS:
        counts = Counter(class_names[item["label"]] for item in datalist[split])
        print(f"{split:<11} {len(datalist[split]):>5}  " + "  ".join(f"{counts[c]:>{width}}" for c in class_names))
    print(f"{'all':<11} {sum(len(datalist[split]) for split in SPLITS):>5}")


def main(
    data_dir: str,
    output: str,
    class_names: Sequence[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    near_duplicates: bool = True,
    max_distance: int = 4,
    check_images: bool = True,
    name: str | None = None,
    split_dirs: Mapping[str, str] | None = None,
    test_dir: str | None = None,
) -> str:
    """Scan ``data_dir``, group near-duplicates, split stratified by class, validate and write ``output``.

    Args:
        data_dir: folder holding one sub-folder of images per class (with ``split_dirs``: the split folders).
        output: path of the datalist JSON to write (parent folders are created; written atomically).
        class_names: the classes in label order; default: the sub-folders of the training folder, sorted.
        seed: seed of the stratified split.
        val_fraction: fraction of every class of the training folder in ``validation``, when no folder is
            given for it.
        test_fraction: fraction of every class of the training folder in ``test``, when no folder is given
            for it; the rest goes to ``training``.
        near_duplicates: keep near-duplicate images on one side of the split (and report those across
            given split folders).
        max_distance: largest Hamming distance between 256-bit difference hashes that counts as a
            near-duplicate (measured on the brain tumour MRI set: pairs within 4 bits are the same
            scan re-encoded, median mean absolute difference 1.4 grey levels of 255).
        check_images: open every image to make sure it can be read.
        name: the datalist's ``name`` (default: the folder's name).
        split_dirs: the published split folders, relative to ``data_dir``, each holding class folders,
            e.g. ``{'training': 'train', 'validation': 'val', 'test': 'test'}``; ``'training'`` is
            required, a split without a folder is carved from it. Default: ``data_dir`` is the training folder.
        test_dir: a separate folder of class folders that becomes the whole ``test`` section.

    Returns:
        the path of the written datalist.
    """
    folders = split_folders(data_dir, split_dirs, test_dir)
    # the splits with a folder keep it; the others are carved from the training folder
    fractions = split_fractions(0.0 if "validation" in folders else val_fraction,
                                0.0 if "test" in folders else test_fraction)
    classes, given = scan_split_folders(folders, class_names)
    items = [item for part in given.values() for item in part]
    report = []
    if near_duplicates:
        groups = near_duplicate_groups([item["image"] for item in items], max_distance)
        for item, group in zip(items, groups):
            item["group"] = group
        sizes = Counter(groups)
        where = "" if len(folders) == 1 else " where a split is carved from the training folder"
        report.append(
            f"near-duplicates (<= {max_distance} bits): {sum(n for n in sizes.values() if n > 1)} images in "
            f"{sum(1 for n in sizes.values() if n > 1)} groups, each kept in one split{where}"
        )
        images = [item["image"] for item in items]
        report += spanning_warning("class folders", images, groups, [classes[item["label"]] for item in items])
        report += spanning_warning(
            "the given split folders and stay in their splits (a score on one split may reflect memory of the "
            "other)", images, groups, [split for split, part in given.items() for _ in part])
    splits = complete_splits(given, fractions, seed=seed)
    datalist = build_datalist(splits, classes, name=name or Path(data_dir).resolve().name)
    datalist.update(source=str(Path(data_dir).resolve()), seed=seed)
    if len(folders) > 1:
        datalist["split_folders"] = {split: str(folder) for split, folder in folders.items()}
    if near_duplicates:
        datalist["near_duplicate_max_distance"] = max_distance
    validate_datalist(datalist, classes, check_images=check_images)
    path = write_datalist(datalist, output)

    print_split_counts(datalist, classes)
    if len(folders) > 1:
        for split, fraction in zip(SPLITS[1:], fractions[1:]):
            carved = f"carved from the training folder {folders['training']} ({fraction:g} of each class)"
            print(f"{split}: " + (f"the folder {folders[split]}" if split in folders else carved))
    for line in report:
        print(line)
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
