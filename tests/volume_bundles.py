"""What the tests of the 3D segmentation bundles (spleen CT, brain MRI) share: small networks, metrics,
TorchScript export and a checkpoint in the layout of MONAI's self-supervised Swin encoder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle_utils import check_export, workflow

UNETR, SWIN_SSL = "unetr.json", "swin_ssl.json"

#: a small SwinUNETR for the tests (the bundles' CPU default has depths 2, 2, 2, 2); 64 is the smallest
#: crop SwinUNETR takes (stride 32, and its bottleneck instance norm needs more than one voxel)
SMALL_SWIN = {"backbone#depths": [1, 1, 1, 1], "backbone#num_heads": [3, 3, 3, 3]}
#: a small 3D UNETR (32-voxel crops: 2x2x2 tokens of 16 voxels)
SMALL_UNETR = {"image_size": 32, "backbone#hidden_size": 48, "backbone#mlp_dim": 96, "backbone#feature_size": 8,
               "pretext#decoder_hidden": 16, "pretext#decoder_layers": 1, "pretext#decoder_heads": 2}


def small_network(configs: list[str]) -> dict:
    """Overrides for the small test network of a config list (the swin_ssl switch keeps its feature size 48)."""
    if UNETR in configs:
        return SMALL_UNETR
    return {} if SWIN_SSL in configs else SMALL_SWIN


def metric(eval_dir: Path, name: str = "test_mean_dice") -> float:
    """A summary value of ``MetricsSaver``'s ``metrics.csv``."""
    rows = list(csv.reader((eval_dir / "metrics.csv").read_text().splitlines()))
    return float(dict(rows)[name])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty is not needed here: 0)."""
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def check_export_3d(bundle: Path, tmp: Path, configs: list[str], overrides: dict, in_channels: int) -> None:
    """``ckpt_export`` of ``tmp/models/model.pt``; the exported model's output must equal the checkpoint's.

    SwinUNETR does not script (its blocks call ``torch.utils.checkpoint``): the error is asserted and the
    model exported by tracing at the crop size. UNETR scripts.
    """
    from monai.bundle import ckpt_export

    ckpt = tmp / "models" / "model.pt"
    size = workflow(configs, workflow_type="infer", bundle=bundle, **overrides).parser.get_parsed_content("image_size")
    shape = [1, in_channels, size, size, size]
    scripts = UNETR in configs
    if not scripts:
        config_dir = bundle / "configs"
        files = [str(config_dir / c) for c in configs]
        # the first attempt in a process names the checkpoint call; TorchScript caches the half-compiled class,
        # so a later attempt in the same process (the other 3D bundle's test) fails on redefining it
        with pytest.raises(Exception, match="variable number of arguments|Can't redefine method: forward"):
            ckpt_export(net_id="network_def", filepath=str(ckpt.with_suffix(".ts")), ckpt_file=str(ckpt),
                        meta_file=str(config_dir / "metadata.json"), config_file=files if len(files) > 1 else files[0],
                        bundle_root=str(bundle), **overrides)
    check_export(bundle, configs, ckpt, shape, atol=1e-4, trace=not scripts, **overrides)


def swin_ssl_checkpoint(path: Path, in_channels: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random checkpoint in the key layout of MONAI's self-supervised Swin encoder (``model_swinvit.pt``,
    Tang et al. 2022: ``module.encoder.layers1.0.0.blocks...``, feature size 48), and the SwinUNETR
    encoder tensors it must load as. The published one has ``in_channels`` 1 (CT)."""
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(seed)
    net = SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=48, spatial_dims=3)
    encoder = {k: v for k, v in net.state_dict().items() if k.startswith("swinViT.")}
    ssl = {}
    for key, value in encoder.items():
        rest = key.removeprefix("swinViT.")
        ssl["module.encoder." + (rest if rest.startswith("patch_embed") else rest[:7] + ".0" + rest[7:])] = value
    # SSL heads that the swin_ssl key map drops
    ssl.update({"module.encoder.mask_token": torch.zeros(1, 1, 768), "module.encoder.norm.weight": torch.ones(768),
                "module.rotation_head.weight": torch.zeros(4, 768), "module.contrastive_head.weight": torch.zeros(512, 768)})
    torch.save({"epoch": 100, "state_dict": ssl}, path)
    return encoder
