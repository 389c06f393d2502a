"""Export a bundle's LoRA / DoRA target parameters in HF peft's adapter format.

The bundle's network is built from its configs (``network_def``, with the backbone weights the
configs name) and the target parameters are loaded through the bundle's own checks (method,
configuration, backbone fingerprint); the adapter folder then holds ``adapter_config.json`` and
``adapter_model.safetensors``, which ``peft.PeftModel.from_pretrained`` loads onto the plain MONAI
network. The task head (classifier or decoder) is not part of a peft adapter: ship ``model.pt``
for the whole model.

Example::

    python tools/export_peft_adapter.py --bundle_root bundles/breast_us_segmentation \\
        --target_parameters bundles/breast_us_segmentation/models/target_parameters.safetensors --output lora_adapter
    # a switch goes after train.json, as for the bundle's stages:
    python tools/export_peft_adapter.py --bundle_root bundles/breast_us_classification \\
        --configs "['train.json','litemedsam.json']" --target_parameters ... --output lora_adapter
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import fire

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monai.bundle import ConfigParser  # noqa: E402

from tpp_components.peft import export_peft_adapter  # noqa: E402


def main(bundle_root: str, target_parameters: str, output: str, configs: Sequence[str] = ("train.json",), **overrides) -> str:
    """Build the bundle's network with ``target_parameters`` loaded and write them to ``output``; returns ``output``.

    Args:
        bundle_root: the bundle folder.
        target_parameters: a ``.safetensors`` file written by the bundle (``models/target_parameters.safetensors``
            after fine-tuning, ``models/tpp_target_parameters.safetensors`` after TPP).
        output: the adapter folder to write.
        configs: config files under ``<bundle_root>/configs``, merged left to right.
        overrides: config values, as for ``monai.bundle run`` (e.g. ``ckpt_dir``).
    """
    root = Path(bundle_root)
    files = [root / "configs" / c for c in ([configs] if isinstance(configs, str) else configs)]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"config files not found: {missing} (expected under '{root / 'configs'}')")
    if not Path(target_parameters).is_file():
        raise FileNotFoundError(f"target parameters file '{target_parameters}' does not exist.")
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update({"bundle_root": str(root), **overrides, "init": "tpp", "tpp_target_parameters": str(target_parameters)})
    parser.get_parsed_content("imports")
    network = parser.get_parsed_content("network_def")
    return str(export_peft_adapter(network, output))


if __name__ == "__main__":
    fire.Fire(lambda **kw: print(main(**kw)))
