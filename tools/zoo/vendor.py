"""Vendoring a Python package into a bundle: the modules its configs need, and the distributions they import.

The import graph is read from the source with :mod:`ast` instead of importing the package (which would
also execute it, and count whatever the importing process already loaded). :mod:`modulefinder` does the
same walk but also follows the whole third-party graph (torch, monai...), which takes minutes and is not
needed: here only the vendored package is followed, its other imports are reported by top-level name.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

__all__ = ["VendorError", "config_references", "module_closure", "imported_distributions", "copy_modules"]

#: top-level names that shared components must never import (repository-only code)
FORBIDDEN_IMPORTS = ("tools", "tests")


class VendorError(RuntimeError):
    """The package cannot be vendored as asked (missing module, forbidden or unknown import)."""


def _module_file(package_dir: Path, module: str) -> Path | None:
    """The source file of dotted ``module`` (whose first part is ``package_dir``'s name), or None."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def config_references(config_texts: Iterable[str], package: str) -> set[str]:
    """Dotted names under ``package`` that config files mention (``_target_`` paths, ``$`` expressions)."""
    pattern = re.compile(rf"\b{re.escape(package)}(?:\.[A-Za-z_]\w*)*")
    return {m.group(0) for text in config_texts for m in pattern.finditer(text)}


def _as_module(package_dir: Path, name: str) -> str:
    """The longest prefix of dotted ``name`` that is a module or package (``pkg.networks.build_network`` ->
    ``pkg.networks``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if _module_file(package_dir, ".".join(parts[:end])) is not None:
            return ".".join(parts[:end])
    raise VendorError(f"'{name}' names no module of '{package_dir}'.")


def _imports(path: Path, module: str) -> tuple[set[str], set[str]]:
    """(names imported from this package, top-level names of other imports) in ``path``."""
    package = module.split(".")[0]
    is_package = path.name == "__init__.py"
    internal, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from a import b``: b may be a submodule, so both are candidates
            names = [base] + [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
        for name in names:
            (internal if name.split(".")[0] == package else external).add(name if name.split(".")[0] == package
                                                                        else name.split(".")[0])
    return internal, external


def module_closure(package_dir: str | Path, roots: Iterable[str]) -> dict[str, Path]:
    """Every module of the package that importing ``roots`` executes: the roots, their parent packages'
    ``__init__`` files and, transitively, what they import from the package.

    Args:
        package_dir: the package folder (its name is the package name).
        roots: dotted names (modules, or attributes of modules) under the package.

    Returns:
        ``{dotted module name: source file}``.

    Raises:
        VendorError: a root or an import names nothing in the package.
    """
    package_dir = Path(package_dir)
    todo = [_as_module(package_dir, r) for r in roots]
    found: dict[str, Path] = {}
    while todo:
        module = todo.pop()
        if module in found:
            continue
        path = _module_file(package_dir, module)
        if path is None:
            continue  # ``from pkg.a import name`` where name is an attribute, not a submodule
        found[module] = path
        parts = module.split(".")
        todo.extend(".".join(parts[:end]) for end in range(1, len(parts)))  # parent packages run first
        internal, _ = _imports(path, module)
        todo.extend(_as_module(package_dir, name) for name in internal)
    return found


def imported_distributions(modules: dict[str, Path], extra_names: Iterable[str] = ()) -> dict[str, str]:
    """The installed distributions (name -> version) that ``modules`` (and ``extra_names``, top-level import
    names) import, standard library excluded.

    Raises:
        VendorError: a module imports repository-only code (``tools``, ``tests``) or a name that no installed
            distribution provides.
    """
    names: dict[str, str] = {name: "configs" for name in extra_names}
    for module, path in modules.items():
        _, external = _imports(path, module)
        for name in external:
            if name in FORBIDDEN_IMPORTS:
                raise VendorError(f"'{path}' imports '{name}', which is repository-only code and is not vendored.")
            names.setdefault(name, str(path))
    providers = importlib.metadata.packages_distributions()
    dists: dict[str, str] = {}
    for name, where in sorted(names.items()):
        if name in sys.stdlib_module_names or name == "__future__":
            continue
        if name not in providers:
            raise VendorError(f"'{where}' imports '{name}', which no installed distribution provides.")
        for dist in providers[name]:
            dists[dist] = importlib.metadata.version(dist)
    return dists


def copy_modules(modules: dict[str, Path], package_dir: str | Path, dest: str | Path) -> list[Path]:
    """Copy the source files of ``modules`` from ``package_dir`` to ``dest`` (the vendored package folder),
    keeping the layout; returns the written files."""
    package_dir, dest = Path(package_dir), Path(dest)
    written = []
    for path in sorted(modules.values()):
        target = dest / path.relative_to(package_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        written.append(target)
    return written
