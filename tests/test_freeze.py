"""Frozen means frozen (BatchNorm running statistics too), the random-backbone refusal, and ViTClassifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from monai.networks.nets import UNETR, ViT
from torch.nn.modules.batchnorm import _BatchNorm

from tpp_components.networks import ViTClassifier, build_network, trainable_parameters
from tpp_components.peft import (
    backbone_fingerprint,
    backbone_parameters,
    freeze_running_stats,
    get_peft_method,
    merge,
    set_trainable,
    target_parameters,
)
from tpp_components.pretext import head_modules

LORA = {"method": "lora", "r": 2}
DIMS = [2, 3]


def _size(dims: int) -> tuple[int, ...]:
    return (32, 32) if dims == 2 else (16, 16, 16)


def _unetr_bn(dims: int, seed: int = 0) -> UNETR:
    """A tiny UNETR whose convolutional blocks use BatchNorm (running statistics)."""
    torch.manual_seed(seed)
    return UNETR(
        1, 2, _size(dims), feature_size=4, hidden_size=32, mlp_dim=64, num_heads=2, spatial_dims=dims,
        qkv_bias=True, norm_name="batch",
    )


def _vit_kwargs(dims: int) -> dict:
    return dict(
        in_channels=1, img_size=_size(dims), patch_size=8, hidden_size=32, mlp_dim=64, num_layers=2, num_heads=2,
        spatial_dims=dims, num_classes=3, qkv_bias=True,
    )


def _image(dims: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, 1, *_size(dims))


def _batch_norms(net: nn.Module) -> dict[str, _BatchNorm]:
    return {n: m for n, m in net.named_modules() if isinstance(m, _BatchNorm)}


def _bn_buffers(net: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, bn in _batch_norms(net).items():
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            out[f"{name}.{buf}"] = getattr(bn, buf).detach().clone()
    return out


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _train_steps(net: nn.Module, dims: int, steps: int = 2, batch: int = 2) -> dict[str, list[bool]]:
    """``steps`` optimizer steps in train mode; returns each BatchNorm's ``training`` flag seen at every forward."""
    seen: dict[str, list[bool]] = {}
    handles = [
        bn.register_forward_hook(lambda m, a, o, name=name: seen.setdefault(name, []).append(m.training))
        for name, bn in _batch_norms(net).items()
    ]
    opt = torch.optim.AdamW(trainable_parameters(net), lr=1e-2, weight_decay=0.1)
    try:
        for _ in range(steps):
            net.train()  # engines call train() every epoch
            opt.zero_grad()
            net(_image(dims, batch)).float().pow(2).mean().backward()
            opt.step()
    finally:
        for h in handles:
            h.remove()
    return seen


# ---------------------------------------------------------------- a. frozen BatchNorm stays frozen


@pytest.mark.parametrize("dims", DIMS)
def test_frozen_batchnorm_keeps_running_stats_in_train_mode(dims):
    net = build_network(_unetr_bn(dims), peft=LORA, train_head=False, allow_random_backbone=True)
    bns = _batch_norms(net)
    assert bns, "the test network has no BatchNorm"
    before = _bn_buffers(net)
    targets_before = {n: p.detach().clone() for n, p in target_parameters(net).items()}
    seen = _train_steps(net, dims)
    assert set(seen) == set(bns), "some BatchNorm never ran"
    assert all(not any(flags) for flags in seen.values()), {n: f for n, f in seen.items() if any(f)}
    assert all(not bn.training for bn in bns.values())
    after = _bn_buffers(net)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    # the adaptation itself did happen
    assert any(not torch.equal(p, targets_before[n]) for n, p in target_parameters(net).items())


@pytest.mark.parametrize("dims", DIMS)
def test_head_batchnorm_trains_when_the_head_trains(dims):
    net = build_network(_unetr_bn(dims), peft=LORA, train_head=True, allow_random_backbone=True)
    heads = head_modules(net)
    bns = _batch_norms(net)
    assert bns and all(_under(n, heads) for n in bns)  # UNETR: every BatchNorm is in the task head
    before = _bn_buffers(net)
    seen = _train_steps(net, dims, steps=2)
    assert all(flags == [True, True] for flags in seen.values()), seen
    after = _bn_buffers(net)
    for name in bns:
        assert not torch.equal(before[f"{name}.running_mean"], after[f"{name}.running_mean"]), name
        assert not torch.equal(before[f"{name}.running_var"], after[f"{name}.running_var"]), name
        assert int(after[f"{name}.num_batches_tracked"]) == int(before[f"{name}.num_batches_tracked"]) + 2, name
    assert all(len(bn._forward_pre_hooks) == 0 for bn in bns.values())


def test_freeze_running_stats_is_idempotent():
    net = build_network(_unetr_bn(3), peft=LORA, train_head=False, allow_random_backbone=True)
    bns = _batch_norms(net)
    assert all(len(bn._forward_pre_hooks) == 1 for bn in bns.values())
    first = freeze_running_stats(net)
    second = freeze_running_stats(net)
    set_trainable(net, ())
    assert sorted(first) == sorted(second) == sorted(bns)
    assert all(len(bn._forward_pre_hooks) == 1 for bn in bns.values()), {n: len(b._forward_pre_hooks) for n, b in bns.items()}
    # modules named as trainable are left alone
    plain = _unetr_bn(2)
    hooked = freeze_running_stats(plain, head_modules(plain))
    assert hooked == [] and all(len(bn._forward_pre_hooks) == 0 for bn in _batch_norms(plain).values())


def test_set_trainable_unfreezes_head_batchnorm_frozen_by_an_earlier_stage():
    net = build_network(_unetr_bn(2), peft=LORA, train_head=False, allow_random_backbone=True)
    set_trainable(net, head_modules(net))  # fine-tuning: the head trains in full
    before = _bn_buffers(net)
    _train_steps(net, 2, steps=1)
    after = _bn_buffers(net)
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("running_mean"))


def test_network_with_frozen_batchnorm_can_be_scripted_after_merge():
    net = build_network(_unetr_bn(2), peft=LORA, train_head=False, allow_random_backbone=True)
    merged = merge(net).eval()
    scripted = torch.jit.script(merged)
    x = _image(2, 1)
    assert torch.allclose(scripted(x), merged(x), atol=1e-5)


# ---------------------------------------------------------------- b. linear probe


@pytest.mark.parametrize("dims", DIMS)
def test_linear_probe_trains_head_norm_and_linear_only(dims):
    torch.manual_seed(0)
    net = build_network(ViTClassifier(head_norm=True, **_vit_kwargs(dims)), peft=None, freeze_backbone=True, allow_random_backbone=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"classification_head.1.weight", "classification_head.1.bias"}
    norm = net.classification_head[0]
    assert isinstance(norm, nn.BatchNorm1d) and len(norm._forward_pre_hooks) == 0
    backbone = {k: v.detach().clone() for k, v in net.state_dict().items() if not k.startswith("classification_head.")}
    head = {k: v.detach().clone() for k, v in net.state_dict().items() if k.startswith("classification_head.")}
    seen = _train_steps(net, dims, steps=3, batch=4)
    assert seen == {"classification_head.0": [True, True, True]}
    state = net.state_dict()
    assert [k for k, v in backbone.items() if not torch.equal(state[k], v)] == []
    for key in ("classification_head.0.running_mean", "classification_head.0.running_var", "classification_head.1.weight"):
        assert not torch.equal(state[key], head[key]), key
    assert int(state["classification_head.0.num_batches_tracked"]) == 3


# ---------------------------------------------------------------- c. fingerprint with 0-dim buffers


def test_fingerprint_covers_batchnorm_buffers_and_stays_through_tpp_steps():
    net = build_network(_unetr_bn(2), peft=LORA, train_head=False, allow_random_backbone=True)
    backbone = backbone_parameters(net, ())
    assert any(v.dim() == 0 for v in backbone.values()), "no 0-dim buffer in the backbone"
    assert any(k.endswith("running_mean") for k in backbone)
    digest = backbone_fingerprint(net, ())
    assert len(digest) == 64 and int(digest, 16) >= 0
    bn = next(iter(_batch_norms(net).values()))
    with torch.no_grad():
        bn.running_mean[0] += 1.0
        assert backbone_fingerprint(net, ()) != digest
        bn.running_mean[0] -= 1.0
        assert backbone_fingerprint(net, ()) == digest
        bn.num_batches_tracked += 1
        assert backbone_fingerprint(net, ()) != digest
        bn.num_batches_tracked -= 1
    assert backbone_fingerprint(net, ()) == digest
    # two TPP-like steps in train mode: every backbone parameter and buffer bit-identical
    snapshot = {k: v.detach().clone() for k, v in backbone.items()}
    _train_steps(net, 2, steps=2)
    after = backbone_parameters(net, ())
    assert set(after) == set(snapshot)
    assert [k for k in snapshot if not torch.equal(after[k], snapshot[k])] == []
    assert backbone_fingerprint(net, ()) == digest


# ---------------------------------------------------------------- d. random-backbone refusal


def test_build_network_refuses_a_frozen_random_backbone():
    with pytest.raises(ValueError, match="allow_random_backbone") as err:
        build_network(ViTClassifier(**_vit_kwargs(2)), peft=LORA)
    assert "lora" in str(err.value) and "backbone_weights" in str(err.value)
    with pytest.raises(ValueError, match="allow_random_backbone") as err:
        build_network(ViTClassifier(**_vit_kwargs(2)), peft=None, freeze_backbone=True)
    assert "linear probe" in str(err.value)
    # stage 0 (everything trains): random weights are the point
    plain = ViTClassifier(**_vit_kwargs(2))
    net = build_network(plain, peft=None, freeze_backbone=False)
    assert net is plain and all(p.requires_grad for p in net.parameters())
    # merged inference definition: weights come from model.pt afterwards
    plain = ViTClassifier(**_vit_kwargs(2))
    assert build_network(plain, peft=LORA, merged=True) is plain
    assert set(plain.state_dict()) == set(ViTClassifier(**_vit_kwargs(2)).state_dict())
    with pytest.raises(ValueError, match="no injected PEFT method"):
        get_peft_method(plain)


# ---------------------------------------------------------------- e. ViTClassifier pooling, keys, scripting


@pytest.mark.parametrize("dims", DIMS)
def test_vit_classifier_pooling(dims):
    torch.manual_seed(0)
    mean_net = ViTClassifier(**_vit_kwargs(dims)).eval()
    assert mean_net.pooling == "mean"
    cls_net = ViTClassifier(pooling="cls", **_vit_kwargs(dims)).eval()
    cls_net.load_state_dict(mean_net.state_dict(), strict=True)
    x = _image(dims)
    with torch.no_grad():
        logits_cls_token, hidden = ViT.forward(mean_net, x)  # MONAI's own forward: head on token 0
        tokens = mean_net.norm(hidden[-1])
        by_hand = mean_net.classification_head(tokens[:, 1:].mean(dim=1))
        assert torch.allclose(mean_net(x), by_hand, atol=1e-6)
        assert torch.allclose(cls_net(x), logits_cls_token, atol=1e-6)
        assert torch.allclose(cls_net(x), mean_net.classification_head(tokens[:, 0]), atol=1e-6)
        assert not torch.allclose(mean_net(x), cls_net(x))
    with pytest.raises(ValueError, match="'max'"):
        ViTClassifier(pooling="max", **_vit_kwargs(dims))


@pytest.mark.parametrize("dims", DIMS)
def test_vit_classifier_state_dict_keys(dims):
    plain = ViTClassifier(**_vit_kwargs(dims))
    monai_vit = ViT(classification=True, post_activation="none", **_vit_kwargs(dims))
    assert list(plain.state_dict()) == list(monai_vit.state_dict())
    monai_vit.load_state_dict(plain.state_dict(), strict=True)
    normed = ViTClassifier(head_norm=True, **_vit_kwargs(dims))
    keys = set(normed.state_dict())
    assert {"classification_head.0.running_mean", "classification_head.1.weight", "classification_head.1.bias"} <= keys
    assert "classification_head.0.weight" not in keys  # non-affine norm
    assert {k for k in keys if not k.startswith("classification_head.")} == {
        k for k in plain.state_dict() if not k.startswith("classification_head.")
    }


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("head_norm", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_vit_classifier_scripts_like_eager(dims, head_norm, pooling):
    torch.manual_seed(0)
    net = ViTClassifier(pooling=pooling, head_norm=head_norm, **_vit_kwargs(dims))
    if head_norm:  # non-trivial running statistics
        net.train()
        with torch.no_grad():
            net(_image(dims, 4))
    net.eval()
    scripted = torch.jit.script(net)
    x = _image(dims)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)
