"""The command line of ``python -m monai.bundle run``: one builder for the tools and the tests that start bundles."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["bundle_command", "cli_value"]


def cli_value(value: Any) -> str:
    """A config value as ``monai.bundle run`` reads it from the command line (``None`` as the expression ``$None``)."""
    if value is None:
        return "$None"
    return value if isinstance(value, str) else repr(value)


def bundle_command(
    bundle: str | Path,
    configs: Sequence[str | Path],
    overrides: Mapping[str, Any] | None = None,
    relative: bool = False,
    launcher: Sequence[str] = (sys.executable,),
) -> list[str]:
    """``argv`` that runs ``bundle``'s ``configs`` (merged left to right) with ``overrides`` as ``--key value``.

    Args:
        bundle: the bundle folder.
        configs: file names under ``configs/`` (an absolute path, such as an extra override file, is kept as it is).
        overrides: config values given on the command line, in order.
        relative: paths relative to the bundle folder, as a user types them there (run with ``cwd=bundle``);
            otherwise absolute, with ``--bundle_root``.
        launcher: what runs ``-m monai.bundle``: the interpreter, or ``torchrun``'s command line.

    Example::

        bundle_command("bundles/breast_us_classification", ["train.json", "tpp.json"], {"num_epochs": 1})
    """
    root = Path(bundle) if relative else Path(bundle).resolve()
    base = Path() if relative else root
    files = [str(c) if Path(c).is_absolute() else str(base / "configs" / c) for c in configs]
    cmd = [*launcher, "-m", "monai.bundle", "run", "--config_file", str(files) if len(files) > 1 else files[0]]
    if not relative:
        cmd += ["--bundle_root", str(root)]
    cmd += ["--meta_file", str(base / "configs" / "metadata.json"), "--logging_file", str(base / "configs" / "logging.conf")]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", cli_value(value)]
    return cmd
