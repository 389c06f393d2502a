"""The file types the app reads, and which of them agree on the axis order (a mask must be read as its image)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["IMAGE_FORMATS", "LABEL_SUFFIX", "bundle_family", "describe", "file_format", "family"]

#: a classification label in the datastore: ``labels/final/<image id>.json`` holding ``{"label": "<class name>"}``
LABEL_SUFFIX = ".json"
#: file endings the app reads as images -> (format named in messages, reader family). Readers of one family
#: agree on the axis order (MONAI's PIL reader puts the width first, its NumPy reader keeps the array's, NIfTI
#: and NRRD follow the affine), so an image and its mask must be of one family for the mask to lie on the image.
IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    ".png": ("PNG", "raster"), ".jpg": ("JPEG", "raster"), ".jpeg": ("JPEG", "raster"), ".bmp": ("BMP", "raster"),
    ".tif": ("TIFF", "raster"), ".tiff": ("TIFF", "raster"),
    ".nii.gz": ("NIfTI", "volume"), ".nii": ("NIfTI", "volume"), ".nrrd": ("NRRD", "volume"),
    ".npy": ("NumPy array", "array"),
}
#: a bundle's ``metadata.json`` ``data_type`` -> the reader family of the images it is trained on
DATA_TYPE_FAMILIES = {"png": "raster", "jpg": "raster", "jpeg": "raster", "numpy": "array", "nifti": "volume",
                      "nibabel": "volume"}


def file_format(name: str) -> str | None:
    """The ending of ``name`` in :data:`IMAGE_FORMATS` (the longest that matches, any case), or None."""
    lower = str(name).lower()
    return next((s for s in sorted(IMAGE_FORMATS, key=len, reverse=True) if lower.endswith(s)), None)


def family(name: str) -> str | None:
    """The reader family of the file ``name`` (``"raster"``, ``"volume"``, ``"array"``), or None."""
    suffix = file_format(name)
    return IMAGE_FORMATS[suffix][1] if suffix else None


def describe(family_name: str | None = None) -> str:
    """``"PNG (.png), JPEG (.jpg, .jpeg), ..."``: the formats of :data:`IMAGE_FORMATS` (of one family)."""
    names: dict[str, list[str]] = {}
    for suffix, (name, fam) in IMAGE_FORMATS.items():
        if family_name in (None, fam):
            names.setdefault(name, []).append(suffix)
    return ", ".join(f"{name} ({', '.join(suffixes)})" for name, suffixes in names.items())


def bundle_family(bundle: str | Path) -> str | None:
    """The reader family of the images a bundle is trained on, from its ``metadata.json`` ``data_type``
    (None where the metadata does not say)."""
    path = Path(bundle) / "configs" / "metadata.json"
    data_type = json.loads(path.read_text()).get("data_type", "") if path.is_file() else ""
    return DATA_TYPE_FAMILIES.get(str(data_type).lower())
