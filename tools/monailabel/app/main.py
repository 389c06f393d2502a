"""A MONAI Label app serving the TPP bundles (``model/<bundle name>/``): inference for every bundle, and
training rounds from the datastore's final labels.

    monailabel start_server --app tools/monailabel/app --studies <images> \\
        --conf models breast_us_classification,breast_us_segmentation --conf zoo_source github --conf sam2 false

It differs from MONAI Label's ``monaibundle`` sample app in what tells a classifier from a segmenter (the
bundle's metadata, not its folder name), in loading checkpoints strictly, and in how training is fed
(``lib/trainers.py``). ``--conf zoo_source github`` keeps start-up offline: the default source lists the
model zoo over the network.
"""

from __future__ import annotations

import logging
import os

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import get_bundle_models, strtobool

from lib.compat import import_monailabel_post

import_monailabel_post()  # before the bundle tasks import it: see lib/compat.py

from lib.infers import bundle_infer_task  # noqa: E402
from lib.states import HeadState  # noqa: E402,F401  (imported so that train.json overrides can name lib.states.HeadState)
from lib.trainers import TPPBundleTrainTask  # noqa: E402

logger = logging.getLogger(__name__)


class MyApp(MONAILabelApp):
    """The bundles named by ``--conf models`` (comma-separated folders of ``model/``)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.model_dir = os.path.join(app_dir, "model")
        if not conf.get("models"):
            available = sorted(os.listdir(self.model_dir)) if os.path.isdir(self.model_dir) else []
            raise ValueError(f"--conf models <names> is required (bundles in '{self.model_dir}': {available}).")
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"TPP bundles ({monailabel.__version__})",
            description="Target Parameter Pre-training bundles: PEFT-tuned classification and segmentation",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            task = bundle_infer_task(path, self.conf)
            if task.is_valid():
                logger.info("+++ Adding Inferer:: %s => %s (%s)", name, path, task.type)
                infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        trainers: dict[str, TrainTask] = {}
        for name, path in self.models.items():
            task = TPPBundleTrainTask(path, self.conf)
            if task.is_valid():
                logger.info("+++ Adding Trainer:: %s => %s", name, path)
                trainers[name] = task
        return trainers

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}
