"""Convert the published BUSI layout (one folder per class) into a validated MONAI datalist.

The BUSI release stores ``data_dir/{benign,malignant,normal}/<class> (n).png`` with the lesion
masks beside the images (``<class> (n)_mask.png``, ``..._mask_1.png``); masks are skipped.

Example::

    python tools/prepare_busi.py --data_dir ../shared/data/busi_classification --output busi_datalist.json
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import fire

try:
    import tpp_components  # noqa: F401
except ImportError:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import (  # noqa: E402
    CLASS_NAMES_BUSI,
    SPLITS,
    build_datalist,
    scan_class_folders,
    stratified_split,
    validate_datalist,
    write_datalist,
)


def main(
    data_dir: str,
    output: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    check_images: bool = True,
) -> str:
    """Scan ``data_dir``, split stratified by class, validate and write the datalist to ``output``.

    Args:
        data_dir: folder holding ``normal/``, ``benign/`` and ``malignant/``.
        output: path of the datalist JSON to write (parent folders are created).
        seed: seed of the stratified split.
        val_fraction: fraction of every class in ``validation``.
        test_fraction: fraction of every class in ``test``; the rest goes to ``training``.
        check_images: open every image to make sure it can be read.

    Returns:
        the path of the written datalist.
    """
    fractions = (1.0 - val_fraction - test_fraction, val_fraction, test_fraction)
    if min(fractions) < 0:
        raise ValueError(f"val_fraction + test_fraction must be at most 1, got {val_fraction} + {test_fraction}")
    items = scan_class_folders(data_dir, CLASS_NAMES_BUSI)
    splits = stratified_split(items, fractions, seed=seed)
    datalist = build_datalist(splits, CLASS_NAMES_BUSI, name="BUSI breast ultrasound classification")
    datalist.update(source=str(Path(data_dir).resolve()), seed=seed)
    validate_datalist(datalist, CLASS_NAMES_BUSI, check_images=check_images)
    path = write_datalist(datalist, output)

    print(f"{'split':<11} {'total':>5}  " + "  ".join(f"{c:>9}" for c in CLASS_NAMES_BUSI))
    for split in SPLITS:
        counts = Counter(CLASS_NAMES_BUSI[item["label"]] for item in datalist[split])
        print(f"{split:<11} {len(datalist[split]):>5}  " + "  ".join(f"{counts[c]:>9}" for c in CLASS_NAMES_BUSI))
    print(f"{'all':<11} {len(items):>5}")
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
