"""Let MONAI Label's bundle tasks import where torchvision cannot.

``monailabel.transform.post`` (which ``BundleInferTask`` imports for ``Restored``) imports
``torchvision.utils.make_grid`` / ``save_image`` at module level, for its ``DumpImagePrediction2Dd``
debugging transform only. No torchvision build for the CPU torch 2.13 is installable offline here (PyPI's
wheel is built against CUDA torch and fails to import beside a CPU torch), so where torchvision is absent
:func:`import_monailabel_post` imports that module against a placeholder ``torchvision.utils`` whose two
functions raise, then removes the placeholder again, so that no other ``import torchvision`` (MONAI's
optional imports) mistakes it for the real package. Where torchvision is installed nothing is replaced.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__all__ = ["import_monailabel_post"]


def _unavailable(*args, **kwargs):
    raise ModuleNotFoundError("torchvision is not installed; MONAI Label's image-dump transforms need it.")


def import_monailabel_post() -> types.ModuleType:
    """``monailabel.transform.post``, imported with a placeholder ``torchvision.utils`` if torchvision is absent."""
    if "torchvision" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        return importlib.import_module("monailabel.transform.post")
    package = types.ModuleType("torchvision")
    package.__path__ = []  # a package, so that ``torchvision.utils`` resolves to the module below
    utils = types.ModuleType("torchvision.utils")
    utils.make_grid = utils.save_image = _unavailable
    package.utils = utils
    sys.modules.update({"torchvision": package, "torchvision.utils": utils})
    try:
        return importlib.import_module("monailabel.transform.post")
    finally:
        del sys.modules["torchvision"], sys.modules["torchvision.utils"]
