"""Writing checkpoints so that a kill never leaves a broken one, and finding the one to resume from."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import ignite.distributed as idist
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from tpp_components.io import atomic_path

__all__ = [
    "AtomicDiskSaver", "AtomicCheckpointSaver", "latest_checkpoint", "resume_checkpoint", "supersede_checkpoints",
    "remove_stale_temporaries",
    "SUPERSEDED_SUFFIX",
]

#: suffix given to an earlier run's resumable checkpoints when a fresh run starts in their folder
SUPERSEDED_SUFFIX = ".superseded"

logger = logging.getLogger(__name__)

#: the temporary files of :func:`tpp_components.io.atomic_path` (``.<name>.<mkstemp's 8 characters>.tmp``)
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def remove_stale_temporaries(directory: str | os.PathLike) -> list[str]:
    """Remove what a killed process left of its atomic writes in ``directory`` (never a finished file).

    ``kill -9`` during :func:`tpp_components.io.atomic_path` cannot run its clean-up: the partial
    temporary file stays (the destination itself is untouched). Called when a stage starts.

    Returns:
        the names removed.
    """
    directory = Path(directory)
    removed = sorted(p.name for p in directory.iterdir() if p.is_file() and _TEMPORARY.match(p.name)) if directory.is_dir() else []
    for name in removed:
        (directory / name).unlink(missing_ok=True)
    if removed:
        logger.warning("removed partial files of an interrupted run from %s: %s", directory, removed)
    return removed


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` that never leaves a half-written or a missing checkpoint behind.

    Why not the stock savers: MONAI's ``CheckpointSaver`` builds its ``DiskSaver`` with
    ``atomic=False`` (ignite's atomic mode makes files private), so ``torch.save`` writes straight
    into the final name; and ignite's ``Checkpoint`` *removes* the file it replaces *before* writing
    the new one. A kill between the two leaves no checkpoint (or, for ``models/model.pt``, no
    model); a kill during the write leaves a truncated one that the next ``--resume`` cannot load.
    Here every file is written beside its destination and renamed over it
    (:func:`tpp_components.io.atomic_path`, ordinary permissions), and removals wait until the
    replacement is in place.

    Args:
        dirname: the folder written to.
        filename: a fixed file name used for every save (MONAI's ``key_metric_filename``), or None
            for the names ignite composes.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=str(dirname), require_empty=False, atomic=True)
        self.filename = filename
        self._pending_removal: list[str] = []
        if idist.get_rank() == self.save_on_rank:
            remove_stale_temporaries(self.dirname)

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        if idist.get_rank() == self.save_on_rank:
            for name in self._pending_removal:  # the replacement is on disk: now the old file may go
                if name != filename:
                    (self.dirname / name).unlink(missing_ok=True)
        self._pending_removal.clear()

    # private hook: ignite's DiskSaver writes every file through _save_func; overriding it is the one way to write
    # beside the destination with ordinary permissions (its public atomic=True makes the file private, mode 600)
    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        with atomic_path(path) as tmp:
            func(checkpoint, tmp, **self.kwargs)

    def remove(self, filename: str) -> None:
        self._pending_removal.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments) writing through :class:`AtomicDiskSaver`.

    Also gives the key-metric bookkeeping a ``state_dict`` (MONAI's saver only has
    ``load_state_dict``) so that a resumed run keeps comparing against the best model saved
    before the interruption (:class:`tpp_components.handlers.BestMetricState`).
    """

    def __init__(self, save_dir: str, save_dict: dict, key_metric_filename: str | None = None,
                 final_filename: str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir=save_dir, save_dict=save_dict, key_metric_filename=key_metric_filename,
                         final_filename=final_filename, **kwargs)
        # private: MONAI's CheckpointSaver builds its three ignite Checkpoints inside __init__ with a DiskSaver of
        # its own and takes no save handler, so the handler is swapped on them after construction
        for checkpoint, fixed in ((self._final_checkpoint, final_filename), (self._key_metric_checkpoint, key_metric_filename),
                                  (self._interval_checkpoint, None)):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, fixed)

    def state_dict(self) -> dict:
        """The key-metric tracking list (empty when the saver does not save on the key metric); scores as
        Python floats (metrics may be numpy scalars, which ``torch.load(weights_only=True)`` refuses)."""
        if self._key_metric_checkpoint is None:  # private: MONAI exposes its key-metric Checkpoint no other way
            return {"_saved": []}
        saved = self._key_metric_checkpoint.state_dict()["_saved"]  # ignite's public state_dict
        return {"_saved": [(float(priority), str(filename)) for priority, filename in saved]}


def _checkpoints(directory: Path, prefix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_epoch=(\d+)\.pt$")
    if not directory.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name)))


def latest_checkpoint(directory: str | os.PathLike, prefix: str) -> str | None:
    """The ``<prefix>_checkpoint_epoch=N.pt`` (written by MONAI's ``CheckpointSaver``) with the largest N.

    Returns:
        its path, or None when there is none (a fresh run).
    """
    found = _checkpoints(Path(directory), prefix)
    return str(found[-1][1]) if found else None


def resume_checkpoint(directory: str | os.PathLike, prefix: str, resume: bool) -> str | None:
    """The checkpoint a stage starts from: the latest one when resuming, none for a fresh run (a query: it
    changes nothing; :func:`supersede_checkpoints` moves an earlier run's checkpoints aside).

    Resuming when there is no checkpoint yet (killed during the first epoch) starts afresh.

    Args:
        directory: the stage's ``output_dir``.
        prefix: the stage's ``checkpoint_prefix``.
        resume: the stage's ``resume`` switch.

    Returns:
        the path to load, or None.
    """
    if not isinstance(resume, bool):
        raise TypeError(f"'resume' must be true or false, got {resume!r} ({type(resume).__name__}).")
    if not resume:
        return None
    found = latest_checkpoint(directory, prefix)
    if found is None:
        logger.info("resume: no '%s_checkpoint_epoch=N.pt' in %s yet, starting afresh.", prefix, directory)
    return found


def supersede_checkpoints(directory: str | os.PathLike, prefix: str) -> list[str]:
    """Rename an earlier run's resumable checkpoints in ``directory`` to ``<name>.superseded``.

    A fresh run (``resume`` false) replaces the earlier run in its folder, as it replaces its
    ``models/model.pt``; renaming its checkpoints (one generation is kept, nothing is deleted) makes a later
    ``--resume True`` continue *this* run and never the earlier one, whatever their epochs. ``train.json``'s
    ``initialize`` calls this first for a fresh run.

    Returns:
        the names renamed (empty when there were none).
    """
    found = _checkpoints(Path(directory), prefix)
    for _, path in found:
        os.replace(path, path.with_name(path.name + SUPERSEDED_SUFFIX))
    if found:
        logger.warning("fresh run (resume false): the earlier run's checkpoints %s in %s were renamed *%s.",
                       [p.name for _, p in found], directory, SUPERSEDED_SUFFIX)
    return [p.name for _, p in found]
