"""The zoo's size limit: files over it are listed in ``large_files.yml`` (path, url, hash) instead of travelling in
the repository; the zoo's CI downloads them (``monai.apps.utils.download_url``) before verifying a bundle."""

from __future__ import annotations

import hashlib
from pathlib import Path

import yaml

__all__ = ["LargeFilesError", "ZOO_SIZE_LIMIT_MB", "large_file_entries", "large_files_yaml"]

#: the model zoo's limit for a file committed to its repository
ZOO_SIZE_LIMIT_MB = 25.0


class LargeFilesError(ValueError):
    """A file is over the size limit and no download url was given for it."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def large_file_entries(bundle_dir: str | Path, limit_mb: float, url: str | None, **fields: str) -> list[dict[str, str]]:
    """One ``large_files.yml`` entry per file of ``bundle_dir`` larger than ``limit_mb`` MB (10**6 bytes).

    Args:
        bundle_dir: the staged bundle folder.
        limit_mb: the size limit (the zoo's is :data:`ZOO_SIZE_LIMIT_MB`).
        url: where the file will be downloadable, a template formatted with ``path`` (relative to the bundle,
            e.g. ``models/model.pt``), ``name`` (the file name) and ``fields`` (e.g. ``bundle``, ``version``).
        fields: extra template fields.

    Raises:
        LargeFilesError: a file is over the limit and ``url`` is None.
    """
    bundle_dir = Path(bundle_dir)
    entries = []
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        if path.stat().st_size <= limit_mb * 1e6:
            continue
        rel = path.relative_to(bundle_dir).as_posix()
        if url is None:
            raise LargeFilesError(
                f"'{rel}' is {path.stat().st_size / 1e6:.1f} MB, over the zoo's {limit_mb:g} MB limit: give the url it "
                "will be downloaded from (--large_files_url, e.g. 'https://host/{bundle}_v{version}/{name}')."
            )
        entries.append({"path": rel, "url": url.format(path=rel, name=path.name, **fields), "hash_val": _md5(path),
                        "hash_type": "md5"})
    return entries


def large_files_yaml(entries: list[dict[str, str]]) -> str:
    """The ``large_files.yml`` text of ``entries`` (the zoo's layout: a ``large_files`` list, keys in entry order)."""
    return yaml.safe_dump({"large_files": entries}, sort_keys=False)
