"""Fingerprints of every bundle's resolved configs: each stage, alone and under each switch.

A refactoring of the configs (``tools/generate_bundles.py``'s layers, a repeated block turned into a reference)
must leave what ``monai.bundle run`` resolves unchanged; ``tests/test_generated_configs.py`` compares these
fingerprints with the committed ones in ``tests/data/config_fingerprints.json``. A change to a config that is meant
(a new default, a fixed transform) rewrites that file in the same commit, and the commit says why.

A stage's config is its files merged as ``monai.bundle run --config_file "[...]"`` merges them, with macros and
relative ids resolved and every plain reference (``"@id"``) replaced by what it refers to; a top-level block that a
plain reference uses is compared where it is used, so that moving a repeated block behind a reference keeps the
fingerprint. Expressions (``"$..."``) are compared as written.

Usage (from the repository root)::

    python tools/config_fingerprints.py            # compare with the committed fingerprints
    python tools/config_fingerprints.py --write    # rewrite them
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root

from tools.generate_bundles import HEADER_KEY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINTS = ROOT / "tests" / "data" / "config_fingerprints.json"
#: each stage as its config files, merged left to right (a switch goes after the stage's first file)
STAGES = {
    "train": ["train.json"],
    "pretrain": ["train.json", "pretrain.json"],
    "tpp": ["train.json", "tpp.json"],
    "evaluate": ["train.json", "evaluate.json"],
    "inference": ["inference.json"],
    "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
    "multi_gpu_tpp": ["train.json", "tpp.json", "multi_gpu_tpp.json"],
}
#: stage files that are not switches
NOT_SWITCHES = {f for files in STAGES.values() for f in files} | {"metadata.json"}
_REFERENCE = re.compile(r"^@[\w#:]+$")


def _inline(config: Any, parser: Any, seen: tuple[str, ...] = ()) -> Any:
    """``config`` with every plain ``"@id"`` replaced by the (inlined) config at ``id``."""
    if isinstance(config, dict):
        return {k: _inline(v, parser, seen) for k, v in config.items()}
    if isinstance(config, list):
        return [_inline(v, parser, seen) for v in config]
    if isinstance(config, str) and _REFERENCE.match(config):
        id_ = config[1:].replace("::", "#")
        if id_ in seen:
            return config  # a cycle (the reference stays as written)
        try:
            target = parser.get(id_)
        except (KeyError, IndexError, ValueError):
            return config
        return _inline(target, parser, seen + (id_,))
    return config


def resolved(files: list[Path]) -> dict:
    """The config ``monai.bundle run`` builds from ``files``, resolved for comparison (see the module)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files([str(f) for f in files]))
    parser.resolve_macro_and_relative_ids()
    config = parser.get()
    config.pop(HEADER_KEY, None)
    inlined = _inline(config, parser)
    # a top-level block that a plain reference uses is compared where it is used, so naming a repeated block
    # (``checkpoint_state``) keeps the fingerprint
    used = {m[1:].replace("::", "#") for m in _plain_references(config)}
    return {k: v for k, v in inlined.items() if k not in used}


def _plain_references(config: Any) -> list[str]:
    if isinstance(config, dict):
        return [r for v in config.values() for r in _plain_references(v)]
    if isinstance(config, list):
        return [r for v in config for r in _plain_references(v)]
    return [config] if isinstance(config, str) and _REFERENCE.match(config) else []


def fingerprint(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def fingerprints(root: Path = ROOT) -> dict[str, str]:
    """``"<bundle>/<stage>[+<switch>]"`` -> fingerprint, for every bundle, stage and switch."""
    out = {}
    for bundle in sorted(p for p in (root / "bundles").iterdir() if (p / "configs").is_dir()):
        configs = bundle / "configs"
        switches = sorted(p.name for p in configs.glob("*.json") if p.name not in NOT_SWITCHES)
        for stage, files in STAGES.items():
            if not all((configs / f).is_file() for f in files):
                continue
            for switch in [None, *switches]:
                merged = files[:1] + ([switch] if switch else []) + files[1:]
                key = f"{bundle.name}/{stage}" + (f"+{Path(switch).stem}" if switch else "")
                out[key] = fingerprint(resolved([configs / f for f in merged]))
    return out


def changed(current: dict[str, str], committed: dict[str, str]) -> list[str]:
    """The stages whose fingerprint differs, appeared or disappeared."""
    return sorted(k for k in current.keys() | committed.keys() if current.get(k) != committed.get(k))


def main(write: bool = False, root: str = str(ROOT)) -> None:
    """Compare (or with ``write``, rewrite) the fingerprints of the configs under ``root``'s ``bundles/``."""
    current = fingerprints(Path(root))
    if write:
        FINGERPRINTS.parent.mkdir(parents=True, exist_ok=True)
        FINGERPRINTS.write_text(json.dumps(current, indent=4, sort_keys=True) + "\n")
        print(f"{len(current)} fingerprints written to {FINGERPRINTS.relative_to(ROOT)}")
        return
    diff = changed(current, json.loads(FINGERPRINTS.read_text()))
    if diff:
        sys.exit(f"{len(diff)} resolved config(s) changed: {diff}")
    print(f"{len(current)} resolved configs unchanged")


if __name__ == "__main__":
    fire.Fire(main)
