"""Training through MONAI Label's ``BundleTrainTask``, made to fit the TPP bundles' ``train.json``."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.bundle import create_workflow
from monai.data import partition_dataset_classes
from monai.transforms import LoadImage
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.train.bundle import BundleTrainTask

from lib.bundle_kind import BundleMetadataError, bundle_kind, class_names
from lib.errors import InvalidInput
from lib.formats import LABEL_SUFFIX, bundle_family, describe, family

__all__ = ["TPPBundleTrainTask", "read_class_label", "has_foreground", "DATALIST_NAME", "VALIDATOR"]

logger = logging.getLogger(__name__)

#: where a training round's datalist is written inside the bundle (train.json reads it through ``datalist``)
DATALIST_NAME = "logs/monailabel/datalist.json"
#: the validation engine of the bundles' ``train.json`` (MONAI model zoo's name), whose key metric picks ``model.pt``
VALIDATOR = "validate#evaluator"


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


def has_foreground(path: str | os.PathLike) -> bool:
    """Whether the mask at ``path`` has a voxel above 0 (any class but the background)."""
    return bool((LoadImage(image_only=True)(str(path)) > 0).any())


def _weights_digest(path: Path) -> str | None:
    """SHA-256 of the tensors of the checkpoint at ``path``, by key (None where there is none).

    What tells an unchanged ``model.pt``: its bytes are not enough, since a checkpoint saver rewriting the same
    tensors does not write the same file (``torch.save``'s archive differs from one save to the next).
    """
    if not path.is_file():
        return None
    digest = hashlib.sha256()

    def update(key: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value, key=str):
                update(f"{key}.{k}", value[k])
        elif isinstance(value, torch.Tensor):
            digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{key}={value!r}".encode())

    update("", torch.load(path, map_location="cpu", weights_only=True))
    return digest.hexdigest()


class _KeyMetricHistory:
    """The validator's key metric after each of its runs, as ``(epoch, value)`` (None where not finite)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.values: list[tuple[int, float | None]] = []

    def attach(self, evaluator: Engine) -> None:
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        self.name = getattr(engine.state, "key_metric_name", None)
        value = engine.state.metrics.get(self.name) if self.name else None
        try:
            value = float(value) if value is not None and math.isfinite(float(value)) else None
        except (TypeError, ValueError):  # a metric that is no scalar cannot rank checkpoints either
            value = None
        self.values.append((int(engine.state.epoch), value))


class TPPBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` with these changes for the TPP bundles.

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
      ``pretrained`` false, fine-tuning starts from the bundle's own ``init`` (TPP's target parameters, or LoRA's
      standard start where the bundle's ``default_init`` is ``standard``).
    - The validation split is stratified: by class for a classifier, by empty / non-empty mask for a
      segmenter, whose validation always gets a mask with foreground where two or more masks have some (the
      Dice that picks ``model.pt`` is undefined on empty masks, so a round validated on them never improves).
    - ``num_epochs`` is set to the round's ``max_epochs``: the bundles size their learning-rate warm-up and
      schedule by it, and MONAI Label sets only the trainer's ``max_epochs``, so a 1-epoch round would run the
      first epoch of a 30-epoch schedule, whose warm-up starts at a learning rate of 0.
    - The round returns (and logs) whether ``models/model.pt`` changed, with the validation key metric per
      epoch; an unchanged model is a warning that says why (:meth:`__call__`).
    - A bad request (``max_epochs``, ``val_split``), or a datastore without labels to train on, raises
      :class:`lib.errors.InvalidInput` (a 422 for the client of a synchronous round).
    """

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        super().__init__(path, conf, load_strict=True, **kwargs)
        self.kind = bundle_kind(path) if self.is_valid() else None
        self.family = bundle_family(path) if self.is_valid() else None
        self._continue_from: tuple[str, str] | None = None
        self._history = _KeyMetricHistory()
        self._validation_foreground: tuple[int, int] | None = None  # (masks with foreground, records) of a segmenter

    @staticmethod
    def check_request(request: dict) -> None:
        """Refuse a round whose ``max_epochs`` or ``val_split`` cannot be used, naming the parameter.

        Raises:
            InvalidInput: ``max_epochs`` is not a whole number >= 1, or ``val_split`` is not a number below 1.
        """
        epochs = request.get("max_epochs", 50)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise InvalidInput(f"max_epochs {epochs!r}: expected a whole number >= 1.")
        val_split = request.get("val_split", 0.2)
        if isinstance(val_split, bool) or not isinstance(val_split, (int, float)) or not val_split < 1:
            raise InvalidInput(f"val_split {val_split!r}: expected a number below 1 (the fraction of the labelled images "
                               "used for validation; 0 or less: validate on the training images).")

    def __call__(self, request: dict, datastore: Datastore) -> dict:
        """Run a round, then report whether it changed ``models/<model_filename>``.

        A round changes the served model only where the validation key metric improves (the bundles write
        ``model.pt`` from a best-metric checkpoint saver, and the first validation always writes it), so an
        unchanged model means that the weights saved at the first validation were the starting ones and the
        metric never rose above that first value. The result says so with the metric per epoch and, for a
        segmenter, how many validation masks have foreground; it is also logged as a warning, which a
        background round (no client waiting) leaves in the server log.

        Returns:
            ``{"model": name, "model_updated": bool, "key_metric": name, "key_metric_per_epoch": [[epoch, value],
            ...], "validation_foreground": [masks with foreground, records] (segmenters)}``, plus ``"warning"``
            where the model is unchanged.
        """
        self.check_request(request)
        filename = request.get("model_filename", "model.pt")
        model = Path(self.bundle_path) / "models" / (filename if isinstance(filename, str) else filename[0])
        before = _weights_digest(model)
        self._history = _KeyMetricHistory()
        self._validation_foreground = None
        result = super().__call__(request, datastore) or {}
        report = {"model": request.get("model"), "model_updated": _weights_digest(model) != before,
                  "key_metric": self._history.name, "key_metric_per_epoch": [list(v) for v in self._history.values]}
        if self._validation_foreground is not None:
            report["validation_foreground"] = list(self._validation_foreground)
        if not report["model_updated"]:
            report["warning"] = self._unchanged_reason(model)
            logger.warning("%s: %s", request.get("model"), report["warning"])
        return {**result, **report}

    def _unchanged_reason(self, model: Path) -> str:
        """Why a round left ``model`` as it was, from the key metric's history and the validation masks."""
        name, values = self._history.name or "the key metric", self._history.values
        where = f"models/{model.name} is unchanged by this training round (the same weights as before)"
        if not values:
            return f"{where}: no validation ran, so the best-metric checkpoint was never written."
        per_epoch = ", ".join(f"epoch {e}: {'undefined' if v is None else f'{v:.4f}'}" for e, v in values)
        finite = [v for _, v in values if v is not None]
        if not finite:
            why = f"validation {name} was undefined (NaN) at every epoch ({per_epoch})"
        elif values[0][1] is not None and max(finite) > values[0][1]:
            why = (f"validation {name} improved ({per_epoch}) but the weights saved were the starting ones: training "
                   "changed no weight (nothing trainable, or a learning rate of 0)")
        else:
            why = (f"validation {name} never rose above its first value ({per_epoch}), so the best-metric checkpoint "
                   "was written only at the first validation, with weights equal to the starting ones (no training "
                   "step had a non-zero learning rate by then, e.g. a warm-up from 0 over the first epoch)")
        if self._validation_foreground is not None:
            with_fg, total = self._validation_foreground
            why += f"; {with_fg} of the {total} validation masks have foreground"
            if with_fg == 0:
                why += " (Dice is undefined or 0 on empty masks: label images with foreground)"
        return f"{where}: {why}."

    def run_single_gpu(self, request: dict, overrides: dict) -> None:
        """What MONAI Label runs (``monai.bundle.run``), keeping the validator's key metric per epoch."""
        workflow = create_workflow(config_file=self.bundle_config_path, meta_file=self.bundle_metadata_path,
                                   run_id=request.get("run_id", "run"), **overrides)
        if workflow.parser.get(VALIDATOR) is not None:
            self._history.attach(workflow.parser.get_parsed_content(VALIDATOR))
        workflow.run()
        workflow.finalize()

    def _fetch_datalist(self, request: dict, datastore: Datastore) -> list[dict]:
        """The datastore's final labels of this bundle's kind: ``.json`` class labels for a classifier, image
        files (masks) for a segmenter, of images of the file types the bundle reads (``metadata.json``'s
        ``data_type``: a PNG bundle skips ``.npy`` patches and NIfTI volumes); labels of another kind (another
        bundle's, on a shared datastore) are skipped. Class labels are read into ``train.json``'s class indices."""
        datalist = super()._fetch_datalist(request, datastore)
        classify = self.kind == InferType.CLASSIFICATION
        mine = [d for d in datalist if str(d["label"]).endswith(LABEL_SUFFIX) == classify
                and (self.family is None or family(d["image"]) == self.family)]
        if len(mine) < len(datalist):
            logger.info("%s: skipped %d labels of another kind or image type", request.get("model"),
                        len(datalist) - len(mine))
        if classify:
            names = class_names(self.bundle_path)
            try:
                mine = [{"image": d["image"], "label": read_class_label(d["label"], names)} for d in mine]
            except BundleMetadataError as err:  # a label the datastore holds, not a fault of the bundle
                raise InvalidInput(str(err)) from err
        if not mine:
            what = f"a '{LABEL_SUFFIX}' class label" if classify else "a mask"
            images = f" of the types the bundle reads ({describe(self.family)})" if self.family else ""
            raise InvalidInput(f"no image{images} in the datastore has {what} as final label: nothing to train "
                               f"'{request.get('model')}' on.")
        return mine

    def _partition_datalist(self, datalist: list[dict], request: dict, shuffle: bool = False):
        """The validation split, stratified with MONAI's ``partition_dataset_classes``.

        - classifier: by class, so that a small labelled set still trains every class (the class-weighted loss
          refuses an absent class);
        - segmenter: by empty / non-empty mask; where stratifying leaves the validation without foreground (few
          masks have some: rounding puts them all in training) and at least two masks have some, one of them
          is swapped with an empty validation mask. A single mask with foreground stays in training (a round
          trained on empty masks only would learn to predict nothing), with a warning.
        """
        val_split = float(request.get("val_split", 0.2))
        if not 0.0 < val_split < 1.0:
            return super()._partition_datalist(datalist, request, shuffle=shuffle)
        ratios = [1 - val_split, val_split]
        if self.kind == InferType.CLASSIFICATION:
            train, val = partition_dataset_classes(datalist, [d["label"] for d in datalist], ratios=ratios, shuffle=shuffle)
            logger.info("split of %d records stratified by class: %d training, %d validation", len(datalist), len(train),
                        len(val))
            return train, val
        foreground = [has_foreground(d["label"]) for d in datalist]
        train, val = partition_dataset_classes(datalist, [int(f) for f in foreground], ratios=ratios, shuffle=shuffle)
        is_fg = {id(d): f for d, f in zip(datalist, foreground)}
        train_fg = [d for d in train if is_fg[id(d)]]
        if len(train_fg) >= 2 and not any(is_fg[id(d)] for d in val):
            moved = train_fg[-1]
            train.remove(moved)
            if val:  # a swap keeps the split's sizes
                train.append(val.pop(0))
            val.append(moved)
        val_fg = sum(is_fg[id(d)] for d in val)
        self._validation_foreground = (val_fg, len(val))
        logger.info("split of %d masks stratified by foreground: %d training (%d with foreground), %d validation "
                    "(%d with foreground)", len(datalist), len(train), sum(is_fg[id(d)] for d in train), len(val), val_fg)
        if val and not val_fg:
            logger.warning("no validation mask has foreground (%d of %d masks have some): the validation Dice that "
                           "picks model.pt cannot improve; label more images with foreground", sum(foreground),
                           len(datalist))
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
        # val_split < 0 means "the bundle's own validation set", which a MONAI Label bundle copy does not have, and
        # val_split 0 leaves no validation records (no validation: model.pt would never be written): validate on
        # the training records then, rather than fail on a missing datalist or never save
        validation = overrides.get(self.const.key_validate_dataset_data()) or training
        if self.const.key_validate_dataset_data() in overrides:
            overrides[self.const.key_validate_dataset_data()] = validation
        datalist.write_text(json.dumps({"training": training, "validation": validation}, indent=4))
        overrides["datalist"] = str(datalist)
        if "num_epochs" in self.bundle_config.config:  # the schedule's length: see the class docstring
            overrides["num_epochs"] = overrides[self.const.key_train_trainer_max_epochs()]
        if self._continue_from is not None:
            target, model = self._continue_from
            # start from the fine-tuned target parameters (init 'tpp' reads tpp_target_parameters); default_init
            # follows, so the round still writes the files served and continued from (model.pt,
            # target_parameters.safetensors) in a bundle whose default start is LoRA's standard one
            overrides["init"] = overrides["default_init"] = "tpp"
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
