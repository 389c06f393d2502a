"""The datalist of an inference folder: every image in it (and in its sub-folders, if asked), or an error naming the folder."""

from __future__ import annotations

import os
from pathlib import Path

from tpp_components.data.datalist import IMAGE_EXTENSIONS, MASK_FILE_PATTERN, DatalistError, is_mask_file

__all__ = ["image_datalist"]


def _images(root: Path, pattern: str, extensions: tuple[str, ...], mask_pattern: str) -> tuple[list[Path], int]:
    """The images matching ``pattern`` under ``root`` (hidden files and folders aside), sorted, and the number of masks skipped."""
    candidates = [
        p for p in root.glob(pattern)
        if p.is_file() and p.suffix.lower() in extensions and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    images = sorted(p for p in candidates if not is_mask_file(p, mask_pattern))
    return images, len(candidates) - len(images)


def image_datalist(
    folder: str | os.PathLike,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    recursive: bool = False,
    mask_pattern: str = MASK_FILE_PATTERN,
) -> list[dict[str, str]]:
    """``[{"image": path}, ...]`` for the images in ``folder`` (and its sub-folders if ``recursive``), sorted by path.

    Extensions match in any case (``.PNG``, ``.Jpg``); hidden files and folders (``.name``) and masks
    beside their images (names matching ``mask_pattern``: ``x_mask.png``, ``x_mask_1.png``, HC18's
    ``x_Annotation.png``) are skipped. ``recursive`` reads a folder of class folders (the converters'
    input layout); the class folder of an image stays visible in its path.

    Args:
        folder: the input folder.
        extensions: accepted file name endings, lower case.
        recursive: also read the sub-folders, at any depth.
        mask_pattern: regular expression on a file's name without extension that marks it as a mask
            (:data:`~tpp_components.data.datalist.MASK_FILE_PATTERN`).

    Raises:
        DatalistError: ``folder`` does not exist, or holds no file with one of ``extensions`` (masks
            aside); the message names the folder, the extensions expected, the masks skipped and,
            where only sub-folders hold images, says to set ``recursive`` or to name a sub-folder.

    Example::

        >>> image_datalist("/data/new_images", recursive=True)  # /data/new_images/benign/a.png, /data/new_images/c.png
        [{'image': '/data/new_images/benign/a.png'}, {'image': '/data/new_images/c.png'}]
    """
    root = Path(folder)
    if not root.is_dir():
        raise DatalistError(f"input folder '{root}' does not exist or is not a folder.")
    files, masks = _images(root, "**/*" if recursive else "*", extensions, mask_pattern)
    if files:
        return [{"image": str(p)} for p in files]
    where = ", sub-folders included" if recursive else ""
    skipped = f"; {masks} file(s) skipped as masks (pattern {mask_pattern!r})" if masks else ""
    hint = ""
    if not recursive:
        deeper = sorted({p.relative_to(root).parts[0] for p in _images(root, "**/*", extensions, mask_pattern)[0]})
        if deeper:
            hint = (f"; its sub-folders {deeper[:10]} do: give one of them as the input folder, or read them all with "
                    "recursive=True")
    raise DatalistError(f"input folder '{root}' holds no image{where}: expected files ending in "
                        f"{', '.join(extensions)} (any case){skipped}{hint}.")
