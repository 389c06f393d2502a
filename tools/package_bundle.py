"""Package a trained bundle for the MONAI model zoo: one self-contained zip.

The zip holds ``<bundle>/`` with ``LICENSE``, ``configs/`` (``metadata.json`` released: version and
changelog, pinned ``required_packages_version``, optional ``supported_apps``), ``docs/``,
``models/model.pt`` (the merged network the fine-tuning stage wrote, checked to load strictly into
``inference.json``'s ``network_def``), ``models/model.ts`` (``ckpt_export``: scripted, or traced where the
network does not script, e.g. SwinUNETR; checked against ``model.pt``'s outputs) and
``tpp_components/``, the shared components vendored byte for byte. Files over the zoo's 25 MB limit are
listed in ``large_files.yml`` (path, url, md5) and left out of the zip unless ``--keep_large_files``.

Vendoring: the configs name ``tpp_components.*`` and ``$import tpp_components``; the package travels as a
top-level folder of the bundle, so the configs run unchanged and the code is the tested code. ``monai.bundle``
commands run from the bundle folder find it (the working directory is on ``sys.path``), as does the zoo's
``ci/verify_bundle.py`` (it puts the bundle folder first on ``sys.path``). Only the modules the configs' import
graph reaches are copied; since the package's ``__init__`` imports all its subpackages, that is the whole
package (about 50 modules, 215 kB of source). ``tpp-components`` is dropped from ``required_packages_version`` and the
third-party distributions the vendored code imports are pinned there instead.

Usage::

    # after fine-tuning (models/model.pt exists); --version must be newer than the bundle's metadata.json version:
    python tools/package_bundle.py --bundle_root bundles/breast_us_segmentation \\
        --version 0.1.1 --changelog "model-zoo package" --output dist/breast_us_segmentation_v0.1.1.zip
    # trained with a switch (merged into train.json and inference.json of the package) and elsewhere:
    python tools/package_bundle.py --bundle_root bundles/breast_us_segmentation --switches "['unetr.json']" \\
        --ckpt_dir runs/unetr/models --version 0.1.1 --changelog "UNETR variant"
    # a network that does not script is traced at the metadata's input shape (or --input_shape):
    python tools/package_bundle.py --bundle_root bundles/spleen_ct_segmentation --export trace ...
    # model.pt over 25 MB: listed in large_files.yml with the url it will be uploaded to
    python tools/package_bundle.py ... --large_files_url "https://host/{bundle}_v{version}/{name}"

Options: ``--export auto|script|trace`` (auto: script, trace if scripting fails), ``--input_shape``
(export check / trace input, default ``[1, C, *spatial_shape]`` from the metadata), ``--size_limit_mb``
(25), ``--keep_large_files``, ``--target_parameters`` (also ship ``models/target_parameters.safetensors`` and
its manifest, for peft users), ``--supported_apps "{'monai-label': '0.8.5'}"`` (only for an app that has been
verified to load the bundle; default: the source metadata's value), and config overrides as for
``monai.bundle run`` (``--backbone#depths "[1,1,1,1]"``), written into ``train.json`` and ``inference.json``
where their first id exists (a network trained with overridden sizes must be packaged with them).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import fire
import torch

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser, ckpt_export  # noqa: E402

import tpp_components  # noqa: E402
from tools.zoo.large_files import ZOO_SIZE_LIMIT_MB, large_file_entries, large_files_yaml  # noqa: E402
from tools.zoo.metadata import release_metadata  # noqa: E402
from tools.zoo.vendor import config_references, copy_modules, imported_distributions, module_closure  # noqa: E402
from tpp_components.io import atomic_path  # noqa: E402

__all__ = ["main", "PackagingError", "EXPORT_MODES"]

logger = logging.getLogger("package_bundle")

PACKAGE = "tpp_components"
#: the vendored package's distribution name in ``required_packages_version`` (dropped: the code travels along)
PACKAGE_DISTRIBUTION = "tpp-components"
EXPORT_MODES = ("auto", "script", "trace")
#: the stage files; every other config file of a bundle is a switch (``unetr.json``, ``litemedsam.json``...)
MERGE_TARGETS = ("train.json", "inference.json")
#: a fixed member time, as the zoo's ``compress_bundle`` touches every file: two packagings of one bundle differ only
#: in ``model.ts`` (TorchScript's serialisation is not byte-stable)
ZIP_DATE = (2022, 5, 30, 0, 0, 0)


class PackagingError(RuntimeError):
    """The bundle cannot be packaged as asked (a model that does not fit, an export that does not match)."""


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=4) + "\n", encoding="utf-8")


def _stage_configs(src: Path, dest: Path, switches: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """Copy ``src`` configs to ``dest``, merging ``switches`` and ``overrides`` into train.json / inference.json."""
    missing = [s for s in switches if not (src / s).is_file()]
    if missing:
        raise FileNotFoundError(f"switch files {missing} not found in '{src}'.")
    dest.mkdir(parents=True)
    for path in sorted(p for p in src.iterdir() if p.is_file()):
        if path.name in switches:
            continue  # merged below; applying it again on top of the merge could repeat '+' merges
        if path.name not in MERGE_TARGETS or not (switches or overrides):
            shutil.copyfile(path, dest / path.name)
            continue
        parser = ConfigParser()
        parser.read_config([str(path)] + [str(src / s) for s in switches])
        for key, value in overrides.items():
            if key.split("#")[0] in parser.get():
                parser[key] = value
        _dump(dest / path.name, parser.get())


def _network(stage: Path) -> torch.nn.Module:
    """``network_def`` of the staged ``inference.json``, built as ``ckpt_export`` builds it."""
    parser = ConfigParser()
    parser.read_config(str(stage / "configs" / "inference.json"))
    parser.read_meta(str(stage / "configs" / "metadata.json"))
    parser["bundle_root"] = str(stage)
    return parser.get_parsed_content("network_def")


def _check_model(stage: Path) -> torch.nn.Module:
    """The network of inference.json with models/model.pt loaded strictly."""
    net = _network(stage)
    try:
        net.load_state_dict(torch.load(stage / "models" / "model.pt", weights_only=True))
    except RuntimeError as e:  # missing / unexpected keys and shape mismatches
        raise PackagingError(
            f"models/model.pt does not load strictly into inference.json's network_def ({type(net).__name__}): "
            f"{str(e)[:600]} Was the bundle trained with a switch (--switches) or overridden network sizes (give the "
            "same overrides)?"
        ) from e
    return net.eval()


def _input_shape(meta: Mapping[str, Any], input_shape: Sequence[int] | None) -> list[int]:
    if input_shape is not None:
        return [int(s) for s in input_shape]
    image = next(iter(meta["network_data_format"]["inputs"].values()))
    shape = [image["num_channels"], *image["spatial_shape"]]
    if not all(isinstance(s, int) for s in shape):
        raise PackagingError(f"metadata input shape {shape} is not concrete; give --input_shape (e.g. [1, 1, 96, 96, 96]).")
    return [1, *shape]


def _export(stage: Path, net: torch.nn.Module, mode: str, shape: list[int], atol: float) -> str:
    """Write models/model.ts with the zoo's ``ckpt_export``; return the mode used. The TorchScript model must give
    ``net``'s outputs on a random input of ``shape``."""
    if mode not in EXPORT_MODES:
        raise ValueError(f"export must be one of {EXPORT_MODES}, got '{mode}'.")
    args = dict(net_id="network_def", filepath=str(stage / "models" / "model.ts"),
                ckpt_file=str(stage / "models" / "model.pt"), meta_file=str(stage / "configs" / "metadata.json"),
                config_file=str(stage / "configs" / "inference.json"), bundle_root=str(stage))
    used = "trace" if mode == "trace" else "script"
    try:
        ckpt_export(**args, **({"use_trace": True, "input_shape": shape} if used == "trace" else {}))
    except Exception as e:  # TorchScript raises many types (RuntimeError, NotSupportedError, frontend errors)
        if mode != "auto":
            raise PackagingError(f"ckpt_export ({used}) of inference.json's network_def failed: {e}") from e
        logger.warning("network_def does not script (%s); exporting by tracing at %s", str(e).splitlines()[0], shape)
        used = "trace"
        ckpt_export(**args, use_trace=True, input_shape=shape)
    x = torch.rand(*shape)
    with torch.no_grad():
        expected, got = net(x), torch.jit.load(str(stage / "models" / "model.ts"))(x)
    if not torch.allclose(got, expected, atol=atol):
        raise PackagingError(f"models/model.ts ({used}) differs from model.pt by {(got - expected).abs().max():.3g} "
                             f"(> atol {atol}) at input shape {shape}.")
    return used


def _write_zip(stage: Path, output: Path) -> None:
    with atomic_path(output) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        for path in sorted(p for p in stage.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(f"{stage.name}/{path.relative_to(stage).as_posix()}", date_time=ZIP_DATE)
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            with open(path, "rb") as f, zf.open(info, "w") as out:
                shutil.copyfileobj(f, out, 1 << 20)


def main(
    bundle_root: str,
    output: str | None = None,
    version: str | None = None,
    changelog: str | None = None,
    ckpt_dir: str | None = None,
    switches: Sequence[str] = (),
    export: str = "auto",
    input_shape: Sequence[int] | None = None,
    atol: float = 1e-4,
    size_limit_mb: float = ZOO_SIZE_LIMIT_MB,
    large_files_url: str | None = None,
    keep_large_files: bool = False,
    target_parameters: bool = False,
    supported_apps: Mapping[str, str] | None = None,
    **overrides: Any,
) -> str:
    """Package ``bundle_root`` as a model-zoo zip; returns the zip's path.

    Args:
        bundle_root: the bundle folder (``configs/``, ``LICENSE``, ``docs/``).
        output: the zip to write (default ``<bundle>_v<version>.zip`` in the working directory); written atomically.
        version: the package's version, newer than the changelog's latest; None keeps the metadata's version.
        changelog: the new version's changelog text (required with ``version``).
        ckpt_dir: where the fine-tuning stage wrote ``model.pt`` (default ``<bundle_root>/models``).
        switches: switch config files the model was trained with, merged into train.json and inference.json.
        export: ``"script"``, ``"trace"`` or ``"auto"`` (script, else trace) for ``models/model.ts``.
        input_shape: the input for tracing and for the export check (default from the metadata).
        atol: tolerance of the TorchScript model's outputs against ``model.pt``'s.
        size_limit_mb: files larger than this go to ``large_files.yml``.
        large_files_url: url template of the large files (``{path}``, ``{name}``, ``{bundle}``, ``{version}``).
        keep_large_files: keep the large files in the zip as well as listing them.
        target_parameters: also ship ``target_parameters.safetensors`` and its manifest from ``ckpt_dir``.
        supported_apps: the metadata's ``supported_apps``, only for apps verified to load the bundle.
        overrides: config values written into train.json / inference.json (network sizes the model was trained with).
    """
    if version is not None and not isinstance(version, str):
        raise ValueError(f"--version was read as the number {version!r} (fire parses '1.10' as 1.1): give three parts "
                         "(0.1.1) or quote it as a string.")
    root = Path(bundle_root).resolve()
    switches = [switches] if isinstance(switches, str) else list(switches)
    for required in ("LICENSE", "configs/metadata.json", "configs/inference.json"):
        if not (root / required).is_file():
            raise FileNotFoundError(f"'{root / required}' not found: the zoo requires it in every bundle.")
    ckpt = Path(ckpt_dir) if ckpt_dir else root / "models"
    if not (ckpt / "model.pt").is_file():
        raise FileNotFoundError(
            f"'{ckpt / 'model.pt'}' not found: the fine-tuning stage writes it (python -m monai.bundle run --config_file "
            "configs/train.json ...; DeployableState saves the merged network). Train first, or give --ckpt_dir."
        )
    shipped = ["model.pt"] + (["target_parameters.safetensors"] if target_parameters else [])
    missing = [name for name in shipped if not (ckpt / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{missing} not found in '{ckpt}' (--target_parameters ships the fine-tuned ones).")
    meta = release_metadata(json.loads((root / "configs" / "metadata.json").read_text()), version, changelog,
                            supported_apps=supported_apps, meta_file=str(root / "configs" / "metadata.json"))
    output_path = Path(output or f"{root.name}_v{meta['version']}.zip").resolve()

    with tempfile.TemporaryDirectory(prefix="zoo_") as tmp:
        stage = Path(tmp) / root.name
        stage.mkdir()
        shutil.copyfile(root / "LICENSE", stage / "LICENSE")
        _stage_configs(root / "configs", stage / "configs", switches, overrides)
        if (root / "docs").is_dir():
            shutil.copytree(root / "docs", stage / "docs")
        (stage / "models").mkdir()
        for name in shipped:
            shutil.copyfile(ckpt / name, stage / "models" / name)

        configs = [p.read_text(encoding="utf-8") for p in sorted((stage / "configs").glob("*.json"))]
        package_dir = Path(tpp_components.__file__).parent
        modules = module_closure(package_dir, config_references(configs, PACKAGE))
        copy_modules(modules, package_dir, stage / PACKAGE)
        packages = imported_distributions(modules)
        meta = release_metadata(meta, packages=packages, drop_packages=(PACKAGE_DISTRIBUTION,))
        _dump(stage / "configs" / "metadata.json", meta)

        net = _check_model(stage)
        used = _export(stage, net, export, _input_shape(meta, input_shape), atol)

        entries = large_file_entries(stage, size_limit_mb, large_files_url, bundle=root.name, version=meta["version"])
        if entries:
            (stage / "large_files.yml").write_text(large_files_yaml(entries), encoding="utf-8")
            if not keep_large_files:
                for entry in entries:
                    (stage / entry["path"]).unlink()
        _write_zip(stage, output_path)
    logger.info("%s: version %s, %d vendored modules, model.ts by %s, %d large file(s) listed", output_path,
                meta["version"], len(modules), used, len(entries))
    return str(output_path)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # main takes config overrides as **kwargs, so fire would read a bare --help as one of them and exit 2;
    # "-- --help" is fire's own spelling of the help request
    if sys.argv[1:] in (["--help"], ["-h"]):
        sys.argv[1:] = ["--", "--help"]
    fire.Fire(main, name="package_bundle")  # prints the zip's path
