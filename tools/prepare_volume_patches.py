"""Slice 3D CT / MRI volumes into 2D axial patches (``.npy``) and a MONAI segmentation datalist.

For a 2D bundle trained on patches of 3D scans (MSD Task06 lung tumours, as in
``msd_lung_patches``): every volume goes through MONAI transforms (RAS orientation, in-plane
resampling to ``--spacing`` mm with the slice spacing kept, intensity window ``--window`` scaled
to [0, 1]); every axial slice holding foreground gives one ``--patch_size`` patch centred on that
slice's foreground, and ``--negatives`` slices without foreground per volume give one patch each
at a random place. Patches keep their volume's split in the volume datalist (so a patient never
straddles the split), or with ``--resplit`` are split again by volume.

Example::

    python tools/prepare_nifti_pairs.py --msd_dir /data/Task06_Lung --output lung_volumes.json
    python tools/prepare_volume_patches.py --volumes lung_volumes.json --output lung_patches.json
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

from tools.prepare_hdf5_patches import _save  # noqa: E402
from tpp_components.data import SPLITS, DatalistError, load_datalist, split_fractions, stratified_split, write_datalist  # noqa: E402


def volume_transform(spacing: float, window: Sequence[float]):
    """MONAI preprocessing of one image / label pair: RAS, in-plane spacing, intensity window to [0, 1]."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, ScaleIntensityRanged, Spacingd

    return Compose([
        LoadImaged(keys=["image", "label"], image_only=True),
        EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS", labels=None),
        Spacingd(keys=["image", "label"], pixdim=(spacing, spacing, -1), mode=("bilinear", "nearest")),
        ScaleIntensityRanged(keys="image", a_min=float(window[0]), a_max=float(window[1]), b_min=0.0, b_max=1.0, clip=True),
    ])


def _crop(plane: np.ndarray, centre: tuple[int, int], size: int) -> np.ndarray:
    """A ``size`` x ``size`` crop of ``plane`` centred on ``centre``, zero-padded where it leaves the plane."""
    padded = np.pad(plane, size, mode="constant")
    y, x = centre[0] + size - size // 2, centre[1] + size - size // 2
    return padded[y:y + size, x:x + size]


def main(
    volumes: str,
    output: str,
    foreground: Sequence[int] | None = None,
    spacing: float = 2.0,
    window: Sequence[float] = (-1000.0, 400.0),
    patch_size: int = 48,
    negatives: int = 2,
    patch_output: str | None = None,
    seed: int = 0,
    resplit: bool = False,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
) -> str:
    """Slice every volume of a NIfTI-pair datalist (all its splits) into patches and write ``output``.

    Args:
        volumes: a datalist of ``{"image", "label"}`` NIfTI pairs (``tools/prepare_nifti_pairs.py``).
        output: the patch datalist to write (atomically).
        foreground: label ids that are foreground (default: the datalist's ``foreground_label_ids``, else non-zero).
        spacing: in-plane spacing in mm after resampling (the slice spacing is kept).
        window: intensity range scaled to [0, 1] and clipped (CT lung window by default).
        patch_size: side of the square patches in pixels.
        negatives: patches from slices without foreground, per volume.
        patch_output: folder of the ``.npy`` files (default: ``<output stem>_patches`` beside ``output``).
        seed: seed of the negative patches and of a new split.
        resplit: split the patches again, by volume, instead of keeping the volumes' splits.
        val_fraction / test_fraction: shares in validation / test of a new split.

    Returns:
        the path of the written datalist.
    """
    source = load_datalist(volumes)
    pairs = [(s, e) for s in SPLITS for e in source.get(s, [])]
    if not pairs:
        raise DatalistError(f"datalist {volumes} lists no image/label pair in {list(SPLITS)}")
    if foreground is None and isinstance(source.get("foreground_label_ids"), list):
        foreground = source["foreground_label_ids"]
    out = Path(output)
    patches_out = Path(patch_output) if patch_output else out.parent / f"{out.stem}_patches"
    transform = volume_transform(spacing, window)
    rng = random.Random(seed)
    items = []
    for index, (split, pair) in enumerate(pairs):
        try:
            data = transform({"image": pair["image"], "label": pair["label"]})
        except Exception as e:  # MONAI wraps reader errors in RuntimeError; name the pair first
            raise DatalistError(f"cannot load volume pair {pair['image']} / {pair['label']}: {e}") from e
        image, label = np.asarray(data["image"][0]), np.asarray(data["label"][0])
        mask = np.isin(label, list(foreground)) if foreground is not None else label > 0
        name = Path(pair["image"]).name.split(".")[0]
        with_fg = [z for z in range(mask.shape[2]) if mask[:, :, z].any()]
        without = [z for z in range(mask.shape[2]) if z not in set(with_fg)]
        chosen = [(z, tuple(int(c) for c in np.argwhere(mask[:, :, z]).mean(0).round())) for z in with_fg]
        for z in rng.sample(without, min(negatives, len(without))):
            chosen.append((z, (rng.randrange(mask.shape[0]), rng.randrange(mask.shape[1]))))
        for z, centre in chosen:
            stem = patches_out / name / f"slice{z:04d}"
            label_patch = _crop(mask[:, :, z].astype(np.uint8), centre, patch_size)
            image_path = _save(_crop(image[:, :, z].astype(np.float32), centre, patch_size), stem.with_name(stem.name + "_image.npy"))
            label_path = _save(label_patch, stem.with_name(stem.name + "_label.npy"))
            items.append({"image": str(image_path.resolve()), "mask": str(label_path.resolve()),
                          "label": int(label_patch.any()), "group": index, "split": split})
    if not items:
        raise DatalistError(f"no patch from {volumes}: no volume has a slice")
    if resplit:
        fractions = split_fractions(val_fraction, test_fraction)
        splits = stratified_split([{k: v for k, v in i.items() if k != "split"} for i in items], fractions, seed=seed)
    else:
        splits = {s: [i for i in items if i["split"] == s] for s in SPLITS}
    datalist = {
        "name": f"{source.get('name', Path(volumes).stem)} axial patches",
        "labels": {"0": "background", "1": source.get("labels", {}).get("1", "foreground")},
        "num_classes": 2,
        **{s: [{"image": i["image"], "label": i["mask"]} for i in splits[s]] for s in SPLITS},
        "source": str(Path(volumes).resolve()),
        "spacing_mm": spacing, "window": list(window), "patch_size": patch_size, "seed": seed,
        "split_by": "volume, re-split" if resplit else "the volumes' splits",
    }
    path = write_datalist(datalist, out)
    print("  ".join(f"{s} {len(splits[s])}" for s in SPLITS)
          + f"  ({len(items)} patches from {len(pairs)} volumes, {sum(i['label'] for i in items)} with foreground)")
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
