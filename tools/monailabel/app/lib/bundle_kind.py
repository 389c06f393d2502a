"""What a bundle predicts, read from its metadata (not from its folder name, as the stock app does)."""

from __future__ import annotations

import json
from pathlib import Path

from monailabel.interfaces.tasks.infer_v2 import InferType

__all__ = ["BundleMetadataError", "bundle_kind", "class_names"]


class BundleMetadataError(ValueError):
    """A bundle's ``configs/metadata.json`` does not say what the app needs."""


def _prediction(bundle: str | Path) -> tuple[Path, dict]:
    path = Path(bundle) / "configs" / "metadata.json"
    if not path.is_file():
        raise BundleMetadataError(f"bundle '{bundle}' has no '{path}'.")
    outputs = json.loads(path.read_text()).get("network_data_format", {}).get("outputs", {})
    if not outputs:
        raise BundleMetadataError(f"'{path}': network_data_format.outputs is empty; expected a 'pred' entry.")
    return path, next(iter(outputs.values()))  # MONAI Label takes the first output as the prediction


def bundle_kind(bundle: str | Path) -> str:
    """``InferType.CLASSIFICATION`` for class probabilities, ``InferType.SEGMENTATION`` for an image.

    Reads ``network_data_format.outputs``' first entry: ``type`` ``"probabilities"`` (or ``format``
    ``"classes"``) is a classifier, ``type`` ``"image"`` with ``format`` ``"segmentation"`` a segmenter.
    """
    path, pred = _prediction(bundle)
    kind, fmt = pred.get("type"), pred.get("format")
    if kind == "probabilities" or fmt == "classes":
        return InferType.CLASSIFICATION
    if kind == "image" and fmt == "segmentation":
        return InferType.SEGMENTATION
    raise BundleMetadataError(
        f"'{path}': outputs.pred has type {kind!r} and format {fmt!r}; expected type 'probabilities' (a classifier) "
        "or type 'image' with format 'segmentation'."
    )


def class_names(bundle: str | Path) -> list[str]:
    """The prediction's ``channel_def`` names in channel order (a classifier's classes)."""
    path, pred = _prediction(bundle)
    channels = pred.get("channel_def") or {}
    if sorted(int(k) for k in channels) != list(range(len(channels))) or not channels:
        raise BundleMetadataError(f"'{path}': outputs.pred.channel_def {channels} should name channels 0..N-1.")
    return [channels[str(i)] for i in range(len(channels))]
