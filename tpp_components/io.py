"""Safe output files: a crash or an error never leaves a half-written output behind, and a rerun need not
silently replace an earlier run's file."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "keep_previous_version"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` only if the block succeeds.

    Args:
        path: the final destination. Its parent directory is created if needed.

    Example::

        >>> with atomic_path("models/model.pt") as tmp:
        ...     torch.save(state, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        try:
            yield Path(tmp)
        except OSError as e:  # a full disk or a read-only folder: name the file that could not be written
            if e.errno is None or e.filename == str(path):
                raise
            raise OSError(e.errno, f"could not write '{path}' ({e.strerror or e}); the previous file, if any, is unchanged",
                          str(path)) from e
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def keep_previous_version(path: str | os.PathLike) -> Path | None:
    """Copy an existing ``path`` to ``<stem>.<its mtime, YYYYmmdd-HHMMSS><suffix>`` beside it, before it is rewritten.

    The copy is written atomically and keeps the file's times; ``path`` itself stays in place, so the
    caller's atomic rewrite replaces it without a moment where neither version exists. A name already
    taken (two runs within a second) gets ``-1``, ``-2``, ... appended to the stamp.

    Args:
        path: the file about to be rewritten.

    Returns:
        the copy's path, or None where ``path`` did not exist.

    Example::

        >>> keep_previous_version("eval/test_predictions.csv")
        PosixPath('eval/test_predictions.20261203-141502.csv')
    """
    path = Path(path)
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
    kept, n = path.with_name(f"{path.stem}.{stamp}{path.suffix}"), 0
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.stem}.{stamp}-{n}{path.suffix}")
    with atomic_path(kept) as tmp:
        shutil.copy2(path, tmp)
    return kept
