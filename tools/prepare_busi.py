"""Convert the published BUSI layout (one folder per class) into a validated MONAI datalist.

A preset of :mod:`tools.prepare_class_folders` with BUSI's class order (``normal``, ``benign``,
``malignant``: the label indices the bundle's ``class_names`` use). The BUSI release stores
``data_dir/{benign,malignant,normal}/<class> (n).png`` with the lesion masks beside the images
(``<class> (n)_mask.png``, ``..._mask_1.png``); masks are skipped. Near-duplicate grouping is off
by default so that the split stays the one every BUSI result in this project was measured on (at
the default 4 bits BUSI has 6 near-duplicate pairs, and that split keeps each pair on one side).

Example::

    python tools/prepare_busi.py --data_dir ../shared/data/busi_classification --output busi_datalist.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.prepare_class_folders import main as prepare_class_folders  # noqa: E402
from tpp_components.data import CLASS_NAMES_BUSI  # noqa: E402


def main(
    data_dir: str,
    output: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    check_images: bool = True,
    near_duplicates: bool = False,
) -> str:
    """Write the BUSI datalist: see :func:`tools.prepare_class_folders.main` for the arguments."""
    return prepare_class_folders(
        data_dir, output, class_names=CLASS_NAMES_BUSI, seed=seed, val_fraction=val_fraction,
        test_fraction=test_fraction, near_duplicates=near_duplicates, check_images=check_images,
        name="BUSI breast ultrasound classification",
    )


if __name__ == "__main__":
    fire.Fire(main)
