"""The datalist of an inference folder: every image in it, or an error naming the folder."""

from __future__ import annotations

import os
from pathlib import Path

from tpp_components.data.datalist import IMAGE_EXTENSIONS, DatalistError, is_mask_file

__all__ = ["image_datalist"]


def image_datalist(folder: str | os.PathLike, extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for the images directly inside ``folder``, sorted by name.

    Extensions match in any case (``.PNG``, ``.Jpg``); mask files beside their images
    (``x_mask.png``) are skipped.

    Raises:
        DatalistError: ``folder`` does not exist, or holds no file with one of ``extensions``;
            the message names the folder and the extensions expected.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatalistError(f"input folder '{root}' does not exist or is not a folder.")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in extensions and not is_mask_file(p))
    if not files:
        raise DatalistError(f"input folder '{root}' holds no image: expected files ending in {', '.join(extensions)} (any case).")
    return [{"image": str(p)} for p in files]
