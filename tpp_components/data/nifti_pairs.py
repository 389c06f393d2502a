"""3D image / label volume pairs: Medical Segmentation Decathlon ``dataset.json``, or two NIfTI folders.

MSD task folders hold ``dataset.json`` (``"training": [{"image": "./imagesTr/x.nii.gz", "label":
"./labelsTr/x.nii.gz"}]``, ``"labels"``, ``"modality"``) beside ``imagesTr/`` and ``labelsTr/``. Other
releases are two folders whose files share a name (or a name up to a pattern). Either way every
pair is checked from the NIfTI headers alone (shape, voxel spacing, orientation) so that a
mismatch is reported before a long run reads the voxels.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from tpp_components.data.datalist import DatalistError, _strip_extension, load_datalist

__all__ = ["NIFTI_EXTENSIONS", "check_volume_pair", "read_msd_dataset", "scan_nifti_folders"]

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_EXTENSIONS)
                  and not p.name.startswith(("._", ".")))


def read_msd_dataset(task_dir: str | os.PathLike) -> tuple[list[dict[str, str]], dict[str, str], dict]:
    """The labelled pairs of an MSD task folder, its label names and the rest of ``dataset.json``.

    Returns:
        ``([{"image": abs path, "label": abs path}], {"0": "background", ...}, dataset.json)``.

    Raises:
        DatalistError: ``dataset.json`` is missing, malformed, or names files that do not exist.
    """
    root = Path(task_dir).expanduser().resolve()
    path = root / "dataset.json"
    if not path.is_file():
        raise DatalistError(f"MSD task folder {root} has no dataset.json")
    meta = load_datalist(path)  # names the file when it is not a JSON object
    if not isinstance(meta.get("training"), list) or not meta["training"]:
        raise DatalistError(f"{path}: expected an object with a non-empty 'training' list of image/label pairs")
    pairs, problems = [], []
    for index, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not {"image", "label"} <= set(entry):
            problems.append(f"training[{index}]: expected {{'image': ..., 'label': ...}}, got {entry!r}")
            continue
        pair = {key: str((root / entry[key]).resolve()) for key in ("image", "label")}
        problems += [f"training[{index}]: {key} file not found: {pair[key]}" for key in pair if not Path(pair[key]).is_file()]
        pairs.append(pair)
    if problems:
        raise DatalistError(f"{path} has {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    return pairs, labels, meta


def scan_nifti_folders(
    images_dir: str | os.PathLike, labels_dir: str | os.PathLike, label_pattern: str = r"(?P<stem>.+)"
) -> tuple[list[dict[str, str]], list[str]]:
    """Pair the NIfTI files of two folders by name.

    Args:
        images_dir: folder of image volumes.
        labels_dir: folder of label volumes.
        label_pattern: regular expression on a label's name without extension whose ``stem`` group
            is its image's name (default: the same name; e.g. ``(?P<stem>.+)_seg``).

    Returns:
        the pairs (sorted by image) and the images no label names (the caller reports them).

    Raises:
        DatalistError: a folder is missing or empty, the pattern lacks ``stem``, or a label names
            no image.
    """
    folders = [Path(d).expanduser().resolve() for d in (images_dir, labels_dir)]
    for folder in folders:
        if not folder.is_dir():
            raise DatalistError(f"folder not found: {folder}")
    pattern = re.compile(label_pattern)
    if "stem" not in pattern.groupindex:
        raise DatalistError(f"label_pattern {label_pattern!r} needs a named group 'stem' (the image's name)")
    images = {_strip_extension(p.name): p for p in _nifti_files(folders[0])}
    if not images:
        raise DatalistError(f"folder {folders[0]} holds no NIfTI file (.nii.gz or .nii)")
    labels, orphans = {}, []
    for path in _nifti_files(folders[1]):
        match = pattern.fullmatch(_strip_extension(path.name))
        if match and match.group("stem") in images:
            labels[match.group("stem")] = path
        else:
            orphans.append(str(path))
    if orphans:
        raise DatalistError(f"{len(orphans)} label file(s) in {folders[1]} name no image of {folders[0]} "
                            f"(pattern {label_pattern!r}): {orphans[:10]}")
    pairs = [{"image": str(images[s]), "label": str(labels[s])} for s in sorted(images) if s in labels]
    return pairs, [str(images[s]) for s in sorted(images) if s not in labels]


def check_volume_pair(image: str | os.PathLike, label: str | os.PathLike, atol: float = 1e-3) -> str | None:
    """Why an image and its label do not describe the same voxel grid (from the headers), or None.

    Compares the spatial shape (the image may carry extra channel dimensions after the third) and
    the voxel-to-world affine within ``atol`` millimetres.
    """
    import nibabel

    try:
        img, lab = nibabel.load(str(image)), nibabel.load(str(label))
    except Exception as e:  # nibabel raises several types for broken files
        return f"cannot read the NIfTI header of '{image}' or '{label}': {type(e).__name__}: {e}"
    if img.shape[:3] != lab.shape[:3]:
        return f"label '{label}' has shape {lab.shape[:3]} but image '{image}' has {img.shape[:3]}: expected the same voxel grid"
    if not np.allclose(img.affine, lab.affine, atol=atol):
        spacing = [tuple(round(float(z), 3) for z in x.header.get_zooms()[:3]) for x in (img, lab)]
        return (f"label '{label}' and image '{image}' have different voxel-to-world affines (spacing {spacing[1]} vs "
                f"{spacing[0]} mm): expected the same geometry")
    return None
