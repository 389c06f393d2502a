"""Finding the checkpoint to resume from."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["latest_checkpoint"]


def latest_checkpoint(directory: str | os.PathLike, prefix: str) -> str | None:
    """The ``<prefix>_checkpoint_epoch=N.pt`` (written by MONAI's ``CheckpointSaver``) with the largest N.

    Returns:
        its path, or None when there is none (a fresh run).
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_epoch=(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))]
    return str(max(found)[1]) if found else None
