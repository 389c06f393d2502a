"""The network anatomy: each backbone kind's head, feature map and mask-token hook, from one registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from cases import make_backbone
from tpp_components.networks import TinyViT, TinyViTSegmenter
from tpp_components.networks.anatomy import Anatomy, anatomy_of, head_modules, register

SMALL_TINYVIT = dict(in_channels=1, embed_dims=(8, 16, 16, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
                     window_sizes=(3, 3, 5, 3), downsample_strides=(2, 2, 1))
#: kind -> (network, input shape, expected stride or None, expected head modules or None)
CASES = {
    "vit": (lambda: make_backbone("vit", 2), (2, 1, 32, 32), 8, ["classification_head"]),
    "unetr": (lambda: make_backbone("unetr", 2), (2, 1, 32, 32), 16, None),  # MONAI UNETR: patch 16
    "swin_unetr": (lambda: make_backbone("swinunetr", 3), (1, 1, 32, 32, 32), 32, None),
    "tiny_vit_classifier": (lambda: make_backbone("tinyvit", 2), (2, 1, 32, 32), None, ["classification_head"]),
    "tiny_vit_segmenter": (lambda: TinyViTSegmenter(out_channels=2, **SMALL_TINYVIT), (2, 1, 32, 32), None, None),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_feature_map_has_the_anatomys_channels_and_stride(kind):
    build, shape, stride, heads = CASES[kind]
    torch.manual_seed(0)
    net = build().eval()
    anatomy = anatomy_of(net)
    with torch.no_grad():
        features = anatomy.feature_map(net, torch.randn(shape))
    assert features.shape[1] == anatomy.channels(net)
    assert list(features.shape[2:]) == [s // anatomy.stride(net) for s in shape[2:]]
    if stride is not None:
        assert anatomy.stride(net) == stride
    encoder = set(anatomy.encoder_modules(net))
    assert encoder and encoder <= {n for n, _ in net.named_children()}
    assert set(head_modules(net)).isdisjoint(encoder)
    assert set(head_modules(net)) | encoder == {n for n, _ in net.named_children()}
    if heads is not None:
        assert head_modules(net) == heads


def test_only_tiny_vit_has_a_mask_token_hook_and_it_changes_the_features():
    net = make_backbone("tinyvit", 2).eval()
    anatomy = anatomy_of(net)
    channels, stride = anatomy.embedding_channels(net), anatomy.embedding_stride(net)
    x = torch.randn(1, 1, 32, 32)
    mask = torch.zeros(1, 1, 32 // stride, 32 // stride)
    mask[..., :2, :2] = 1
    with torch.no_grad():
        plain = anatomy.feature_map(net, x)
        same = anatomy.masked_feature_map(net, x, torch.zeros_like(mask), torch.zeros(channels))
        masked = anatomy.masked_feature_map(net, x, mask, torch.ones(channels))
    assert torch.allclose(plain, same) and not torch.allclose(plain, masked)
    vit = CASES["vit"][0]()
    assert anatomy_of(vit).embedding_channels(vit) is None
    with pytest.raises(TypeError, match="ViTClassifier has no patch-embedding hook for a mask token"):
        anatomy_of(vit).embedding_stride(vit)


def test_an_unknown_network_is_refused_naming_the_known_kinds():
    with pytest.raises(TypeError, match=r"unsupported network Linear; expected one of: .*SwinUNETR.*TinyViT.*ViT"):
        anatomy_of(nn.Linear(2, 2))


def test_a_new_kind_is_one_registered_class():
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 4, stride=4)
            self.head = nn.Linear(4, 2)

    @register(Tiny)
    class TinyAnatomy(Anatomy):
        def encoder_modules(self, network):
            return ["stem"]

        def feature_map(self, network, x):
            return network.stem(x)

        def channels(self, network):
            return 4

        def stride(self, network):
            return 4

    net = Tiny()
    assert head_modules(net) == ["head"]
    assert anatomy_of(net).feature_map(net, torch.randn(1, 1, 8, 8)).shape == (1, 4, 2, 2)
    assert isinstance(anatomy_of(TinyViT(**SMALL_TINYVIT)), Anatomy)
