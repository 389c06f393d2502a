"""Convert HDF5 files of 2D image / label patches into ``.npy`` files and a MONAI segmentation datalist.

The layout (e.g. ``msd_lung_patches/val_patches.h5``): one or more HDF5 files, each with an image
dataset ``(N, [1,] H, W)`` and a label dataset of the same shape. Every patch becomes
``<patch_output>/<file stem>/<index>_image.npy`` (float32, ``H x W``) and ``..._label.npy`` (uint8
0/1: label values above ``label_threshold``), read by MONAI's ``LoadImaged`` (``NumpyReader``).
Patches of one patient must stay on one side of the split: give the patient of every patch
through ``--group_key`` (a dataset of ids in the file) or ``--group_size`` (consecutive blocks of
that many patches per patient); without either a warning says the split is by patch.

Example::

    python tools/prepare_hdf5_patches.py --h5 ../shared/data/msd_lung_patches/val_patches.h5 \\
        --group_size 10 --output runs/lung/lung_patches.json
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import fire
import numpy as np

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tpp_components.data import SPLITS, DatalistError, split_fractions, stratified_split, write_datalist  # noqa: E402
from tpp_components.io import atomic_path  # noqa: E402


def read_patches(path: Path, image_key: str, label_key: str, group_key: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Images ``(N, H, W)``, labels ``(N, H, W)`` and optional group ids ``(N,)`` of one HDF5 file.

    Raises:
        DatalistError: the file cannot be opened, a key is missing, or the shapes disagree.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as e:
        raise DatalistError(f"cannot open HDF5 file '{path}': {e}") from e
    with handle:
        missing = [k for k in (image_key, label_key, group_key) if k is not None and k not in handle]
        if missing:
            raise DatalistError(f"HDF5 file '{path}' has no dataset {missing} (it has {sorted(handle.keys())})")
        images, labels = np.asarray(handle[image_key]), np.asarray(handle[label_key])
        groups = np.asarray(handle[group_key]).reshape(-1) if group_key else None
    for name, array in ((image_key, images), (label_key, labels)):
        if not (array.ndim == 3 or (array.ndim == 4 and array.shape[1] == 1)):
            raise DatalistError(f"'{path}' dataset '{name}' has shape {array.shape}: expected (N, H, W) or (N, 1, H, W)")
    images, labels = images.reshape(images.shape[0], *images.shape[-2:]), labels.reshape(labels.shape[0], *labels.shape[-2:])
    if images.shape != labels.shape:
        raise DatalistError(f"'{path}': '{image_key}' has shape {images.shape} but '{label_key}' has {labels.shape}: expected the same")
    if groups is not None and groups.shape[0] != images.shape[0]:
        raise DatalistError(f"'{path}': '{group_key}' has {groups.shape[0]} ids for {images.shape[0]} patches")
    if not np.isfinite(images).all():
        raise DatalistError(f"'{path}' dataset '{image_key}' holds NaN or infinite values "
                            f"(patches {np.flatnonzero(~np.isfinite(images).reshape(len(images), -1).all(1))[:10].tolist()})")
    return images, labels, groups


def _save(array: np.ndarray, destination: Path) -> Path:
    with atomic_path(destination) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, array)
    return destination


def main(
    h5: str | Sequence[str],
    output: str,
    image_key: str = "images",
    label_key: str = "labels",
    group_key: str | None = None,
    group_size: int | None = None,
    label_threshold: float = 0.5,
    patch_output: str | None = None,
    foreground: str = "tumour",
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    name: str | None = None,
) -> str:
    """Extract every patch, split (by group where known, stratified by whether a patch has foreground), write.

    Args:
        h5: one HDF5 file or a list of them.
        output: datalist JSON to write (atomically).
        image_key / label_key: dataset names of the images and labels.
        group_key: dataset of patient ids, one per patch.
        group_size: or: consecutive blocks of this many patches come from one patient.
        label_threshold: label values above it are foreground.
        patch_output: folder of the ``.npy`` files (default: ``<output stem>_patches`` beside ``output``).
        foreground: name of label 1.
        seed: seed of the split.
        val_fraction / test_fraction: shares in validation / test.
        name: the datalist's ``name``.

    Returns:
        the path of the written datalist.
    """
    files = [Path(h5)] if isinstance(h5, (str, Path)) else [Path(p) for p in h5]
    if group_key is not None and group_size is not None:
        raise ValueError("give --group_key or --group_size, not both")
    if group_size is not None and group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    fractions = split_fractions(val_fraction, test_fraction)
    out = Path(output)
    patches_out = Path(patch_output) if patch_output else out.parent / f"{out.stem}_patches"
    read = [(f, *read_patches(f, image_key, label_key, group_key)) for f in files]  # every file checked before writing
    items = []
    for path, images, labels, groups in read:
        for index in range(images.shape[0]):
            stem = patches_out / path.stem / f"{index:05d}"
            mask = (labels[index] > label_threshold).astype(np.uint8)
            image = _save(images[index].astype(np.float32), stem.with_name(stem.name + "_image.npy"))
            label = _save(mask, stem.with_name(stem.name + "_label.npy"))
            if groups is not None:
                group = (str(path), str(groups[index]))
            elif group_size is not None:
                group = (str(path), index // group_size)
            else:
                group = (str(path), "patch", index)
            items.append({"image": str(image.resolve()), "mask": str(label.resolve()), "label": int(mask.any()), "group": group})
    splits = stratified_split(items, fractions, seed=seed)
    datalist = {
        "name": name or files[0].stem,
        "labels": {"0": "background", "1": foreground},
        "num_classes": 2,
        **{s: [{"image": i["image"], "label": i["mask"]} for i in splits[s]] for s in SPLITS},
        "source": [str(f.resolve()) for f in files],
        "seed": seed,
        "split_by": "group_key" if group_key else (f"blocks of {group_size}" if group_size else "patch"),
    }
    path = write_datalist(datalist, out)
    with_fg = sum(i["label"] for i in items)
    print("  ".join(f"{s} {len(splits[s])}" for s in SPLITS)
          + f"  ({len(items)} patches, {with_fg} with foreground; written to {patches_out})")
    if group_key is None and group_size is None:
        print("warning: no --group_key or --group_size: patches of one patient may land in training and test")
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
