"""Convert a one-folder-per-class image dataset into a validated MONAI datalist.

The layout: ``data_dir/<class>/<image>`` (PNG, JPEG, BMP, TIFF; grey or RGB; mask files beside
the images, ``x_mask.png``, are skipped). The classes are the sub-folders (sorted) or given by
``--class_names``, whose order fixes the label indices. Near-duplicate images (difference hashes
within ``--max_distance`` bits) are kept on one side of the split; a near-duplicate group whose
images sit in different class folders is reported.

Examples::

    python tools/prepare_class_folders.py --data_dir ../shared/data/brain_tumor_mri/Training --output brain_mri.json
    python tools/prepare_class_folders.py --data_dir /data/BUSI --output busi.json \\
        --class_names "['normal','benign','malignant']" --near_duplicates False
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import fire

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import (  # noqa: E402
    SPLITS,
    build_datalist,
    find_class_names,
    near_duplicate_groups,
    scan_class_folders,
    split_fractions,
    stratified_split,
    validate_datalist,
    write_datalist,
)


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
) -> str:
    """Scan ``data_dir``, group near-duplicates, split stratified by class, validate and write ``output``.

    Args:
        data_dir: folder holding one sub-folder of images per class.
        output: path of the datalist JSON to write (parent folders are created; written atomically).
        class_names: the classes in label order; default: the sub-folders of ``data_dir``, sorted.
        seed: seed of the stratified split.
        val_fraction: fraction of every class in ``validation``.
        test_fraction: fraction of every class in ``test``; the rest goes to ``training``.
        near_duplicates: keep near-duplicate images on one side of the split.
        max_distance: largest Hamming distance between 256-bit difference hashes that counts as a
            near-duplicate (measured on the brain tumour MRI set: pairs within 4 bits are the same
            scan re-encoded, median mean absolute difference 1.4 grey levels of 255).
        check_images: open every image to make sure it can be read.
        name: the datalist's ``name`` (default: the folder's name).

    Returns:
        the path of the written datalist.
    """
    fractions = split_fractions(val_fraction, test_fraction)
    classes = tuple(class_names) if class_names is not None else find_class_names(data_dir)
    items = scan_class_folders(data_dir, classes)
    report = []
    if near_duplicates:
        groups = near_duplicate_groups([item["image"] for item in items], max_distance)
        for item, group in zip(items, groups):
            item["group"] = group
        sizes, labels, members = Counter(groups), {}, {}
        for item in items:
            labels.setdefault(item["group"], set()).add(item["label"])
            members.setdefault(item["group"], []).append(item["image"])
        mixed = sorted(g for g, found in labels.items() if len(found) > 1)
        report.append(
            f"near-duplicates (<= {max_distance} bits): {sum(n for n in sizes.values() if n > 1)} images in "
            f"{sum(1 for n in sizes.values() if n > 1)} groups, each kept in one split"
        )
        if mixed:
            examples = [members[g][:2] for g in mixed[:3]]
            report.append(f"warning: {len(mixed)} near-duplicate group(s) span class folders, e.g. {examples}")
    splits = stratified_split(items, fractions, seed=seed)
    datalist = build_datalist(splits, classes, name=name or Path(data_dir).resolve().name)
    datalist.update(source=str(Path(data_dir).resolve()), seed=seed)
    if near_duplicates:
        datalist["near_duplicate_max_distance"] = max_distance
    validate_datalist(datalist, classes, check_images=check_images)
    path = write_datalist(datalist, output)

    width = max(9, *(len(c) for c in classes))
    print(f"{'split':<11} {'total':>5}  " + "  ".join(f"{c:>{width}}" for c in classes))
    for split in SPLITS:
        counts = Counter(classes[item["label"]] for item in datalist[split])
        print(f"{split:<11} {len(datalist[split]):>5}  " + "  ".join(f"{counts[c]:>{width}}" for c in classes))
    print(f"{'all':<11} {len(items):>5}")
    for line in report:
        print(line)
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
