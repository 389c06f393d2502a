"""A MONAI Label app serving the TPP bundles (``model/<bundle name>/``): inference for every bundle, and
training rounds from the datastore's final labels.

    PYTHONPATH=<TPP checkout> <venv>/bin/python -m monailabel.main start_server --app tools/monailabel/app \\
        --studies <images> --conf models breast_us_classification,breast_us_segmentation \\
        --conf zoo_source github --conf sam2 false

It differs from MONAI Label's ``monaibundle`` sample app in what tells a classifier from a segmenter (the
bundle's metadata, not its folder name), in loading checkpoints strictly, and in how training is fed
(``lib/trainers.py``). ``--conf zoo_source github`` keeps start-up offline: the default source lists the
model zoo over the network.

Errors reach the client with their cause (``lib/errors.py`` says why the app's methods raise
``HTTPException``): an unknown model or image is a 404 naming it, a bad upload or training parameter a 4xx
saying what was expected, a failure of a task a 500 with its message.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

import monailabel
from fastapi import HTTPException
from monailabel.config import settings
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import get_bundle_models, strtobool

from lib.compat import import_monailabel_post


def find_tpp_components() -> None:
    """Make ``tpp_components`` (the bundles' code, in the TPP checkout) importable.

    The checkout is looked for on the path first (``PYTHONPATH=<checkout>``, as the README's command sets it),
    then above this file (the app served in place, ``--app tools/monailabel/app``), so that one venv serves
    any checkout: nothing in the venv names one. A checkout found above this file is also appended to
    ``PYTHONPATH``, which MONAI Label's task subprocesses inherit.

    Raises:
        ModuleNotFoundError: neither finds it; the message says how to start the server.
    """
    if importlib.util.find_spec("tpp_components") is not None:
        return
    for parent in Path(__file__).resolve().parents:
        if (parent / "tpp_components" / "__init__.py").is_file():
            sys.path.append(str(parent))
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(parent)) if p)
            return
    raise ModuleNotFoundError(
        f"tpp_components is not importable and no TPP checkout is above the app ('{Path(__file__).parent}'): start "
        "the server with the checkout on PYTHONPATH (PYTHONPATH=/path/to/tpp <venv>/bin/python -m monailabel.main "
        "start_server ...), see tools/monailabel/README.md."
    )


import_monailabel_post()  # before the bundle tasks import it: see lib/compat.py
find_tpp_components()  # before lib.states and the bundles import it

from lib.datastore import TPPDatastore  # noqa: E402
from lib.errors import NOT_FOUND, reported  # noqa: E402
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

    def init_datastore(self) -> Datastore:
        """MONAI Label's local datastore, with uploads decoded on arrival (:class:`lib.datastore.TPPDatastore`);
        a remote datastore (``--studies http...``) is MONAI Label's own."""
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        return TPPDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def infer(self, request: dict, datastore: Datastore | None = None) -> dict:
        """MONAI Label's ``infer``, with an unknown model or image answered by a 404 naming it, and a failure
        by an error carrying its cause (see ``lib/errors.py``)."""
        model, image = request.get("model"), request.get("image")
        if model not in self._infers:
            raise HTTPException(NOT_FOUND, detail=f"no model '{model}': this server serves {sorted(self._infers)}.")
        store = datastore if datastore is not None else self.datastore()
        if isinstance(image, str) and not os.path.exists(image) and not store.get_image_uri(image):
            raise HTTPException(NOT_FOUND, detail=f"no image '{image}' in the datastore (upload it with "
                                                  "PUT /datastore/image?image=<id>, or send the file with the request).")
        with reported(f"inference of '{model}' on image '{image}'"):
            return super().infer(request, datastore)

    def train(self, request: dict) -> dict:
        """MONAI Label's ``train``, with an unknown model answered by a 404 naming it, a bad parameter by a 422
        and a failure by an error carrying its cause (for a synchronous round: a background round logs them)."""
        model = request.get("model")
        if model not in self._trainers:
            raise HTTPException(NOT_FOUND, detail=f"no trainer '{model}': this server trains {sorted(self._trainers)}.")
        with reported(f"training round of '{model}'"):
            return super().train(request)

    def bundle_path(self, model: str | None) -> str | None:
        """The bundle of ``model``'s trainer; an unknown model is a 404.

        MONAI Label calls this in the server process for every training, batch-inference and scoring task
        before it starts the task (``AsyncTask.run``), and runs a background task in a subprocess whose errors
        only reach its log: this is where a background round for an unknown model can still be refused.
        """
        if model and model not in self._trainers and model not in self._infers:
            raise HTTPException(NOT_FOUND, detail=f"no model '{model}': this server serves {sorted(self._infers)} and "
                                                  f"trains {sorted(self._trainers)}.")
        return super().bundle_path(model)
