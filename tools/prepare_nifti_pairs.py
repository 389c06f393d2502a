"""Convert 3D NIfTI image / label pairs into a validated MONAI segmentation datalist.

Reads a Medical Segmentation Decathlon task folder (``--msd_dir``, through its ``dataset.json``) or
two folders of NIfTI files paired by name (``--images_dir`` / ``--labels_dir``, optionally with
``--label_pattern``). Every pair's headers are compared (shape, affine) before anything is written;
``--foreground`` picks the label id(s) the bundle segments (the datalist records them; the bundle's
transforms map them to 1 and everything else to 0), and with ``--check_foreground`` every label
volume is read to report those that hold none of them.

Examples::

    python tools/prepare_nifti_pairs.py --msd_dir /data/Task09_Spleen --output spleen.json --foreground 1
    python tools/prepare_nifti_pairs.py --images_dir ct --labels_dir seg --label_pattern "(?P<stem>.+)_seg" \\
        --output liver.json --foreground 5 --foreground_name liver
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import SPLITS, DatalistError, split_fractions, write_datalist  # noqa: E402
from tpp_components.data.checks import check_datalist  # noqa: E402
from tpp_components.data.nifti_pairs import check_volume_pair, read_msd_dataset, scan_nifti_folders  # noqa: E402


def split_volumes(pairs: Sequence[dict], fractions: Sequence[float], seed: int) -> dict[str, list[dict]]:
    """Shuffle the pairs (sorted by image first) and cut them by ``fractions``; with at least 3
    volumes every split with a positive fraction gets one."""
    ordered = sorted((dict(p) for p in pairs), key=lambda p: p["image"])
    random.Random(seed).shuffle(ordered)
    n = len(ordered)
    val, test = (round(n * f) for f in fractions[1:])
    if n >= 3:
        val, test = max(val, 1 if fractions[1] > 0 else 0), max(test, 1 if fractions[2] > 0 else 0)
        while n - val - test < 1:
            val, test = (val - 1, test) if val >= test else (val, test - 1)
    train = n - val - test
    parts = {"training": ordered[:train], "validation": ordered[train:train + val], "test": ordered[train + val:]}
    return {k: sorted(v, key=lambda p: p["image"]) for k, v in parts.items()}


def main(
    output: str,
    msd_dir: str | None = None,
    images_dir: str | None = None,
    labels_dir: str | None = None,
    label_pattern: str = r"(?P<stem>.+)",
    foreground: int | Sequence[int] = 1,
    foreground_name: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    check_foreground: bool = True,
    check_voxels: bool = True,
    name: str | None = None,
) -> str:
    """Pair, check, split and write ``{"image": ..., "label": ...}`` entries to ``output``.

    Args:
        output: datalist JSON to write (atomically).
        msd_dir: an MSD task folder (``dataset.json``, ``imagesTr/``, ``labelsTr/``).
        images_dir / labels_dir: two NIfTI folders, when there is no ``dataset.json``.
        label_pattern: regular expression whose ``stem`` group turns a label's name into its image's.
        foreground: label id, or ids united, that the bundle segments as foreground.
        foreground_name: its name (default: from the MSD ``labels``, else ``"foreground"``).
        seed: seed of the split (by volume).
        val_fraction / test_fraction: shares of volumes in validation / test.
        check_foreground: read every label volume and report those without any foreground voxel.
        check_voxels: decode every volume (a truncated ``.nii.gz`` has a good header) and refuse NaN/inf
            intensities and label values that are not non-negative integers.
        name: the datalist's ``name``.

    Returns:
        the path of the written datalist.
    """
    if (msd_dir is None) == (images_dir is None or labels_dir is None):
        raise ValueError("give either --msd_dir, or both --images_dir and --labels_dir")
    fractions = split_fractions(val_fraction, test_fraction)
    ids = [int(foreground)] if isinstance(foreground, (int, np.integer)) else [int(i) for i in foreground]
    if not ids or any(i <= 0 for i in ids):
        raise ValueError(f"foreground must be one or more positive label ids, got {foreground!r}")
    meta, without = {}, []
    if msd_dir is not None:
        pairs, label_names, meta = read_msd_dataset(msd_dir)
        source = msd_dir
    else:
        pairs, without = scan_nifti_folders(images_dir, labels_dir, label_pattern)
        label_names, source = {}, images_dir
    if not pairs:
        raise DatalistError(f"no image in {source} has a label volume")
    problems = [p for pair in pairs if (p := check_volume_pair(pair["image"], pair["label"])) is not None]
    if problems:
        raise DatalistError(f"{len(problems)} image/label pair(s) are unusable (nothing was written):\n"
                            + "\n".join(f"  - {p}" for p in problems))
    if check_voxels:  # names the first broken file; nothing is written
        check_datalist(pairs, spatial_dims=3)
    empty = []
    if check_foreground:
        import nibabel

        for pair in pairs:
            if not np.isin(np.asarray(nibabel.load(pair["label"]).dataobj), ids).any():
                empty.append(pair["label"])
        if len(empty) == len(pairs):
            raise DatalistError(f"no label volume of {source} holds the foreground id(s) {ids} "
                                f"(label names in dataset.json: {label_names or 'none'})")
    splits = split_volumes(pairs, fractions, seed)
    if foreground_name:
        fg_name = foreground_name
    elif label_names:
        fg_name = "+".join(label_names.get(str(i), f"label {i}") for i in ids)
    else:
        fg_name = "foreground"
    datalist = {
        "name": name or str(meta.get("name") or Path(source).resolve().name),
        "labels": {"0": "background", "1": fg_name},
        "num_classes": 2,
        "foreground_label_ids": ids,
        "source_labels": label_names,
        **splits,
        "without_label": without,
        "without_foreground": empty,
        "source": str(Path(source).resolve()),
        "seed": seed,
    }
    if "modality" in meta:
        datalist["modality"] = meta["modality"]
    path = write_datalist(datalist, output)
    print("  ".join(f"{s} {len(splits[s])}" for s in SPLITS) + f"  (volumes; foreground ids {ids} = {fg_name!r})")
    for split in SPLITS:
        if not splits[split]:
            print(f"warning: split {split!r} is empty ({len(pairs)} volumes in all)")
    if without:
        print(f"{len(without)} image(s) without a label left out: {without[:5]}")
    if empty:
        print(f"{len(empty)} label volume(s) hold no foreground voxel (kept): {empty[:5]}")
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
