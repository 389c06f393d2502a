"""MONAI Label's local datastore, refusing uploads that no bundle could read.

MONAI Label's ``PUT /datastore/image`` and ``PUT /datastore/label`` copy whatever bytes arrive into the
datastore, so a corrupt or mistyped upload is only found when an inference or a training round reads it,
with an error that does not name the upload. :class:`TPPDatastore` decodes each upload with MONAI's
``LoadImage`` (the readers the bundles' ``LoadImaged`` use) before anything is copied, and refuses it with
an ``HTTPException`` naming the image id, the file type and what was expected; a refused upload leaves the
datastore as it was (an earlier image or label of that id included).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from monai.data import MetaTensor
from monai.transforms import LoadImage
from monailabel.datastore.local import LocalDatastore

from lib.errors import NOT_FOUND, UNPROCESSABLE, UNSUPPORTED
from lib.formats import IMAGE_FORMATS, LABEL_SUFFIX, describe, family, file_format

__all__ = ["TPPDatastore", "decode_image"]

logger = logging.getLogger(__name__)


def decode_image(path: str | os.PathLike, what: str) -> MetaTensor:
    """``path`` decoded by MONAI's ``LoadImage`` (the whole array: a truncated file fails here).

    Args:
        path: the uploaded file, named with the upload's ending.
        what: the upload as messages name it (``"image 'case1'"``).

    Raises:
        HTTPException: 415 where the ending is no image format of :data:`IMAGE_FORMATS`, 422 where the file
            does not decode as its ending says.
    """
    suffix = file_format(str(path))
    if suffix is None:
        raise HTTPException(UNSUPPORTED, detail=f"{what}: a '{''.join(Path(path).suffixes)}' file is not an image "
                                                f"the app reads; expected a readable image: {describe()}.")
    try:
        return LoadImage(image_only=True)(str(path))
    except Exception as err:  # the readers raise their own types (PIL, nibabel, numpy)
        cause = str(err).replace(str(path), "the upload") or type(err).__name__
        raise HTTPException(UNPROCESSABLE, detail=f"{what}: the '{suffix}' upload is not a readable "
                                                  f"{IMAGE_FORMATS[suffix][0]} ({cause}); expected a readable image: "
                                                  f"{describe()}.") from err


class TPPDatastore(LocalDatastore):
    """``LocalDatastore`` that decodes every image and label before it is stored.

    - images: any format of :data:`IMAGE_FORMATS` that decodes;
    - labels: a ``.json`` class label must be a JSON object with a ``"label"`` entry; a mask must decode, be
      of the image's reader family (a ``.npy`` mask for a ``.npy`` image, a PNG for a PNG or JPEG, a NIfTI or
      NRRD for a volume) and have the image's spatial shape;
    - a label for an image id the datastore does not hold is a 404 (``LocalDatastore`` raises an exception
      that MONAI Label answers with a bare 500).
    """

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        what = f"image '{image_id}'" if image_id else "image upload"
        decode_image(image_filename, what)
        return super().add_image(image_id, image_filename, image_info)

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]) -> str:
        image = self.get_image_uri(image_id)
        if not image:
            raise HTTPException(NOT_FOUND, detail=f"label for image '{image_id}': the datastore has no image "
                                                  f"'{image_id}' (upload it first with PUT /datastore/image).")
        what = f"label '{label_tag}' of image '{image_id}'"
        if str(label_filename).lower().endswith(LABEL_SUFFIX):
            self._check_class_label(label_filename, what)
        else:
            self._check_mask(label_filename, image, what)
        return super().save_label(image_id, label_filename, label_tag, label_info)

    def remove_image(self, image_id: str) -> None:
        if not self.get_image_uri(image_id):
            raise HTTPException(NOT_FOUND, detail=f"the datastore has no image '{image_id}'.")
        super().remove_image(image_id)

    @staticmethod
    def _check_class_label(path: str, what: str) -> None:
        try:
            content = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise HTTPException(UNPROCESSABLE, detail=f"{what}: the '{LABEL_SUFFIX}' upload is not JSON ({err}); "
                                                      'expected {"label": "<class name>"}.') from err
        if not isinstance(content, dict) or "label" not in content:
            raise HTTPException(UNPROCESSABLE, detail=f"{what}: the JSON upload has no \"label\" entry; "
                                                      'expected {"label": "<class name>"}.')

    @staticmethod
    def _check_mask(path: str, image: str, what: str) -> None:
        mask = decode_image(path, what)
        mask_family, image_family = family(path), family(image)
        if image_family is not None and mask_family != image_family:
            raise HTTPException(UNPROCESSABLE, detail=(
                f"{what}: a {IMAGE_FORMATS[file_format(path)][0]} mask cannot label a "
                f"{IMAGE_FORMATS[file_format(image)][0]} image (their readers order the axes differently); expected "
                f"a mask in {describe(image_family)}."))
        expected = LoadImage(image_only=True)(image).meta["spatial_shape"]
        shape = mask.meta["spatial_shape"]
        if not np.array_equal(np.asarray(shape), np.asarray(expected)):
            raise HTTPException(UNPROCESSABLE, detail=f"{what}: the mask's spatial shape {tuple(int(s) for s in shape)} "
                                                      f"is not the image's {tuple(int(s) for s in expected)} (in the "
                                                      "axis order of MONAI's reader).")
