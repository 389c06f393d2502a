"""Method x backbone x spatial-dims grid: injection, frozen backbone, save/load, refusal, merge."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from cases import CASES, DIMS, MARKERS, METHODS, image_size, make_backbone, supported
from tpp_components.networks import build_network, trainable_parameters
from tpp_components.peft import (
    InjectionError,
    TargetParameterError,
    backbone_parameters,
    get_peft_method,
    inject,
    load_target_parameters,
    merge,
    read_manifest,
    save_target_parameters,
    set_trainable,
    target_parameters,
)
from tpp_components.pretext import MaskedAutoencoder, SimMIM, head_modules
from monai.networks.nets import UNETR, ViT

GRID = [
    (m, b, d) for m, (b, d) in itertools.product(METHODS, CASES) if supported(b, m, d)
]


def _image(dims: int, batch: int = 2, kind: str = "vit") -> torch.Tensor:
    return torch.rand(batch, 1, *(image_size(kind),) * dims)


def _inject(kind: str, dims: int, method: str, seed: int = 0, train_head: bool = True):
    """A PEFT-injected random test backbone (the builder refuses that unless told it is meant)."""
    net = make_backbone(kind, dims, seed)
    return build_network(net, peft=METHODS[method], train_head=train_head, allow_random_backbone=True)


def _task_output(net, x):
    out = net(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("method,kind,dims", GRID)
def test_injection_adds_only_target_parameters(method, kind, dims):
    plain = make_backbone(kind, dims)
    before = dict(plain.named_parameters())
    net = build_network(copy.deepcopy(plain), peft=METHODS[method], allow_random_backbone=True)
    peft_method = get_peft_method(net)
    targets = target_parameters(net)
    assert targets, "injection produced no target parameter"
    marker = MARKERS[METHODS[method]["method"]]
    assert all(marker in n for n in targets), [n for n in targets if marker not in n]
    added = {peft_method.canonical_name(n) for n, _ in net.named_parameters()} - set(before)
    if METHODS[method]["method"] == "bitfit":
        assert not added and set(targets) <= set(before)
    else:
        assert added == set(targets)
    heads = head_modules(plain)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    head_params = {n for n in trainable if any(n.startswith(h + ".") for h in heads)}
    assert trainable - head_params == set(targets)
    # nothing outside targets and head may change size or vanish
    canonical = {peft_method.canonical_name(n) for n, _ in net.named_parameters()}
    assert set(before) <= canonical


@pytest.mark.parametrize("kind,dims", CASES)
def test_standard_init_is_identity_for_lora_and_adapter(kind, dims):
    plain = make_backbone(kind, dims).eval()
    x = _image(dims, 2, kind)
    expected = _task_output(plain, x)
    for method in ("lora", "adapter"):
        net = build_network(copy.deepcopy(plain), peft=METHODS[method], allow_random_backbone=True).eval()
        assert torch.allclose(_task_output(net, x), expected, atol=1e-6), method


def _pretext(net, kind, dims):
    return MaskedAutoencoder(net, decoder_hidden=16, decoder_layers=1, decoder_heads=2) if isinstance(net, (ViT, UNETR)) else SimMIM(net, dims, 1)


@pytest.mark.parametrize("method,kind,dims", GRID)
def test_backbone_bit_identical_through_tpp_and_finetuning(method, kind, dims):
    """The product's own freezing (build_network / set_trainable) keeps the backbone bit-identical."""
    # stage 1 (TPP): the builder freezes backbone and head; only the target parameters train
    net = _inject(kind, dims, method, train_head=False)
    heads = head_modules(net)
    targets = target_parameters(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(targets), sorted(trainable ^ set(targets))
    snapshot = {k: v.detach().clone() for k, v in backbone_parameters(net, heads).items()}
    head_before = {n: p.detach().clone() for n, p in net.named_parameters() if any(n.startswith(h + ".") for h in heads)}
    targets_before = {k: v.detach().clone() for k, v in targets.items()}
    pretext = _pretext(net, kind, dims).train()
    opt = torch.optim.AdamW(trainable_parameters(pretext), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        pretext(_image(dims, 2 if dims == 2 else 1, kind))["loss"].backward()
        opt.step()
    changed = [n for n, p in target_parameters(net).items() if not torch.equal(p, targets_before[n])]
    assert changed, "TPP did not update any target parameter"
    head_params = dict(net.named_parameters())
    assert all(torch.equal(head_params[n], v) for n, v in head_before.items()), "the head moved during TPP"
    # stage 2: task fine-tuning of targets + head, frozen by the product
    set_trainable(net, head_modules(net))
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(targets) | set(head_before), sorted(trainable ^ (set(targets) | set(head_before)))
    net.train()
    opt = torch.optim.AdamW(trainable_parameters(net), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        _task_output(net, _image(dims, 2 if dims == 2 else 1, kind)).float().pow(2).mean().backward()
        opt.step()
    after = backbone_parameters(net, heads)
    assert set(after) == set(snapshot)
    assert all(torch.equal(after[k], snapshot[k]) for k in snapshot), [k for k in snapshot if not torch.equal(after[k], snapshot[k])]


def _perturb_targets(net):
    with torch.no_grad():
        for p in target_parameters(net).values():
            p.add_(torch.randn_like(p) * 0.05)


@pytest.mark.parametrize("method,kind,dims", GRID)
def test_save_load_round_trip_and_refusals(method, kind, dims, tmp_path):
    net = _inject(kind, dims, method).eval()
    heads = head_modules(net)
    _perturb_targets(net)
    path = save_target_parameters(net, tmp_path / "tp.safetensors", heads)
    assert path.is_file() and not path.with_suffix(".json").exists() and read_manifest(path)["method"]
    fresh = _inject(kind, dims, method).eval()
    load_target_parameters(fresh, path, heads)
    for name, p in target_parameters(net).items():
        assert torch.equal(p, target_parameters(fresh)[name]), name
    x = _image(dims, 1, kind)
    if not heads or kind == "vit":
        assert torch.allclose(_task_output(fresh, x), _task_output(net, x), atol=1e-6)
    # a different backbone (other weights) is refused by fingerprint
    other = _inject(kind, dims, method, seed=1)
    with pytest.raises(TargetParameterError, match="fingerprint"):
        load_target_parameters(other, path, heads)
    # a different method is refused by name
    alt = "bitfit" if METHODS[method]["method"] != "bitfit" else "ssf"
    with pytest.raises(TargetParameterError, match="method"):
        load_target_parameters(_inject(kind, dims, alt), path, heads)


@pytest.mark.parametrize("kind,dims", CASES)
def test_refuses_other_rank_and_missing_keys(kind, dims, tmp_path):
    net = _inject(kind, dims, "lora")
    heads = head_modules(net)
    path = save_target_parameters(net, tmp_path / "tp.safetensors", heads)
    other_rank = build_network(make_backbone(kind, dims), peft={**METHODS["lora"], "r": 8}, allow_random_backbone=True)
    with pytest.raises(TargetParameterError, match=r"r: saved 4 vs network 8"):
        load_target_parameters(other_rank, path, heads)
    # same config but a tampered file with a key removed: refused, nothing loaded
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()  # the manifest stays: only the tensors are tampered with
    tensors = load_file(str(path))
    dropped = sorted(tensors)[0]
    del tensors[dropped]
    save_file(tensors, str(path), metadata=header)
    fresh = _inject(kind, dims, "lora")
    before = {k: v.clone() for k, v in target_parameters(fresh).items()}
    with pytest.raises(TargetParameterError, match="missing keys") as err:
        load_target_parameters(fresh, path, heads)
    assert dropped in str(err.value)
    assert all(torch.equal(before[k], v) for k, v in target_parameters(fresh).items())


MERGEABLE = [(m, b, d) for m, b, d in GRID if METHODS[m]["method"] in ("lora", "ssf", "bitfit")]


@pytest.mark.parametrize("method,kind,dims", MERGEABLE)
def test_merge_equivalence_and_strict_load(method, kind, dims):
    net = _inject(kind, dims, method).eval()
    _perturb_targets(net)
    merged = merge(net).eval()
    x = _image(dims, 2, kind)
    diff = (_task_output(merged, x) - _task_output(net, x)).abs().max().item()
    assert diff < 1e-5, diff
    plain = make_backbone(kind, dims, seed=3)
    plain.load_state_dict(merged.state_dict(), strict=True)
    assert (_task_output(plain.eval(), x) - _task_output(merged, x)).abs().max().item() < 1e-6


@pytest.mark.parametrize("dims", DIMS)
def test_unmergeable_methods_and_refusals(dims):
    for method in ("adapter", "prompt_deep"):
        with pytest.raises(NotImplementedError, match="cannot be merged"):
            merge(_inject("vit", dims, method))
    with pytest.raises(InjectionError, match="Swin"):
        inject(make_backbone("swinunetr", dims), "prompt")
    if dims == 2:
        with pytest.raises(InjectionError, match="TinyViTClassifier has none.*windowed attention"):
            inject(make_backbone("tinyvit", dims), "prompt")
    with pytest.raises(InjectionError, match="matches no module"):
        inject(make_backbone("vit", dims), "lora", target_modules=r".*\.does_not_exist")
    with pytest.raises(ValueError, match="unknown PEFT method 'lorax'"):
        inject(make_backbone("vit", dims), "lorax")
    with pytest.raises(ValueError, match="unknown option"):
        inject(make_backbone("vit", dims), "lora", rank=4)
