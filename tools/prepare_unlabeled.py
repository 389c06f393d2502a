"""Pool unlabeled images for stage-0 self-supervised pretraining into a MONAI datalist.

Sources are image folders (searched recursively; mask files skipped) and/or the ``training``
split of existing datalists, so that validation and test images of the downstream task never
enter pretraining. A seeded fraction is held out as ``validation`` (held-out pretext loss).

Example::

    python tools/prepare_unlabeled.py --output pool.json \
        --folders "['../shared/data/brain_tumor_mri/Training']" --datalists "['busi_datalist.json']"
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import IMAGE_EXTENSIONS, is_mask_file, load_datalist, write_datalist  # noqa: E402


def main(output: str, folders: list[str] | tuple[str, ...] = (), datalists: list[str] | tuple[str, ...] = (),
         val_fraction: float = 0.05, seed: int = 0) -> None:
    """Write ``output`` with ``training`` / ``validation`` lists of ``{"image": path}``."""
    paths: set[str] = set()
    for folder in folders:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder '{root}' does not exist.")
        paths.update(str(p.resolve()) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not is_mask_file(p))
    for datalist in datalists:
        paths.update(str(Path(d["image"]).resolve()) for d in load_datalist(datalist)["training"])
    if not paths:
        raise ValueError("no image found in the given folders / datalists.")
    items = sorted(paths)
    random.Random(seed).shuffle(items)
    n_val = max(1, round(val_fraction * len(items)))
    write_datalist({"name": "unlabeled pool", "training": [{"image": p} for p in sorted(items[n_val:])],
                    "validation": [{"image": p} for p in sorted(items[:n_val])], "test": []}, output)
    print(f"wrote {output}: {len(items) - n_val} training, {n_val} validation images")


if __name__ == "__main__":
    fire.Fire(main)
