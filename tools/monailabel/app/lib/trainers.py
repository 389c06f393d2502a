"""Training through MONAI Label's ``BundleTrainTask``, made to fit the TPP bundles' ``train.json``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from monai.data import partition_dataset_classes
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.train.bundle import BundleTrainTask

from lib.bundle_kind import BundleMetadataError, bundle_kind, class_names

__all__ = ["TPPBundleTrainTask", "read_class_label", "DATALIST_NAME", "LABEL_SUFFIX"]

logger = logging.getLogger(__name__)

#: the file type of a classification label in the datastore (``labels/final/<image id>.json``)
LABEL_SUFFIX = ".json"
#: where a training round's datalist is written inside the bundle (train.json reads it through ``datalist``)
DATALIST_NAME = "logs/monailabel/datalist.json"


def read_class_label(path: str | os.PathLike, names: list[str]) -> int:
    """A classification label as MONAI Label stores it: ``labels/final/<image id>.json`` holding
    ``{"label": "<class name>"}`` (or the class index), read as the index ``train.json`` expects."""
    try:
        value = json.loads(Path(path).read_text())["label"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleMetadataError(f"classification label '{path}': expected JSON {{\"label\": <class name>}} ({err}).") from err
    if isinstance(value, str) and value in names:
        return names.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(names):
        return value
    raise BundleMetadataError(f"classification label '{path}': label {value!r} is not one of {names} or 0..{len(names) - 1}.")


class TPPBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` with three changes for the TPP bundles.

    - The datalist reaches ``train.json`` through its own ``datalist`` file, not only through
      ``train#dataset#data``: ``train#datalist`` also feeds the class weights, and a bundle reading a
      missing ``data/datalist.json`` would fail. Classification labels are read from their JSON files
      (:func:`read_class_label`) into class indices.
    - MONAI Label's non-strict ``CheckpointLoader`` of ``models/model.pt`` is not added: that file is the
      merged network, whose adapted layers are named differently in the injected training network, so a
      non-strict load would silently skip them. With ``pretrained`` (MONAI Label's default) training instead
      continues from the bundle's fine-tuned target parameters (``models/target_parameters.safetensors``,
      loaded by ``build_network`` with its method, configuration and backbone checks) and the task head of
      ``models/model.pt`` (:class:`lib.states.HeadState`, every head key required); without them, or with
      ``pretrained`` false, fine-tuning starts from the bundle's own ``init`` (TPP's target parameters).
    - A classifier's validation split is stratified by class.
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, load_strict=True, **kwargs)
        self.kind = bundle_kind(path) if self.is_valid() else None
        self._continue_from: tuple[str, str] | None = None

    def _fetch_datalist(self, request: dict, datastore: Datastore) -> list[dict]:
        """The datastore's final labels of this bundle's kind: ``.json`` class labels for a classifier, image
        files (masks) for a segmenter; labels of the other kind (another bundle's, on a shared datastore) are
        skipped. Class labels are read into ``train.json``'s class indices."""
        datalist = super()._fetch_datalist(request, datastore)
        classify = self.kind == InferType.CLASSIFICATION
        mine = [d for d in datalist if str(d["label"]).endswith(LABEL_SUFFIX) == classify]
        if len(mine) < len(datalist):
            logger.info("%s: skipped %d labels of another kind", request.get("model"), len(datalist) - len(mine))
        if classify:
            names = class_names(self.bundle_path)
            mine = [{"image": d["image"], "label": read_class_label(d["label"], names)} for d in mine]
        if not mine:
            what = f"a '{LABEL_SUFFIX}' class label" if classify else "a mask"
            raise ValueError(f"no image of the datastore has {what} as final label: nothing to train '{request.get('model')}' on.")
        return mine

    def _partition_datalist(self, datalist: list[dict], request: dict, shuffle: bool = False):
        """A classifier's validation split is stratified by class (MONAI's ``partition_dataset_classes``), so
        that a small labelled set still trains every class (the class-weighted loss refuses an absent class)."""
        val_split = float(request.get("val_split", 0.2))
        if self.kind != InferType.CLASSIFICATION or not 0.0 < val_split < 1.0:
            return super()._partition_datalist(datalist, request, shuffle=shuffle)
        train, val = partition_dataset_classes(datalist, [d["label"] for d in datalist], ratios=[1 - val_split, val_split],
                                               shuffle=shuffle)
        logger.info("stratified split of %d records: %d training, %d validation", len(datalist), len(train), len(val))
        return train, val

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        models = Path(self.bundle_path) / "models"
        target = models / "target_parameters.safetensors"
        self._continue_from = None
        if pretrained and Path(model_pytorch).is_file() and target.is_file():
            self._continue_from = (str(target), str(model_pytorch))
        logger.info("continue from fine-tuned target parameters and head: %s", self._continue_from)

    def _update_overrides(self, overrides: dict) -> dict:
        datalist = Path(self.bundle_path) / DATALIST_NAME
        datalist.parent.mkdir(parents=True, exist_ok=True)
        training = overrides[self.const.key_train_dataset_data()]
        # val_split < 0 means "the bundle's own validation set", which a MONAI Label bundle copy does not have:
        # validate on the training records then, rather than fail on a missing datalist
        validation = overrides.get(self.const.key_validate_dataset_data(), training)
        datalist.write_text(json.dumps({"training": training, "validation": validation}, indent=4))
        overrides["datalist"] = str(datalist)
        if self._continue_from is not None:
            target, model = self._continue_from
            overrides["init"] = "tpp"
            overrides["tpp_target_parameters"] = target
            head_loader = {
                "_target_": "CheckpointLoader",
                "load_path": model,
                "load_dict": {"model": {"_target_": "lib.states.HeadState", "network": "@network",
                                        "head_modules": "@head_modules"}},
                "strict": True,
            }
            handlers = overrides[self.const.key_train_handlers()]
            overrides[self.const.key_train_handlers()] = [head_loader, *handlers]
        return overrides
