"""Convert the published BUSI layout (one folder per class) into a validated MONAI datalist.

Example::

    python tools/prepare_busi.py --data_dir ../shared/data/busi_classification --output busi_datalist.json
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import CLASS_NAMES_BUSI, scan_class_folders, stratified_split, validate_datalist, write_datalist  # noqa: E402


def main(
    data_dir: str,
    output: str,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    check_images: bool = True,
) -> dict:
    """Scan ``data_dir/{normal,benign,malignant}``, split stratified by class, validate and write ``output``."""
    items = scan_class_folders(data_dir, CLASS_NAMES_BUSI)
    splits = stratified_split(items, (1.0 - val_fraction - test_fraction, val_fraction, test_fraction), seed=seed)
    datalist = {
        "name": "BUSI breast ultrasound classification",
        "source": str(Path(data_dir).resolve()),
        "seed": seed,
        "labels": {str(i): n for i, n in enumerate(CLASS_NAMES_BUSI)},
        "num_classes": len(CLASS_NAMES_BUSI),
        **splits,
    }
    validate_datalist(datalist, CLASS_NAMES_BUSI, check_images=check_images)
    write_datalist(datalist, output)
    for split in ("training", "validation", "test"):
        counts = Counter(CLASS_NAMES_BUSI[d["label"]] for d in splits[split])
        print(f"{split:<11} {len(splits[split]):>5}  " + "  ".join(f"{c} {counts[c]}" for c in CLASS_NAMES_BUSI))
    print(f"wrote {output}")
    return datalist


if __name__ == "__main__":
    fire.Fire(lambda **kw: main(**kw) and None)
