"""Write every bundle's ``configs/*.json`` from the collection's layers: one source for each piece of wiring.

A bundle's configs are the merge of three layers, each a MONAI override file (``"a#b#0": value`` sets the value
at that id, as ``monai.bundle run --a#b#0 value`` and the stage files such as ``tpp.json`` do):

1. ``families/common/<file>``: what every bundle shares (multi-GPU, tracking, checkpoints and resume, the stage
   wiring that does not depend on the task);
2. ``families/<family>/<file>``: what one family shares (``classification_2d``, ``segmentation_2d``,
   ``segmentation_3d``: networks, transforms, metrics, handlers);
3. ``bundles/<bundle>/layer.json``: the bundle's own values (dataset, classes or labels, sizes, intensities, tuned
   values), ``{"family": ..., "settings": {...}, "configs": {"<file>": {...}}}``. ``settings`` go into both complete
   configs, ``train.json`` and ``inference.json``; ``configs`` go into one file each, after ``settings``. An optional
   ``"default_switch": {"switch": "litemedsam.json", "inverse": "vit.json"}`` makes a family switch the bundle's
   default network and writes the switch back to the family's default (:func:`fold_switch`).

A layer file whose first key is ``"_base_": "<file>"`` starts from that file of the same layers (``multi_gpu_tpp.json``
is ``multi_gpu_train.json`` with the pretext network); files whose names start with ``_`` are bases only. A value
``"<required>"`` in a layer marks a setting the layers above must give; a bundle that leaves one unset is refused,
naming the file and the id.

The generated files are what users run and what the zoo and MONAI Label consume: each bundle stays whole and
self-contained. Their first key says they are generated; ``tests/test_generated_configs.py`` fails when a committed
file differs from what this tool writes. ``metadata.json`` is each bundle's own and hand-written.

Why generated files rather than MONAI's ``%file#id`` macros across folders: a zoo bundle must stand alone (the zip
holds only its own folder), and ``monai.bundle run`` resolves relative file macros against the working directory,
so references out of the bundle would break both.

Usage (from the repository root)::

    python tools/generate_bundles.py            # write every bundle's configs
    python tools/generate_bundles.py --check    # list stale files and exit 1, write nothing
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import fire

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ROOT / "families"
ID_SEP = "#"  # monai.bundle.utils.ID_SEP_KEY; a literal here so that generating configs does not import torch
REQUIRED = "<required>"
BASE_KEY = "_base_"
HEADER_KEY = "_generated_"
#: the complete configs (the others override them), which a bundle's ``settings`` go into
SETTINGS_FILES = ("train.json", "inference.json")
#: files copied verbatim from the layers (no merge): the logging configuration
VERBATIM = ("logging.conf",)


class LayerError(ValueError):
    """A layer that cannot be applied, or a bundle that leaves a required setting unset."""


def _locate(config: dict, id_: str, source: str) -> tuple[dict | list, str | int]:
    """The container that holds the MONAI id ``id_`` (``a#b#0``) of ``config``, and its key there.

    Stage override files keep ids as literal keys (``evaluate.json``'s ``"validate#handlers"``, which MONAI resolves
    when it merges the file over ``train.json``), so each level takes the longest run of ``#``-joined parts that is
    a key there; parts that match no key are one key, as written (which :func:`set_id` creates).
    """
    parts = id_.split(ID_SEP)
    node: Any = config
    while True:
        if isinstance(node, list):
            index = _index(node, parts[0], id_, source)
            if len(parts) == 1:
                return node, index
            node, parts = node[index], parts[1:]
        elif isinstance(node, dict):
            n = next((n for n in range(len(parts), 0, -1) if ID_SEP.join(parts[:n]) in node), 0)
            if n == 0 or n == len(parts):
                return node, ID_SEP.join(parts)
            node, parts = node[ID_SEP.join(parts[:n])], parts[n:]
        else:
            raise LayerError(f"{source}: '{id_}' runs through a {type(node).__name__}, not a dict or list")


def set_id(config: dict, id_: str, value: Any, source: str) -> None:
    """Set ``value`` at the MONAI id ``id_`` of ``config`` (:func:`_locate`), creating the key where it is new."""
    container, key = _locate(config, id_, source)
    container[key] = copy.deepcopy(value)


def get_id(config: dict, id_: str, source: str) -> Any:
    """The value at the MONAI id ``id_`` of ``config``, read as :func:`set_id` writes it."""
    container, key = _locate(config, id_, source)
    if isinstance(container, dict) and key not in container:
        raise LayerError(f"{source}: '{id_}' is not in the config")
    return container[key]


def _index(node: list, key: str, id_: str, source: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise LayerError(f"{source}: '{id_}' needs an index below {len(node)} where it reaches a list")
    return int(key)


def apply_layer(config: dict, layer: Mapping[str, Any], source: str) -> dict:
    """``config`` with every id of ``layer`` set (in the layer's order), as a MONAI override file sets them."""
    for id_, value in layer.items():
        if id_ != BASE_KEY:
            set_id(config, id_, value, source)
    return config


def missing(config: Any, path: str = "") -> Iterator[str]:
    """The ids in ``config`` still holding the ``<required>`` marker."""
    if config == REQUIRED:
        yield path
    elif isinstance(config, (dict, list)):
        items = config.items() if isinstance(config, dict) else enumerate(config)
        for key, value in items:
            yield from missing(value, f"{path}{ID_SEP}{key}" if path else str(key))


def _shown(path: Path) -> str:
    """``path`` as messages show it: relative to the repository where it lies inside."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise LayerError(f"{_shown(path)}: not valid JSON ({e})") from e


def bundle_layer(bundle: Path) -> dict:
    """The bundle's own layer, checked: ``{"family": ..., "configs": {...}}``."""
    path = bundle / "layer.json"
    layer = read_json(path)
    family = layer.get("family") if isinstance(layer, dict) else None
    if not family or not (FAMILIES / str(family)).is_dir():
        known = sorted(p.name for p in FAMILIES.iterdir() if p.is_dir() and p.name != "common")
        raise LayerError(f"{_shown(path)}: 'family' is {family!r}; expected one of {known}")
    return layer


def compose(bundle: Path) -> dict[str, dict]:
    """Every generated config file of ``bundle``: file name -> config (with its header)."""
    layer = bundle_layer(bundle)
    stack = [FAMILIES / "common", FAMILIES / layer["family"]]
    own = layer.get("configs", {})
    names = sorted({p.name for d in stack for p in d.glob("*.json")} | set(own))
    composed: dict[str, dict] = {}

    def build(name: str, seen: tuple[str, ...] = ()) -> dict:
        if name in seen:
            raise LayerError(f"'{BASE_KEY}' loop: {' -> '.join(seen + (name,))}")
        sources = [(d / name, read_json(d / name)) for d in stack if (d / name).is_file()]
        if name in SETTINGS_FILES and layer.get("settings"):
            sources.append((bundle / "layer.json", {"_settings_": layer["settings"]}))
        if name in own:
            sources.append((bundle / "layer.json", own[name]))
        if not sources:
            raise LayerError(f"'{name}' is in no layer of {bundle.name} (a '{BASE_KEY}' names a missing file)")
        base = next((s[BASE_KEY] for _, s in sources if BASE_KEY in s), None)
        config = build(base, seen + (name,)) if base else {}
        for path, layer_ in sources:
            source = _shown(path) + (f" ({name})" if path.name == "layer.json" else "")
            apply_layer(config, layer_.get("_settings_", layer_), source)
        return config

    built = {name: build(name) for name in names if not name.startswith("_")}
    default = layer.get("default_switch")
    if default:
        built.update(fold_switch(built, default["switch"], default["inverse"], own.get(default["inverse"], {}),
                                 _shown(bundle / "layer.json")))
    for name, config in built.items():
        unset = list(missing(config))
        if unset:
            raise LayerError(f"{_shown(bundle / 'layer.json')}: configs#{name} must set {unset}; the layers of "
                             f"family '{layer['family']}' leave them to each bundle")
        sources = ", ".join(["families/common", f"families/{layer['family']}", f"bundles/{bundle.name}/layer.json"])
        composed[name] = {HEADER_KEY: f"Generated by tools/generate_bundles.py from {sources}: edit those and "
                                      "regenerate (the tests fail while this file differs).", **config}
    return composed


def fold_switch(built: dict[str, dict], switch: str, inverse: str, own_inverse: dict, source: str) -> dict[str, dict]:
    """Make ``switch`` the bundle's default: merged into ``train.json`` and ``inference.json`` (as ``monai.bundle run``
    merges a switch given after them), and ``inverse`` the switch that sets back every value it changed.

    The switch stays, a no-op over the new default, so that commands and study plans that name it keep working;
    ``own_inverse`` (the bundle's ``configs#<inverse>``) is applied over the computed inverse (the old default's own
    budget, for instance).
    """
    if switch not in built:
        raise LayerError(f"{source}: default_switch#switch '{switch}' is no config of this bundle ({sorted(built)})")
    layer = built[switch]
    restore = {key: copy.deepcopy(get_id(built["train.json"], key, f"{source} (default_switch: train.json without "
                                                                       f"{switch})")) for key in layer}
    out = {name: apply_layer(copy.deepcopy(built[name]), layer, f"{source} ({switch} into {name})")
           for name in SETTINGS_FILES}
    out[inverse] = apply_layer(restore, own_inverse, f"{source} ({inverse})")
    return out


def render(config: dict) -> str:
    """The zoo's JSON style: 4-space indent, a final newline."""
    return json.dumps(config, indent=4) + "\n"


def bundles() -> list[Path]:
    """The bundles built from layers (those with a ``layer.json``)."""
    return sorted(p for p in (ROOT / "bundles").iterdir() if (p / "layer.json").is_file())


def expected_files(bundle: Path) -> dict[Path, str]:
    """Path -> text of every file the layers make for ``bundle``."""
    files = {bundle / "configs" / name: render(config) for name, config in compose(bundle).items()}
    layer = bundle_layer(bundle)
    for name in VERBATIM:
        for d in (FAMILIES / layer["family"], FAMILIES / "common"):
            if (d / name).is_file():
                files[bundle / "configs" / name] = (d / name).read_text()
                break
    return files


def stale_files() -> list[str]:
    """Generated files whose committed text differs from what the layers make, or that are missing."""
    return [str(p.relative_to(ROOT)) for b in bundles() for p, text in expected_files(b).items()
            if not p.is_file() or p.read_text() != text]


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(check: bool = False) -> None:
    """Write (or with ``check``, only compare) every bundle's generated configs."""
    try:
        if check:
            stale = stale_files()
            if stale:
                sys.exit("stale generated configs (run python tools/generate_bundles.py):\n  " + "\n  ".join(stale))
            print(f"{len(bundles())} bundles: every generated config is up to date")
            return
        written = 0
        for bundle in bundles():
            for path, text in expected_files(bundle).items():  # composed before anything is written
                if not path.is_file() or path.read_text() != text:
                    _write(path, text)
                    written += 1
        print(f"{len(bundles())} bundles: {written} file(s) written")
    except LayerError as e:
        sys.exit(f"ERROR: {e}")


if __name__ == "__main__":
    fire.Fire(main)
