"""Mixed precision (``MixedPrecisionInferer``, a bundle's ``precision``): every PEFT method x backbone and
every pretext task under bf16 autocast, outputs and losses in fp32, parameters and saved files in fp32."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from safetensors.torch import load_file

from bundle_utils import run, stage_overrides
from bundle_utils import VIT_PRETRAIN as PRETRAIN
from bundle_utils import VIT_TPP as TPP
from bundle_utils import VIT_TRAIN as TRAIN
from cases import CASES, METHODS, image_size, make_backbone, supported
from tpp_components.inferers import PRECISIONS, MixedPrecisionInferer, autocast_dtype, cpu_supports_bf16
from tpp_components.networks import build_network
from tpp_components.pretext import MaskedAutoencoder, SimMIM

#: the method layers are the same in 2D and 3D: the costly 3D SwinUNETR (64^3) runs LoRA only
GRID = [
    (m, b, d) for m, (b, d) in itertools.product(METHODS, CASES)
    if supported(b, m, d) and ((b, d) != ("swinunetr", 3) or m == "lora")
]
BF16 = MixedPrecisionInferer(precision="bf16")


def test_autocast_dtype_resolution():
    assert autocast_dtype("fp32", "cpu") is None
    assert autocast_dtype("bf16", "cpu") is torch.bfloat16
    assert autocast_dtype("auto", "cpu") is (torch.bfloat16 if cpu_supports_bf16() else None)
    with pytest.raises(ValueError, match="'fp16' needs a CUDA device, got cpu"):
        autocast_dtype("fp16", "cpu")
    with pytest.raises(ValueError, match=r"precision must be one of .*got 'half'"):
        autocast_dtype("half", "cpu")
    with pytest.raises(ValueError, match="got 'bf17'"):
        MixedPrecisionInferer(precision="bf17")
    assert set(PRECISIONS) == {"auto", "fp32", "bf16", "fp16"}


def _task_output(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("method,kind,dims", GRID)
def test_task_forward_backward_bf16(method, kind, dims):
    """bf16 output in fp32, close to the fp32 output; parameters and their gradients stay fp32."""
    net = build_network(make_backbone(kind, dims), peft=METHODS[method], allow_random_backbone=True).eval()
    x = torch.rand(2, 1, *(image_size(kind),) * dims)
    with torch.no_grad():
        reference = _task_output(MixedPrecisionInferer(precision="fp32")(x, net))
        plain = _task_output(net(x))
    assert torch.equal(reference, plain), "precision 'fp32' must not change the computation"
    out = _task_output(BF16(x, net))
    assert out.dtype == torch.float32 and out.shape == reference.shape
    # bf16 keeps 8 bits of mantissa: relative error of order 1e-2 through a few layers
    assert (out - reference).abs().max() <= 0.1 * reference.abs().max() + 1e-2
    out.pow(2).mean().backward()
    trainable = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in net.parameters())
    grads = [p.grad for _, p in trainable if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)


PRETEXTS = [("mae", "vit", 2), ("mae", "vit", 3)] + [
    (target, kind, dims) for target in ("pixels", "features", "distill") for kind, dims in CASES
]


@pytest.mark.parametrize("pretext,kind,dims", PRETEXTS)
def test_pretext_loss_in_fp32(pretext, kind, dims):
    """The pretext loss is computed in fp32 under bf16 autocast, and the target parameters learn from it."""
    net = build_network(make_backbone(kind, dims), peft=METHODS["lora"], allow_random_backbone=True, train_head=False)
    model = MaskedAutoencoder(net) if pretext == "mae" else SimMIM(net, spatial_dims=dims, in_channels=1, target=pretext)
    out = BF16(torch.rand(2, 1, *(image_size(kind),) * dims), model)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grads = [p.grad for n, p in net.named_parameters() if ".lora_B" in n]  # A's gradient is 0 while B is 0
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("dims", [2, 3])
def test_sliding_window_accumulates_in_fp32(dims):
    conv = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d)(1, 2, 3, padding=1)
    window = SlidingWindowInferer(roi_size=(16,) * dims, sw_batch_size=2, overlap=0.5)
    x = torch.rand(1, 1, *(24,) * dims)
    with torch.no_grad():
        out, reference = MixedPrecisionInferer(window, "bf16")(x, conv), window(x, conv)
    assert out.dtype == torch.float32
    assert torch.allclose(out, reference, atol=2e-2)


def test_bundle_stages_in_bf16_save_fp32(small_demo_datalist, tmp_path):
    """Stage 0, TPP and fine-tuning of a bundle with ``precision='bf16'`` learn (finite losses) and write
    only fp32 tensors: backbone, target parameters, model.pt."""
    common = stage_overrides(tmp_path, small_demo_datalist, precision="bf16")
    run(PRETRAIN, output_dir=str(tmp_path / "pretrain"), **common)
    run(TPP, output_dir=str(tmp_path / "tpp"), **common)
    train = run(TRAIN, output_dir=str(tmp_path / "train"), init="tpp", **common)
    assert train.parser.get_parsed_content("train#inferer").precision == "bf16"
    models = Path(common["ckpt_dir"])
    tensors = dict(load_file(models / "tpp_target_parameters.safetensors"))
    tensors.update(load_file(models / "target_parameters.safetensors"))
    for name in ("backbone.pt", "model.pt"):
        state = torch.load(models / name, weights_only=True)
        tensors.update({f"{name}:{k}": v for k, v in _flatten(state).items()})
    floats = {k: v.dtype for k, v in tensors.items() if v.is_floating_point()}
    assert floats and set(floats.values()) == {torch.float32}, {k: d for k, d in floats.items() if d != torch.float32}


def _flatten(state, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, value in state.items() for k, v in _flatten(value, f"{prefix}.{key}").items()}
    return {}
