"""The model zoo's rules for ``configs/metadata.json``: version and changelog, pinned requirements, apps."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from packaging.version import InvalidVersion, Version

__all__ = ["MetadataError", "latest_version", "release_metadata", "CORE_DISTRIBUTIONS"]

#: distributions the schema pins in their own keys (``monai_version``, ``pytorch_version``, ``numpy_version``)
CORE_DISTRIBUTIONS = ("monai", "torch", "numpy")


class MetadataError(ValueError):
    """metadata.json does not satisfy the zoo's rules (version, changelog, packages)."""


def _version(text: str, where: str) -> Version:
    try:
        return Version(text)
    except InvalidVersion as e:
        raise MetadataError(f"{where}: '{text}' is not a version (expected e.g. '0.1.1').") from e


def latest_version(meta: Mapping[str, Any], meta_file: str = "metadata.json") -> str:
    """The highest version in ``meta['changelog']``.

    Raises:
        MetadataError: no changelog, or a key that is not a version.
    """
    changelog = meta.get("changelog")
    if not isinstance(changelog, Mapping) or not changelog:
        raise MetadataError(f"{meta_file}: 'changelog' must be a non-empty mapping of version -> text, got {changelog!r}.")
    return str(max(changelog, key=lambda v: _version(v, f"{meta_file} changelog key")))


def release_metadata(
    meta: Mapping[str, Any],
    version: str | None = None,
    changelog: str | None = None,
    packages: Mapping[str, str] | None = None,
    drop_packages: tuple[str, ...] = (),
    supported_apps: Mapping[str, str] | None = None,
    meta_file: str = "metadata.json",
) -> dict[str, Any]:
    """A copy of ``meta`` for a zoo package.

    Args:
        meta: the source bundle's metadata (not modified).
        version: the package's version; must be newer than every version in the changelog. None keeps
            ``meta['version']``, which must then be the latest changelog entry.
        changelog: the text of the new version's changelog entry (required with ``version``).
        packages: distributions the package needs (name -> version) beyond the source's
            ``required_packages_version``; the source's pins win, and the core distributions (monai, torch,
            numpy) stay in their own keys.
        drop_packages: distributions to remove from ``required_packages_version`` (code vendored instead).
        supported_apps: ``{app: version}`` verified to load the bundle (e.g. ``{"monai-label": "0.8.5"}``);
            None keeps the source's value.
        meta_file: named in errors.

    Raises:
        MetadataError: a version that is not newer than the changelog's latest, a version without a
            changelog text, or a kept version missing from the changelog.
    """
    out = copy.deepcopy(dict(meta))
    latest = latest_version(out, meta_file)
    if version is None:
        if changelog is not None:
            raise MetadataError("a changelog text needs a new version (--version).")
        if out.get("version") != latest:
            raise MetadataError(
                f"{meta_file}: 'version' is {out.get('version')!r} but the changelog's latest entry is '{latest}'; "
                "the zoo requires the version to be in the changelog (give --version and --changelog)."
            )
    else:
        if _version(version, "--version") <= _version(latest, f"{meta_file} changelog"):
            raise MetadataError(
                f"version '{version}' is not newer than '{latest}', the latest in the changelog of {meta_file}; "
                "the zoo refuses a package whose version is already released."
            )
        if not changelog or not changelog.strip():
            raise MetadataError(f"version '{version}' needs a changelog text (--changelog).")
        out["version"] = version
        out["changelog"] = {version: changelog.strip(), **out["changelog"]}
    required = {k: v for k, v in dict(out.get("required_packages_version", {})).items() if k not in drop_packages}
    for name, ver in sorted((packages or {}).items()):
        if name not in CORE_DISTRIBUTIONS and name not in drop_packages:
            required.setdefault(name, ver.split("+")[0])  # a local build tag (``+cpu``) is not on the index
    out["required_packages_version"] = required
    if supported_apps is not None:
        out["supported_apps"] = dict(supported_apps)
    return out
