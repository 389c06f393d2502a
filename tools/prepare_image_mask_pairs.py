"""Convert a 2D image / mask-pair dataset into a validated MONAI segmentation datalist.

Images may sit in class sub-folders (the split keeps their proportions); masks sit beside the
images or in a mirrored folder tree and are recognised by ``--mask_pattern`` (a regular expression
on the name without extension with a ``stem`` group: BUSI's ``x_mask``, ``x_mask_1`` by default).
Every image's masks are united into one binary mask (0 background, 1 foreground), checked to
have the image's size and written as PNG under ``--mask_output``; an image without a mask is
reported and left out, never guessed; an empty mask is kept (all background) and counted. A mask
drawn as an outline (filling its holes grows it more than ``OUTLINE_GROWTH`` times, e.g. HC18's
``_Annotation`` ellipses) gets a warning naming the file; ``--fill_holes True`` fills every mask.

Example::

    python tools/prepare_image_mask_pairs.py --data_dir ../shared/data/busi_segmentation \\
        --output runs/busi_seg/busi_seg.json
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import fire
import numpy as np

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import SPLITS, DatalistError, near_duplicate_groups, split_fractions, stratified_split, write_datalist  # noqa: E402
from tpp_components.data.mask_pairs import DEFAULT_MASK_PATTERN, ImageMasks, scan_image_mask_pairs  # noqa: E402
from tpp_components.data.outlines import OUTLINE_GROWTH, outline_growth  # noqa: E402
from tpp_components.data.outlines import fill_holes as fill_mask_holes  # noqa: E402  (main has a fill_holes flag)
from tpp_components.io import atomic_path  # noqa: E402


def _read(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L") if img.mode not in ("L", "1", "I", "I;16") else img)
    except Exception as e:  # PIL raises several types for unreadable files
        raise DatalistError(f"cannot read '{path}': {type(e).__name__}: {e}") from e


def unite_masks(item: ImageMasks) -> np.ndarray:
    """The union of ``item``'s masks (any non-zero pixel is foreground), ``(height, width)`` bool.

    Raises:
        DatalistError: an image or a mask cannot be read, or a mask's size differs from the image's.
    """
    from PIL import Image

    try:
        with Image.open(item.image) as img:
            width, height = img.size
    except Exception as e:  # PIL raises several types for unreadable files
        raise DatalistError(f"cannot read image '{item.image}': {type(e).__name__}: {e}") from e
    union = np.zeros((height, width), dtype=bool)
    for mask_path in item.masks:
        mask = _read(mask_path)
        if mask.shape[:2] != union.shape:
            raise DatalistError(
                f"mask '{mask_path}' is {mask.shape[1]}x{mask.shape[0]} pixels but its image '{item.image}' is "
                f"{width}x{height}: expected the same size")
        union |= mask > 0
    return union


def write_mask(mask: np.ndarray, destination: Path) -> Path:
    """Write a 0/1 mask as an 8-bit PNG, atomically."""
    from PIL import Image

    with atomic_path(destination) as tmp:
        Image.fromarray(mask.astype(np.uint8)).save(tmp, format="PNG")
    return destination


def main(
    data_dir: str,
    output: str,
    mask_pattern: str = DEFAULT_MASK_PATTERN,
    mask_dir: str | None = None,
    mask_output: str | None = None,
    foreground: str = "lesion",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    near_duplicates: bool = True,
    max_distance: int = 4,
    skip_bad_pairs: bool = False,
    fill_holes: bool = False,
    name: str | None = None,
) -> str:
    """Pair, unite, split and write the datalist ``{"image": ..., "label": mask, "class": folder}``.

    Args:
        data_dir: dataset folder (images, possibly in class sub-folders).
        output: datalist JSON to write (atomically).
        mask_pattern: regular expression with a ``stem`` group recognising mask file names.
        mask_dir: folder of the masks if not beside the images (sub-folders mirror ``data_dir``'s).
        mask_output: where the united 0/1 masks go (default: ``<output stem>_masks`` beside ``output``).
        foreground: name of label 1 in the datalist's ``labels``.
        seed: seed of the split.
        val_fraction / test_fraction: shares of every class folder in validation / test.
        near_duplicates: keep near-duplicate images on one side of the split.
        max_distance: near-duplicate threshold in bits of the 256-bit difference hash.
        skip_bad_pairs: leave out (and list under ``left_out``) images whose image or masks cannot
            be read or whose masks differ in size; by default any such pair stops the conversion
            before anything is written, with every problem listed.
        fill_holes: fill every united mask's enclosed holes (for datasets whose masks are outlines).
        name: the datalist's ``name`` (default: the folder's name).

    Returns:
        the path of the written datalist.
    """
    fractions = split_fractions(val_fraction, test_fraction)
    out = Path(output)
    masks_out = Path(mask_output) if mask_output else out.parent / f"{out.stem}_masks"
    pairs = scan_image_mask_pairs(data_dir, mask_pattern, mask_dir)
    without = [str(p.image) for p in pairs if not p.masks]
    pairs = [p for p in pairs if p.masks]
    if not pairs:
        raise DatalistError(f"no image in {data_dir} has a mask matching {mask_pattern!r}")
    united, problems = [], []
    for pair in pairs:
        try:
            united.append((pair, unite_masks(pair)))
        except DatalistError as e:
            problems.append(str(e))
    if problems and not skip_bad_pairs:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise DatalistError(f"{len(problems)} image/mask pair(s) in {data_dir} are unusable (nothing was written; "
                            f"--skip_bad_pairs True leaves them out):\n{listed}")
    classes = sorted({pair.group for pair, _ in united})
    root = Path(data_dir).expanduser().resolve()
    items, empty, several, outlines = [], 0, 0, []
    for pair, mask in united:
        growth = outline_growth(mask)
        if fill_holes:
            mask = fill_mask_holes(mask)
        elif growth >= OUTLINE_GROWTH:
            outlines.append((pair.masks[0], float(mask.mean()), growth))
        path = write_mask(mask, masks_out / pair.image.relative_to(root).with_suffix(".png"))
        empty += not mask.any()
        several += len(pair.masks) > 1
        items.append({"image": str(pair.image), "mask": str(path.resolve()), "label": classes.index(pair.group)})
    if near_duplicates:
        for item, group in zip(items, near_duplicate_groups([i["image"] for i in items], max_distance)):
            item["group"] = group
    splits = stratified_split(items, fractions, seed=seed)
    datalist = {
        "name": name or Path(data_dir).resolve().name,
        "labels": {"0": "background", "1": foreground},
        "num_classes": 2,
        **{s: [{"image": i["image"], "label": i["mask"], "class": classes[i["label"]]} for i in splits[s]] for s in SPLITS},
        "without_mask": without,
        "left_out": problems,
        "source": str(Path(data_dir).resolve()),
        "seed": seed,
    }
    path = write_datalist(datalist, out)
    print(f"{'split':<11} {'total':>5}  " + "  ".join(f"{c or '.':>10}" for c in classes))
    for split in SPLITS:
        counts = Counter(i["class"] for i in datalist[split])
        print(f"{split:<11} {len(datalist[split]):>5}  " + "  ".join(f"{counts[c]:>10}" for c in classes))
    print(f"{len(items)} image/mask pairs ({several} with several masks, united; {empty} empty masks kept as all "
          f"background); masks written to {masks_out}")
    for problem in problems:
        print(f"left out: {problem}")
    for mask_path, share, growth in outlines[:10]:
        print(f"WARNING: mask '{mask_path}' looks like an outline, not a filled region: {100 * share:.2f} % foreground, "
              f"filling its holes grows it {growth:.0f}x; --fill_holes True fills the masks")
    if len(outlines) > 10:
        print(f"WARNING: {len(outlines)} masks look like outlines in all (the first 10 are named above)")
    if without:
        print(f"{len(without)} image(s) without a mask left out (listed under 'without_mask'): " + ", ".join(without[:5])
              + (" ..." if len(without) > 5 else ""))
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
