"""Backbone weight loading through explicit key maps, with a report, refusing what does not fit."""

from __future__ import annotations

import pytest
import torch

from cases import make_backbone
from tpp_components.networks import WeightsError, load_backbone_weights
from tpp_components.networks.weights import KEY_MAPS


def _to_timm(state: dict) -> dict:
    """Write a MONAI ViT state dict in timm's layout (with MAE decoder keys and a class position)."""
    out = {}
    for k, v in state.items():
        k = k.replace("patch_embedding.patch_embeddings.", "patch_embed.proj.")
        k = k.replace("patch_embedding.position_embeddings", "pos_embed")
        k = k.replace(".attn.out_proj.", ".attn.proj.").replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")
        out[k] = v
    out["pos_embed"] = torch.cat([torch.zeros(1, 1, out["pos_embed"].shape[-1]), out["pos_embed"]], dim=1)
    out["decoder_embed.weight"] = torch.zeros(4, 4)
    out["mask_token"] = torch.zeros(1, 1, 4)
    return out


@pytest.mark.parametrize("dims", [2, 3])
def test_timm_layout_loads_into_monai_vit(dims, tmp_path):
    source = make_backbone("vit", dims, seed=1)
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classification_head")}
    torch.save(_to_timm(state), tmp_path / "mae.pth")
    target = make_backbone("vit", dims, seed=2)
    report = load_backbone_weights(target, tmp_path / "mae.pth", key_map="timm_vit", allow_missing=["classification_head"])
    assert set(report["dropped"]) == {"decoder_embed.weight", "mask_token"}
    assert set(report["missing_allowed"]) == {"classification_head.weight", "classification_head.bias"}
    for k, v in state.items():
        assert torch.equal(target.state_dict()[k], v), k


def test_vit_checkpoint_into_unetr_with_prefix(tmp_path):
    from monai.networks.nets import ViT

    torch.manual_seed(1)  # UNETR's encoder: 12 blocks, patch 16, no class token
    vit = ViT(1, (32, 32), 16, hidden_size=32, mlp_dim=64, num_layers=12, num_heads=2, spatial_dims=2, qkv_bias=True)
    state = vit.state_dict()
    torch.save({"state_dict": state}, tmp_path / "vit.pt")
    unetr = make_backbone("unetr", 2)
    heads = [n for n, _ in unetr.named_children() if n != "vit"]
    load_backbone_weights(unetr, tmp_path / "vit.pt", prefix="vit.", allow_missing=heads)
    assert torch.equal(unetr.vit.blocks[0].attn.qkv.weight, vit.blocks[0].attn.qkv.weight)


def test_swin_ssl_layout_uses_monai_filter(tmp_path):
    swin = make_backbone("swinunetr", 3, seed=1)
    encoder = {k: v for k, v in swin.state_dict().items() if k.startswith("swinViT.")}
    ssl = {}
    for k, v in encoder.items():  # the published layout: encoder.layers1.0.0.blocks... -> swinViT.layers1.0.blocks...
        rest = k[len("swinViT."):]
        ssl["module.encoder." + (rest if rest.startswith("patch_embed") else rest[:10] + ".0" + rest[10:])] = v
    ssl["module.encoder.mask_token"] = torch.zeros(1)
    torch.save({"state_dict": ssl}, tmp_path / "model_swinvit.pt")
    target = make_backbone("swinunetr", 3, seed=2)
    heads = [n for n, _ in target.named_children() if n != "swinViT"]
    report = load_backbone_weights(target, tmp_path / "model_swinvit.pt", key_map="swin_ssl", allow_missing=heads)
    assert report["dropped"] == ["encoder.mask_token"]
    for k, v in encoder.items():
        assert torch.equal(target.state_dict()[k], v), k


def test_refusals_name_the_problem(tmp_path):
    net = make_backbone("vit", 2)
    state = net.state_dict()
    missing = dict(state)
    del missing["blocks.0.attn.qkv.weight"]
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match=r"missing \['blocks.0.attn.qkv.weight'\]"):
        load_backbone_weights(make_backbone("vit", 2), tmp_path / "missing.pt", allow_missing=["classification_head"])
    bad = dict(state)
    bad["blocks.0.mlp.linear1.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "shape.pt")
    fresh = make_backbone("vit", 2, seed=5)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(WeightsError, match="blocks.0.mlp.linear1.weight: file \\(3, 3\\)"):
        load_backbone_weights(fresh, tmp_path / "shape.pt")
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())  # nothing loaded
    with pytest.raises(WeightsError, match="unknown key_map 'nope'"):
        load_backbone_weights(fresh, tmp_path / "shape.pt", key_map="nope")
    with pytest.raises(WeightsError, match="does not exist"):
        load_backbone_weights(fresh, tmp_path / "absent.pt")
    assert set(KEY_MAPS) >= {"monai", "timm_vit", "monai_mae", "swin_ssl"}
