"""TinyViTSegmenter: LiteMedSAM's encoder with a light decoder; weights, PEFT, TPP, learning, scripting."""

from __future__ import annotations

import pytest
import torch

from conftest import needs_weights
from tpp_components.networks import LITEMEDSAM_ENCODER, TinyViTSegmenter, build_network, litemedsam_checkpoint
from tpp_components.peft import backbone_fingerprint, merge, target_parameters
from tpp_components.pretext import SimMIM, head_modules

TRUNK = {k: v for k, v in LITEMEDSAM_ENCODER.items() if k != "neck_channels"}
SMALL = dict(in_channels=1, embed_dims=(8, 16, 16, 32), depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
             window_sizes=(3, 3, 5, 3), downsample_strides=(2, 2, 1), decoder_channels=16)


def _small(**kwargs) -> TinyViTSegmenter:
    torch.manual_seed(0)
    return TinyViTSegmenter(out_channels=2, **{**SMALL, **kwargs})


@pytest.mark.parametrize("size", [32, 48, 64])
def test_logits_have_the_input_size(size):
    net = _small().eval()
    assert net(torch.rand(2, 1, size, size)).shape == (2, 2, size, size)
    assert head_modules(net) == ["decoder"]


def test_refuses_3d():
    with pytest.raises(ValueError, match="2D encoder"):
        TinyViTSegmenter(out_channels=2, spatial_dims=3)


@needs_weights
def test_loads_litemedsam_and_trains_lora_plus_decoder_only():
    net = build_network(
        TinyViTSegmenter(out_channels=2, **TRUNK), peft={"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention_mlp"},
        backbone_weights=litemedsam_checkpoint(), key_map="litemedsam_trunk",
    )
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == set(target_parameters(net)) | {n for n in trainable if n.startswith("decoder.")}
    assert any(n.startswith("decoder.") for n in trainable)
    counts = [sum(p.numel() for p in net.parameters() if p.requires_grad), sum(p.numel() for p in net.parameters())]
    assert counts == [421_126, 5_475_098]  # LoRA 237,568 + decoder 183,558 of 5.48 M (7.7 %)


def test_pretext_then_fine_tuning_keep_the_backbone_and_learn_a_mask():
    """TPP on the encoder (decoder untouched), then fine-tuning learns a bright square's mask."""
    torch.manual_seed(0)
    net = build_network(_small(), peft={"method": "lora", "r": 4, "target_modules": "attention_mlp"},
                        train_head=False, allow_random_backbone=True)
    before = backbone_fingerprint(net, ["decoder"])
    decoder = {n: p.clone() for n, p in net.decoder.named_parameters()}
    pretext = SimMIM(net, spatial_dims=2, in_channels=1, mask_patch=8)
    pretext(torch.rand(2, 1, 32, 32))["loss"].backward()
    assert all(p.grad is None for p in net.decoder.parameters())
    assert all(torch.equal(p, decoder[n]) for n, p in net.decoder.named_parameters())

    net = build_network(_small(), peft={"method": "lora", "r": 4, "target_modules": "attention_mlp"}, allow_random_backbone=True)
    generator = torch.Generator().manual_seed(1)

    def batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.rand(n, 1, 32, 32, generator=generator) * 0.3
        labels = torch.zeros(n, 32, 32, dtype=torch.long)
        for i in range(n):
            y, x = torch.randint(0, 20, (2,), generator=generator).tolist()
            images[i, 0, y:y + 12, x:x + 12] += 0.6
            labels[i, y:y + 12, x:x + 12] = 1
        return images, labels

    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=5e-3)
    net.train()
    for _ in range(60):
        images, labels = batch()
        loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    images, labels = batch(16)
    with torch.no_grad():
        pred = net(images).argmax(1)
    dice = 2 * ((pred == 1) & (labels == 1)).sum() / ((pred == 1).sum() + (labels == 1).sum())
    # the all-background predictor scores Dice 0; the gate asks for 0.5 (measured: 1.000)
    assert dice > 0.5, f"foreground Dice {dice:.3f}"
    fresh = build_network(_small(), peft={"method": "lora", "r": 4, "target_modules": "attention_mlp"}, allow_random_backbone=True)
    assert backbone_fingerprint(net, ["decoder"]) == backbone_fingerprint(fresh, ["decoder"]) == before


def test_merged_segmenter_scripts():
    net = build_network(_small(), peft={"method": "lora", "r": 2}, allow_random_backbone=True).eval()
    merged = merge(net).eval()
    scripted = torch.jit.script(merged)
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(scripted(x), merged(x), atol=1e-5)
