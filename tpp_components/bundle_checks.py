"""Startup checks of a ``monai.bundle run``: command-line override ids, input files, output folders, and a
first line that names the culprit.

MONAI accepts any ``--id value`` override: an id that no config defines is added silently and never
read, so a typo (``--num_epoch 3``) trains with the default. MONAI also wraps every error raised
while a config item is evaluated in ``RuntimeError("Failed to evaluate ...")`` chains, so the
message that names the bad file ends up in the middle of a long traceback. The bundles call
:func:`check_cli_overrides`, :func:`check_files` and :func:`check_writable` first in ``initialize``.
"""

from __future__ import annotations

import difflib
import errno
import functools
import inspect
import os
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ConfigOverrideError", "InputFileError", "OutputFolderError", "check_cli_overrides", "check_files",
           "check_writable", "culprit", "first_line_excepthook"]


class ConfigOverrideError(ValueError):
    """A command-line override names a config id that none of the merged config files defines."""


class InputFileError(FileNotFoundError):
    """A file the stage reads (a checkpoint an earlier stage writes) is not there."""


class OutputFolderError(OSError):
    """An output folder cannot be created or written to."""


@functools.lru_cache(maxsize=1)
def _run_arguments() -> frozenset[str]:
    """The keyword arguments ``monai.bundle run`` consumes itself (not config overrides)."""
    from monai.bundle import ConfigWorkflow, scripts

    names: set[str] = set()
    for function in (scripts.run, scripts.create_workflow, ConfigWorkflow.__init__):
        names |= {n for n, p in inspect.signature(function).parameters.items() if p.kind is not p.VAR_KEYWORD}
    return frozenset(names - {"self"})


def _cli_overrides(argv: Sequence[str]) -> dict[str, str]:
    """``--key value`` / ``--key=value`` / ``--flag`` pairs after the command, as python-fire reads them.

    Hand-written because fire offers no public call that only parses a command line into keyword
    arguments (``fire.Fire`` parses and calls in one step); values stay strings.
    """
    out: dict[str, str] = {}
    index = 0
    while index < len(argv):
        arg = argv[index]
        index += 1
        if arg == "--":
            break  # what follows are fire's own flags (--help, --trace, ...)
        if not arg.startswith("--"):
            continue  # a positional argument (run_id)
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if index < len(argv) and not argv[index].startswith("--"):
                value, index = argv[index], index + 1
            else:
                value = "True"  # a bare flag
        out[key.replace("-", "_") if key.replace("-", "_") in _run_arguments() else key] = value
    return out


def _is_bundle_run(argv: Sequence[str]) -> bool:
    """Whether this process is ``python -m monai.bundle run ...``."""
    return len(argv) > 1 and Path(argv[0]).parent.name == "bundle" and Path(argv[0]).parent.parent.name == "monai" \
        and argv[1] == "run"


def check_cli_overrides(argv: Sequence[str] | None = None) -> None:
    """Refuse ``python -m monai.bundle run`` overrides whose id no config file defines.

    Only acts when the process is ``monai.bundle run`` (in-process ``ConfigWorkflow`` users pass
    overrides in code; ``--args_file`` overrides are not inspected). ``run``'s own arguments
    (``--config_file``, ``--meta_file``, ``--logging_file``, ``--run_id``, ...) are not config ids;
    nested ids (``train#trainer#max_epochs``, ``peft::r``) are looked up in the merged configs.
    Also installs :func:`first_line_excepthook`, so that a failing run prints the culprit first.

    Args:
        argv: the command line (default ``sys.argv``).

    Raises:
        ConfigOverrideError: naming the unknown id and the closest ids the configs define.
    """
    from fire.parser import DefaultParseValue
    from monai.bundle import ConfigParser

    argv = list(sys.argv if argv is None else argv)
    if not _is_bundle_run(argv):
        return
    sys.excepthook = first_line_excepthook
    overrides = _cli_overrides(argv[2:])
    files = overrides.get("config_file")
    if files is None:
        return  # an args_file run: the files are not on the command line
    parsed = DefaultParseValue(files)
    parser = ConfigParser(ConfigParser.load_config_files(parsed if isinstance(parsed, (list, tuple)) else [parsed]))
    known = _run_arguments()
    ids = sorted(_all_ids(parser.get()))
    for key in overrides:
        if key in known or key.lstrip("+") in parser:
            continue
        close = difflib.get_close_matches(key, ids, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"top-level ids: {sorted(parser.get())}"
        raise ConfigOverrideError(
            f"override '--{key}' names no config id of {parsed}; {hint} (an unknown id would be added and never read)"
        )


def _all_ids(config: object, prefix: str = "") -> set[str]:
    """Every id of a config tree (``a``, ``a#b``, ``a#0``), for the closest-match hint."""
    items = config.items() if isinstance(config, Mapping) else enumerate(config) if isinstance(config, list) else ()
    ids: set[str] = set()
    for key, value in items:
        name = f"{prefix}{key}"
        ids |= {name} | _all_ids(value, name + "#")
    return ids


def check_files(files: Mapping[str, str | os.PathLike], expected: str) -> None:
    """Refuse a missing input file before any data is loaded or cached.

    Args:
        files: ``{config id that places it: file}``, e.g. ``{"ckpt_dir": "<ckpt_dir>/model.pt"}``.
        expected: what the file is and where it comes from, for the message.

    Raises:
        InputFileError: naming the config id, the file and ``expected``.
    """
    for key, file in files.items():
        if not Path(file).is_file():
            raise InputFileError(errno.ENOENT, f"{key}: '{file}' not found; expected {expected}")


def check_writable(folders: Mapping[str, str | os.PathLike]) -> None:
    """Create each output folder and write a probe file in it, before any work is done.

    Args:
        folders: ``{config id: folder}``, e.g. ``{"output_dir": ..., "ckpt_dir": ...}``.

    Raises:
        OutputFolderError: naming the config id, the folder and the operating system's reason.
    """
    for key, folder in folders.items():
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=path) as probe:
                probe.write(b"\0")
                probe.flush()
        except OSError as e:
            raise OutputFolderError(
                e.errno, f"{key} '{path}' is not writable ({e.strerror or e}); expected a folder this user can create files in",
            ) from e


def culprit(exc: BaseException) -> BaseException:
    """The error that names what went wrong: the outermost of ``exc``'s chain (causes, then contexts) that is
    not MONAI's plain ``RuntimeError("Failed to evaluate ...")`` wrapper, else the innermost one."""
    chain = [exc]
    while (inner := chain[-1].__cause__ or (None if chain[-1].__suppress_context__ else chain[-1].__context__)) is not None:
        chain.append(inner)
    return next((e for e in chain if type(e) is not RuntimeError), chain[-1])


def first_line_excepthook(exc_type: type[BaseException], exc: BaseException, tb: object) -> None:
    """Print ``ERROR: <the culprit's first line>`` before Python's traceback.

    Installed by :func:`check_cli_overrides` for ``monai.bundle run`` only: MONAI wraps an error
    raised in a config item in ``RuntimeError`` chains, and Python prints the chain after a long
    traceback; the outermost error that is not such a wrapper (a
    :class:`~tpp_components.data.DatalistError`, a weights or target-parameter error) names the file and
    what was expected.
    """
    root = culprit(exc)
    first = (str(root).strip().splitlines() or [""])[0]
    print(f"ERROR: {type(root).__name__}: {first}", file=sys.stderr, flush=True)
    traceback.print_exception(exc_type, exc, tb)  # type: ignore[arg-type]
