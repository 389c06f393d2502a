"""SwinUNETR window attention through SDPA in training (``fuse_window_attention``): same function, same gradients,
same checkpoint keys as MONAI's unfused attention, 2D and 3D."""

from __future__ import annotations

import copy

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention

from tpp_components.networks import build_network
from tpp_components.networks.window_attention import FusedWindowAttention, fuse_window_attention


def _swin(dims: int, flash: bool) -> SwinUNETR:
    torch.manual_seed(0)
    # window 4 on grids of 32, 16, 8 and 4: shifted windows (with the attention mask) and unshifted ones
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, depths=(2, 2, 2, 2), window_size=4,
                     spatial_dims=dims, use_flash_attention=flash)


@pytest.mark.parametrize("dims", [2, 3])
def test_fused_equals_unfused_with_gradients(dims):
    reference = _swin(dims, flash=False).train()
    fused = fuse_window_attention(_swin(dims, flash=True).train())
    kinds = {type(m) for m in fused.modules() if isinstance(m, WindowAttention)}
    assert kinds == {FusedWindowAttention}
    assert list(fused.state_dict()) == list(reference.state_dict())
    fused.load_state_dict(reference.state_dict())
    x = torch.rand(2, 1, *(64,) * dims)
    out_ref, out = reference(x), fused(x)
    assert torch.allclose(out, out_ref, atol=1e-5)
    out_ref.pow(2).mean().backward()
    out.pow(2).mean().backward()
    grads_ref = dict(reference.named_parameters())
    for name, param in fused.named_parameters():
        assert torch.allclose(param.grad, grads_ref[name].grad, atol=1e-5, rtol=1e-4), name


def test_only_flash_attention_modules_are_fused_and_builder_fuses():
    plain = build_network(_swin(2, flash=False), peft=None, freeze_backbone=False)
    assert not any(isinstance(m, FusedWindowAttention) for m in plain.modules())
    net = build_network(_swin(2, flash=True), peft={"method": "lora", "r": 2}, allow_random_backbone=True)
    fused = [m for m in net.modules() if isinstance(m, FusedWindowAttention)]
    assert fused and all(hasattr(m.qkv, "lora_A") or "lora" in type(m.qkv).__name__.lower() for m in fused)
    # the LoRA target parameters still receive gradients through the fused path
    net(torch.rand(2, 1, 64, 64)).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in net.named_parameters() if "lora_B" in n)
    copy.deepcopy(net)  # a fused network stays copyable (deep copies in the tests and the study tool)
