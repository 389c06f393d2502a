"""Inference through MONAI Label's ``BundleInferTask``, configured from the bundle's metadata."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from monai.transforms import SqueezeDimd, Transposed
from monai.utils import convert_to_numpy
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask

from lib.bundle_kind import bundle_kind

__all__ = ["NUMPY_SUFFIX", "TPPBundleInferTask", "bundle_infer_task"]

#: an image MONAI Label's writer (ITK) cannot write: its mask is written as one too, by :meth:`TPPBundleInferTask.writer`
NUMPY_SUFFIX = ".npy"


def _is_numpy(data: dict | None) -> bool:
    return str((data or {}).get("image_path") or "").lower().endswith(NUMPY_SUFFIX)


class TPPBundleInferTask(BundleInferTask):
    """``BundleInferTask`` with fixes for MONAI 1.6, 2D masks and ``.npy`` images.

    - MONAI Label puts the image's path in the request as ``image_path``, and MONAI >= 1.5's ``Spacingd``
      updates every ``image_*`` entry as if it were the image's meta dict (``'str' object has no attribute
      'update'``): the entry is set aside while the pre-transforms run.
    - ``Restored`` drops a singleton channel only from 3D predictions; MONAI Label's writer takes a 2D mask
      as ``(W, H)``, and a ``(1, W, H)`` one would be written as a 3D image of width 1.
    - The mask of a ``.npy`` image (``lung_ct_segmentation``'s patches) is a ``.npy`` array of the patch's
      shape, as the bundle's own labels are (``<patch>_label.npy``): MONAI Label's writer cannot write
      ``.npy``, and a PNG would be read back by MONAI's ``PILReader`` with its axes swapped against the patch.
      The bundle's ``Transposed`` (which orients the mask for its own ``PILWriter``) is left out there.
    """

    def run_pre_transforms(self, data: dict, transforms: Sequence[Callable]) -> dict:
        path = data.pop("image_path", None)
        data = super().run_pre_transforms(data, transforms)
        if path is not None:
            data["image_path"] = path
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        post = list(super().post_transforms(data))
        if self.type == InferType.SEGMENTATION and _is_numpy(data):
            post = [t for t in post if not isinstance(t, Transposed)]
        if self.type == InferType.SEGMENTATION and self.dimension == 2:
            post.append(SqueezeDimd(keys=self.key_pred, dim=0))
        return post

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[Any, dict]:
        if self.type != InferType.SEGMENTATION or not _is_numpy(data):
            return super().writer(data, extension, dtype)
        mask = convert_to_numpy(data[self.output_label_key])
        dtype = dtype or data.get("result_dtype")
        path = tempfile.NamedTemporaryFile(suffix=NUMPY_SUFFIX, delete=False).name
        np.save(path, mask.astype(dtype) if dtype else mask)
        return path, dict(data.get(self.output_json_key) or {})


def bundle_infer_task(path: str, conf: dict[str, str]) -> TPPBundleInferTask:
    """The inference task of the bundle at ``path``.

    - classification: ``type="classification"`` and no ``Restored`` post-transform (it resizes an image-shaped
      prediction to the input's shape, which a vector of class probabilities is not), as MONAI Label's own
      endoscopy / pathology classifiers are set up; the response is ``{"prediction": [{idx, label, score}]}``;
    - segmentation: the bundle's postprocessing (``Invertd`` back to the input's geometry; ``SaveImaged`` is
      dropped by the task) then ``Restored`` (and, in 2D, the channel squeezed); the mask is written as
      ``uint8`` so that a PNG input gets a PNG mask.

    ``load_strict=True``: MONAI Label's default (``False``) loads ``models/model.pt`` non-strictly, so a
    mismatched checkpoint would only log a warning and serve random weights.
    """
    kind = bundle_kind(path)
    classify = kind == InferType.CLASSIFICATION
    task = TPPBundleInferTask(path, conf, type=kind, add_post_restore=not classify, load_strict=True)
    if task.is_valid() and not classify:
        task.config().update({"result_dtype": "uint8"})  # the request's default; a request may still override it
    return task
