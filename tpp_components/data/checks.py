"""Check a datalist before a bundle trains, evaluates or infers: every file named exists, decodes and
fits its partner, so that bad input fails at startup with one error naming the file, the key and
what was expected, instead of mid-epoch in a transform deep inside MONAI's chained ``RuntimeError``.

Checks per entry: the keys exist; each file exists, is readable and decodes (PNG / JPEG / BMP /
TIFF fully with PIL, NIfTI with nibabel, ``.npy`` with numpy); intensities are finite (no NaN / inf);
a class label is an integer in ``0..num_classes-1``; a segmentation label map holds non-negative
integers (from ``label_values`` where given) on the image's grid (shape, and for NIfTI the affine);
a list of channel files has ``in_channels`` entries; 3D images are 3D volumes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from tpp_components.data.datalist import DatalistError, load_datalist

__all__ = ["check_datalist", "read_array"]

#: most problems listed in one error (the first line names the first one)
MAX_PROBLEMS = 20
_PIL_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_array(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode ``path`` fully: ``(array, affine)``; the affine is None except for NIfTI.

    2D images come back as ``(H, W)`` or ``(H, W, bands)``; ``.npy`` as stored; NIfTI as stored.

    Raises:
        DatalistError: the extension is not one the bundles read.
        Exception: whatever the reader raises on a broken file (the caller names the file).
    """
    name = Path(path).name.lower()
    if name.endswith((".nii", ".nii.gz")):
        import nibabel

        image = nibabel.load(str(path))
        return np.asanyarray(image.dataobj), image.affine
    if name.endswith(".npy"):
        return np.load(path, allow_pickle=False), None
    if name.endswith(_PIL_EXTENSIONS):
        from PIL import Image

        with Image.open(path) as img:
            img.load()  # full decode: a truncated file fails here, not only in the trainer
            return np.asarray(img), None
    raise DatalistError(f"'{path}': unsupported file type; expected one of .png, .jpg, .bmp, .tif, .nii, .nii.gz, .npy")


class _Checker:
    """Collects the problems of one datalist; ``where`` strings name the file, split, index and key."""

    def __init__(self, base: Path, spatial_dims: int, in_channels: int | None) -> None:
        self.base, self.spatial_dims, self.in_channels = base, spatial_dims, in_channels
        self.problems: list[str] = []

    def add(self, message: str) -> None:
        self.problems.append(message)

    def path(self, value: Any, where: str) -> Path | None:
        if not isinstance(value, (str, os.PathLike)):
            self.add(f"{where}: expected a file path, got {value!r}")
            return None
        path = Path(value) if Path(value).is_absolute() else self.base / value
        if not path.is_file():
            self.add(f"{where}: file not found: '{path}'; expected an existing file")
            return None
        if not os.access(path, os.R_OK):
            self.add(f"{where}: file '{path}' is not readable (permissions); expected a file this user can read")
            return None
        return path

    def load(self, path: Path, where: str) -> tuple[np.ndarray, np.ndarray | None] | None:
        try:
            array, affine = read_array(path)
        except DatalistError as e:
            self.add(f"{where}: {e}")
            return None
        except Exception as e:  # every reader raises its own types for a broken file
            self.add(f"{where}: file '{path}' cannot be decoded ({type(e).__name__}: {e}); expected a complete, readable image")
            return None
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            bad = int((~np.isfinite(array)).sum())
            self.add(f"{where}: file '{path}' holds {bad} NaN/inf value(s); expected finite intensities")
            return None
        return array, affine

    def image(self, value: Any, where: str) -> tuple[tuple[int, ...], np.ndarray | None, Path] | None:
        """Check one image entry (a file, or a list of channel files); return its spatial shape, affine and first file."""
        files = value if isinstance(value, (list, tuple)) else [value]
        if self.in_channels is not None and isinstance(value, (list, tuple)) and len(files) != self.in_channels:
            self.add(f"{where}: {len(files)} channel file(s) {list(files)}; expected {self.in_channels} (in_channels)")
            return None
        out = None
        for index, item in enumerate(files):
            at = f"{where}[{index}]" if isinstance(value, (list, tuple)) else where
            path = self.path(item, at)
            loaded = None if path is None else self.load(path, at)
            if loaded is None:
                return None
            array, affine = loaded
            shape = self.spatial(array, path, at, channels_allowed=not isinstance(value, (list, tuple)))
            if shape is None:
                return None
            if out is not None and (shape != out[0] or not _same_affine(affine, out[1])):
                self.add(f"{at}: channel file '{path}' has shape {shape}, channel 0 '{out[2]}' has {out[0]}; expected one voxel grid")
                return None
            out = out or (shape, affine, path)
        return out

    def spatial(self, array: np.ndarray, path: Path, where: str, channels_allowed: bool) -> tuple[int, ...] | None:
        """The spatial shape of ``array``, or None after recording why it is not an image of this bundle."""
        if self.spatial_dims == 2:
            if path.suffix.lower() == ".npy":  # a patch: (H, W) or (C, H, W)
                ok = array.ndim == 2 or (array.ndim == 3 and array.shape[0] in (1, 3))
                shape = tuple(array.shape[-2:])
            else:  # PIL: (H, W) grey or (H, W, 3) RGB
                ok = array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3))
                shape = tuple(array.shape[:2])
            if not ok:
                self.add(f"{where}: file '{path}' has shape {array.shape}; expected a 2D image with 1 (grey) or 3 (RGB) channels")
                return None
            return shape
        channels = int(np.prod(array.shape[3:])) if array.ndim > 3 else 1
        expected = (self.in_channels or channels) if channels_allowed else 1  # in_channels None: any
        if array.ndim < 3 or channels != expected:
            self.add(f"{where}: file '{path}' has shape {array.shape}; expected a 3D volume with {expected} channel(s)")
            return None
        return tuple(array.shape[:3])


def _same_affine(a: np.ndarray | None, b: np.ndarray | None, atol: float = 1e-3) -> bool:
    return a is None or b is None or bool(np.allclose(a, b, atol=atol))


def check_datalist(
    datalist: str | os.PathLike | Sequence[Mapping[str, Any]],
    splits: Sequence[str] = ("training", "validation"),
    num_classes: int | None = None,
    require_labels: bool = True,
    label_type: str | None = None,
    label_values: Sequence[int] | None = None,
    in_channels: int | None = None,
    spatial_dims: int = 2,
) -> None:
    """Check every entry of ``splits`` of ``datalist``; raise one :class:`DatalistError` naming the first problem.

    Args:
        datalist: a datalist JSON file (``training`` / ``validation`` / ``test`` lists of entries),
            or the list of entries itself (an inference folder's, checked as split ``input``).
        splits: the splits this stage reads; each must exist and be non-empty.
        num_classes: the number of classes. An integer ``label`` (classification) must be in
            ``0..num_classes-1``; a label file (segmentation) is a label map.
        label_type: ``"class"`` (an integer class index), ``"map"`` (a label-map file); None: a path is a
            label map, anything else a class index.
        require_labels: every entry must have a ``label`` (False: stage 0 / TPP on unlabeled pools;
            a label that is there is still checked).
        label_values: the values a label map may hold (e.g. ``[0, 1, 255]`` for 8-bit masks);
            None: any non-negative integer (a bundle that filters foreground ids maps them).
        in_channels: channel files per entry when ``image`` is a list; channels of a 3D volume.
        spatial_dims: 2 (images, ``.npy`` patches) or 3 (volumes).

    Raises:
        DatalistError: its first line names the datalist, the entry, the key, the file and what was
            expected; further lines list up to ``MAX_PROBLEMS`` problems.
    """
    if isinstance(datalist, (str, os.PathLike)):
        source, data = f"datalist '{datalist}'", load_datalist(datalist)
        base = Path(datalist).resolve().parent
    else:
        source, data, base, splits = "", {"input": list(datalist)}, Path.cwd(), ["input"]
    check = _Checker(base, spatial_dims, in_channels)
    for split in splits:
        entries = data.get(split)
        if not isinstance(entries, list) or not entries:
            check.add(f"split '{split}' is {'missing' if entries is None else 'empty' if entries == [] else type(entries).__name__}; "
                      f"expected a non-empty list of {{'image': ..., 'label': ...}} entries")
            continue
        for index, entry in enumerate(entries):
            _check_entry(check, entry, f"{split}[{index}]", num_classes, require_labels, label_type, label_values)
            if len(check.problems) >= MAX_PROBLEMS:
                break
    if check.problems:
        more = "".join(f"\n  - {p}" for p in check.problems[1:MAX_PROBLEMS])
        count = f" ({len(check.problems)} problems{'+' if len(check.problems) >= MAX_PROBLEMS else ''}, all listed below)" if more else ""
        raise DatalistError(f"{source + ': ' if source else ''}{check.problems[0]}{count}{more}")


def _check_entry(check: _Checker, entry: Any, where: str, num_classes: int | None, require_labels: bool,
                 label_type: str | None, label_values: Sequence[int] | None) -> None:
    if not isinstance(entry, Mapping) or "image" not in entry:
        check.add(f"{where}: expected an object with an 'image' key, got {entry!r}")
        return
    image = check.image(entry["image"], f"{where} 'image'")
    if "label" not in entry:
        if require_labels:
            check.add(f"{where}: no 'label' key; expected a label for every entry of this stage")
        return
    label = entry["label"]
    if label_type == "class" or label_type is None and not isinstance(label, (str, os.PathLike)):  # a class index
        known = num_classes is not None and isinstance(label, Integral) and not isinstance(label, bool)
        if not known or not 0 <= label < num_classes:
            check.add(f"{where} 'label': value {label!r} is not a known class; expected an integer in 0..{(num_classes or 0) - 1}")
        return
    path = check.path(label, f"{where} 'label'")
    loaded = None if path is None else check.load(path, f"{where} 'label'")
    if loaded is None or image is None:
        return
    array, affine = loaded
    values = np.unique(array)
    allowed = label_values
    wrong = [int(v) if float(v).is_integer() else v for v in values.tolist()
             if v < 0 or v != int(v) or (allowed is not None and int(v) not in allowed)]
    if wrong:
        expected = f"values in {sorted(allowed)}" if allowed is not None else "non-negative integers"
        check.add(f"{where} 'label': file '{path}' holds value(s) {wrong[:8]} outside the classes; expected {expected}")
        return
    shape = check.spatial(array, path, f"{where} 'label'", channels_allowed=False)
    if shape is not None and shape != image[0]:
        check.add(f"{where} 'label': file '{path}' has spatial shape {shape}, image '{image[2]}' has {image[0]}; expected the same shape")
    elif shape is not None and not _same_affine(affine, image[1]):
        import nibabel

        zooms = [tuple(round(float(z), 3) for z in nibabel.affines.voxel_sizes(a)) for a in (image[1], affine)]
        check.add(f"{where} 'label': file '{path}' has spacing/orientation {zooms[1]} mm, image '{image[2]}' has {zooms[0]}; "
                  "expected the same voxel-to-world affine")
