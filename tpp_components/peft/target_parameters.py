"""The target-parameter contract: which tensors TPP trains, and how they are saved and loaded.

Target parameters are saved as one safetensors file whose header metadata holds the manifest (JSON under the key
``manifest``): the method and its configuration, the identity of the frozen backbone (architecture and weight
fingerprint) and the library versions. One file, written atomically: tensors and manifest cannot disagree.
Loading checks all of it and refuses to load partially. Files written before the manifest moved into the header
keep it beside them (``<file>.json``), which :func:`read_manifest` still reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tpp_components.io import atomic_path
from tpp_components.peft.base import is_under
from tpp_components.peft.freeze import freeze_running_stats
from tpp_components.peft.inject import get_peft_method, unwrap

__all__ = [
    "TargetParameterError",
    "target_parameters",
    "backbone_parameters",
    "backbone_fingerprint",
    "set_trainable",
    "save_target_parameters",
    "load_target_parameters",
    "read_manifest",
    "MANIFEST_FORMAT",
]

MANIFEST_FORMAT = "tpp-target-parameters/1"


class TargetParameterError(ValueError):
    """The saved target parameters do not fit the network they are loaded into."""


def target_parameters(network: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters the injected method added (BitFit: the biases), by name."""
    network = unwrap(network)
    names = set(get_peft_method(network).target_names)
    return {n: p for n, p in network.named_parameters() if n in names}


def backbone_parameters(network: nn.Module, head_modules: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The frozen backbone: every parameter and buffer except target parameters and the task head.

    Names are canonical (as before injection), so they match a plain backbone checkpoint.
    """
    network = unwrap(network)
    method = get_peft_method(network)
    targets = set(method.target_names)
    out = {}
    for name, tensor in list(network.named_parameters()) + list(network.named_buffers()):
        if name in targets or is_under(name, head_modules):
            continue
        out[method.canonical_name(name)] = tensor
    return out


def backbone_fingerprint(network: nn.Module, head_modules: Sequence[str] = ()) -> str:
    """SHA-256 over the frozen backbone's names, shapes, dtypes and values, and its class name."""
    digest = hashlib.sha256(type(unwrap(network)).__name__.encode())
    for name, tensor in sorted(backbone_parameters(network, head_modules).items()):
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}".encode())
        # reshape first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as bytes
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def set_trainable(network: nn.Module, trainable_modules: Sequence[str] = ()) -> list[str]:
    """Freeze everything but the target parameters and the modules in ``trainable_modules``.

    Frozen normalisation layers with running statistics stay in eval mode in every stage
    (:func:`tpp_components.peft.freeze.freeze_running_stats`).

    Returns:
        the names of the trainable parameters.
    """
    network = unwrap(network)
    targets = set(get_peft_method(network).target_names)
    names = []
    for name, param in network.named_parameters():
        param.requires_grad_(name in targets or is_under(name, trainable_modules))
        if param.requires_grad:
            names.append(name)
    freeze_running_stats(network, trainable_modules)
    return names


def _versions() -> dict[str, str]:
    import monai
    import peft
    import safetensors

    import tpp_components

    return {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "peft": peft.__version__,
        "safetensors": safetensors.__version__,
        "tpp_components": tpp_components.__version__,
    }


def _manifest(network: nn.Module, head_modules: Sequence[str]) -> dict[str, Any]:
    method = get_peft_method(network)
    return {
        "format": MANIFEST_FORMAT,
        "method": method.name,
        "config": method.config.to_dict(),
        "backbone": {
            "class": type(unwrap(network)).__name__,
            "fingerprint": backbone_fingerprint(network, head_modules),
            "head_modules": list(head_modules),
        },
        "parameters": {n: list(p.shape) for n, p in sorted(target_parameters(network).items())},
        "versions": _versions(),
    }


#: the safetensors header key that holds the manifest
MANIFEST_KEY = "manifest"


def manifest_path(path: str | os.PathLike) -> Path:
    """Where files written before the manifest moved into the header keep it: ``x.safetensors`` -> ``x.json``."""
    return Path(path).with_suffix(".json")


def save_target_parameters(
    network: nn.Module, path: str | os.PathLike, head_modules: Sequence[str] = (), extra: dict | None = None
) -> Path:
    """Save the target parameters and their manifest to ``path``, one safetensors file written atomically.

    Args:
        network: an injected network.
        path: destination ``.safetensors`` file.
        head_modules: the task-head prefixes excluded from the backbone fingerprint.
        extra: additional JSON-serialisable information stored under ``"extra"`` in the manifest.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"target parameters are saved as '.safetensors', got '{path}'.")
    tensors = {n: p.detach().to("cpu").contiguous() for n, p in target_parameters(network).items()}
    manifest = _manifest(network, head_modules)
    if extra:
        manifest["extra"] = extra
    metadata = {"format": MANIFEST_FORMAT, "method": manifest["method"], MANIFEST_KEY: json.dumps(manifest)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Read the manifest of target-parameter file ``path`` (its header; for an earlier file, the ``.json`` beside it),
    naming the file on any problem."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (OSError, SafetensorError) as e:
        raise TargetParameterError(f"target parameters '{path}' cannot be read as safetensors: {e}") from e
    text, where = header.get(MANIFEST_KEY), f"the header of '{path}'"
    if text is None:
        mpath = manifest_path(path)
        if not mpath.is_file():
            raise TargetParameterError(f"target parameters '{path}' have no manifest: none in the file's header, no "
                                       f"'{mpath}' beside it (a file written by save_target_parameters has one).")
        text, where = mpath.read_text(encoding="utf-8"), f"manifest '{mpath}'"
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise TargetParameterError(f"{where} is not valid JSON: {e}") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise TargetParameterError(f"{where}: format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}.")
    return manifest


def load_target_parameters(
    network: nn.Module, path: str | os.PathLike, head_modules: Sequence[str] = (), check_backbone: bool = True
) -> nn.Module:
    """Load target parameters into an injected network after checking that they belong to it.

    Refuses (``TargetParameterError``) on a different method or configuration, a different
    backbone fingerprint, missing or unexpected keys, or shape mismatches; nothing is loaded then.

    Args:
        network: an injected network of the same method and configuration.
        path: a ``.safetensors`` file written by :func:`save_target_parameters`.
        head_modules: the task-head prefixes excluded from the backbone fingerprint.
        check_backbone: compare the backbone fingerprint (disable only knowingly).

    Returns:
        ``network``, for use in bundle expressions.
    """
    path = Path(path)
    if not path.is_file():
        raise TargetParameterError(f"target parameters file '{path}' does not exist.")
    manifest = read_manifest(path)
    method = get_peft_method(network)
    where = f"target parameters '{path}'"
    if manifest["method"] != method.name:
        raise TargetParameterError(f"{where} are for method '{manifest['method']}', the network uses '{method.name}'.")
    saved_cfg, cfg = manifest["config"], json.loads(json.dumps(method.config.to_dict()))
    diff = sorted(k for k in set(saved_cfg) | set(cfg) if saved_cfg.get(k) != cfg.get(k))
    if diff:
        details = ", ".join(f"{k}: saved {saved_cfg.get(k)!r} vs network {cfg.get(k)!r}" for k in diff)
        raise TargetParameterError(f"{where}: '{method.name}' configuration differs ({details}).")
    if check_backbone:
        expected = manifest["backbone"]["fingerprint"]
        actual = backbone_fingerprint(network, head_modules)
        if expected != actual:
            raise TargetParameterError(
                f"{where} were trained on a different backbone: fingerprint {expected[:16]}... saved, "
                f"{actual[:16]}... in this {type(unwrap(network)).__name__} (other architecture or weights)."
            )
    saved = load_file(str(path))
    params = target_parameters(network)
    missing, unexpected = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or unexpected:
        raise TargetParameterError(f"{where}: missing keys {missing[:10]} ({len(missing)}), unexpected keys {unexpected[:10]} ({len(unexpected)}).")
    bad = [f"{n}: saved {tuple(saved[n].shape)} vs {tuple(p.shape)}" for n, p in params.items() if saved[n].shape != p.shape]
    if bad:
        raise TargetParameterError(f"{where}: shape mismatch {bad[:10]}.")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name].to(device=param.device, dtype=param.dtype))
    return network
