"""Pair 2D images with their segmentation masks, whatever the masks are called.

Layouts in the wild keep masks beside the images (BUSI: ``x (1).png`` + ``x (1)_mask.png``, a
second lesion in ``x (1)_mask_1.png``) or in a parallel folder tree. A mask is recognised by a
regular expression on its file name without extension, whose named group ``stem`` is the image's
name without extension; every mask of an image is kept, so that the caller can unite them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tpp_components.data.datalist import IMAGE_EXTENSIONS, MASK_FILE_PATTERN, DatalistError, _strip_extension

__all__ = ["DEFAULT_MASK_PATTERN", "ImageMasks", "scan_image_mask_pairs"]

#: the masks every reader of the datalists skips (:data:`~tpp_components.data.datalist.MASK_FILE_PATTERN`): BUSI's
#: ``<stem>_mask``, ``<stem>_mask_1``, ..., HC18's ``<stem>_Annotation``, in any case
DEFAULT_MASK_PATTERN = MASK_FILE_PATTERN


@dataclass
class ImageMasks:
    """An image, its masks (possibly none) and its class folder (relative to the dataset root)."""

    image: Path
    masks: list[Path] = field(default_factory=list)
    group: str = ""


def scan_image_mask_pairs(
    root: str | os.PathLike,
    mask_pattern: str = DEFAULT_MASK_PATTERN,
    mask_root: str | os.PathLike | None = None,
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
) -> list[ImageMasks]:
    """Every image under ``root`` (recursively) with the masks that name it.

    Args:
        root: dataset folder; images may sit in sub-folders (e.g. one per class).
        mask_pattern: regular expression matched against a file's whole name without extension;
            a match makes the file a mask of the image named by its ``stem`` group.
        mask_root: folder of the masks when they are not beside the images; its sub-folders
            mirror ``root``'s (a mask of ``root/a/x.png`` is looked for in ``mask_root/a/``).
        extensions: accepted file name endings (case-insensitive).

    Returns:
        one :class:`ImageMasks` per image, sorted by image path; ``masks`` is empty for an image
        no mask names (the caller reports it) and sorted otherwise.

    Raises:
        DatalistError: a folder is missing, ``mask_pattern`` has no ``stem`` group, no image is
            found, or a mask names no image (the message lists them).
    """
    root = Path(root).expanduser().resolve()
    masks_at = Path(mask_root).expanduser().resolve() if mask_root is not None else root
    for folder in {root, masks_at}:
        if not folder.is_dir():
            raise DatalistError(f"dataset folder not found: {folder}")
    try:
        pattern = re.compile(mask_pattern)
    except re.error as e:
        raise DatalistError(f"mask_pattern {mask_pattern!r} is not a regular expression: {e}") from e
    if "stem" not in pattern.groupindex:
        raise DatalistError(f"mask_pattern {mask_pattern!r} needs a named group 'stem' (the image's name), e.g. {DEFAULT_MASK_PATTERN!r}")
    exts = tuple(e.lower() for e in extensions)

    def files(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.lower().endswith(exts)
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    def mask_stem(path: Path) -> str | None:
        match = pattern.fullmatch(_strip_extension(path.name))
        return match.group("stem") if match else None

    images, clashes = {}, []
    for path in files(root):
        if mask_root is None and mask_stem(path) is not None:
            continue
        key = (path.parent.relative_to(root), _strip_extension(path.name))
        if key in images:  # x.png and x.jpg: a mask named x_mask could belong to either
            clashes.append(f"{images[key].image.name} and {path.name} in {path.parent}")
        images[key] = ImageMasks(image=path, group=str(path.parent.relative_to(root)) if path.parent != root else "")
    if clashes:
        raise DatalistError(f"images that differ only in extension cannot be paired with masks by name: {clashes[:10]}")
    if not images:
        raise DatalistError(f"dataset folder {root} holds no image ending in {list(exts)}")
    orphans = []
    for path in files(masks_at):
        stem = mask_stem(path)
        if stem is None:
            continue
        key = (path.parent.relative_to(masks_at), stem)
        if key in images:
            images[key].masks.append(path)
        else:
            orphans.append(str(path))
    if orphans:
        listed = "\n".join(f"  - {p}" for p in orphans[:20])
        raise DatalistError(
            f"{len(orphans)} mask file(s) name no image (pattern {mask_pattern!r}, image expected in the mirrored "
            f"folder of {root} with the name the pattern's 'stem' gives):\n{listed}")
    for item in images.values():
        item.masks.sort()
    return sorted(images.values(), key=lambda item: str(item.image))
