"""LoRA target parameters exported in HF peft's adapter format: peft loads them onto the plain MONAI
network with identical outputs, and they import back; mismatches are refused by name."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from cases import image_size, make_backbone
from conftest import ROOT, needs_weights
from tpp_components.peft import PeftAdapterError, export_peft_adapter, import_peft_adapter, inject

LORA = {"lora": {"r": 4, "alpha": 8, "target_modules": "attention"}, "dora": {"r": 4, "use_dora": True},
        "lora_attn_mlp": {"r": 2, "target_modules": "attention_mlp"}}


def _trained_lora(kind: str, dims: int, options: dict, seed: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The plain backbone and an injected copy whose LoRA tensors are non-zero (as after TPP / fine-tuning)."""
    plain = make_backbone(kind, dims).eval()
    net = inject(copy.deepcopy(plain), "lora", exclude_modules=["classification_head"], **options).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return plain, net


def _out(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = net(x)
    return y[0] if isinstance(y, tuple) else y


@pytest.mark.parametrize("kind,dims", [("vit", 2), ("unetr", 3), ("swinunetr", 2), ("tinyvit", 2)])
@pytest.mark.parametrize("method", sorted(LORA))
def test_peft_loads_the_exported_adapter_onto_the_plain_network(kind, dims, method, tmp_path):
    from peft import PeftModel

    plain, net = _trained_lora(kind, dims, LORA[method])
    x = torch.rand(2, 1, *(image_size(kind),) * dims)
    export_peft_adapter(net, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    reference = _out(net, x)
    loaded = PeftModel.from_pretrained(copy.deepcopy(plain), str(tmp_path / "adapter")).eval()
    assert torch.allclose(_out(loaded, x), reference, atol=1e-5)
    # and peft's own merge gives the plain network with the same outputs
    assert torch.allclose(_out(loaded.merge_and_unload(), x), reference, atol=1e-4)
    # import back into a fresh (standard-initialised) injected network
    _, fresh = _trained_lora(kind, dims, LORA[method], seed=2)
    assert not torch.allclose(_out(fresh, x), reference, atol=1e-5)
    import_peft_adapter(fresh, tmp_path / "adapter")
    assert torch.allclose(_out(fresh, x), reference, atol=1e-6)


def test_import_refuses_mismatches_by_name(tmp_path):
    _, net = _trained_lora("vit", 2, LORA["lora"])
    folder = export_peft_adapter(net, tmp_path / "adapter")
    _, other_rank = _trained_lora("vit", 2, {**LORA["lora"], "r": 2})
    with pytest.raises(PeftAdapterError, match="r: adapter has 4, network expects 2"):
        import_peft_adapter(other_rank, folder)
    _, mlp_too = _trained_lora("vit", 2, {"r": 4, "alpha": 8, "target_modules": "attention_mlp"})
    with pytest.raises(PeftAdapterError, match="target_modules"):
        import_peft_adapter(mlp_too, folder)
    adapter = inject(make_backbone("vit", 2), "adapter", exclude_modules=["classification_head"], bottleneck=4)
    with pytest.raises(PeftAdapterError, match="carries 'adapter'"):
        export_peft_adapter(adapter, tmp_path / "x")
    (folder / "adapter_config.json").write_text("{not json")
    with pytest.raises(PeftAdapterError, match="adapter_config.json' is not valid JSON"):
        import_peft_adapter(net, folder)
    (folder / "adapter_config.json").unlink()
    with pytest.raises(PeftAdapterError, match=r"lacks \['adapter_config.json'\]"):
        import_peft_adapter(net, folder)


def test_import_refuses_a_truncated_tensor_set(tmp_path):
    from safetensors.torch import load_file, save_file

    _, net = _trained_lora("vit", 2, LORA["lora"])
    folder = export_peft_adapter(net, tmp_path / "adapter")
    state = load_file(str(folder / "adapter_model.safetensors"))
    dropped = sorted(state)[0]
    save_file({k: v for k, v in state.items() if k != dropped}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(PeftAdapterError, match="missing"):
        import_peft_adapter(net, folder)
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"


@needs_weights
def test_tool_exports_a_bundles_target_parameters_for_peft(tmp_path):
    """tools/export_peft_adapter.py on breast_us_segmentation's LiteMedSAM network: peft's plain-network
    load gives the bundle network's outputs (decoder aside: it is the same plain module on both sides)."""
    from monai.bundle import ConfigParser
    from peft import PeftModel

    from tools.export_peft_adapter import main as export_tool
    from tpp_components.networks import litemedsam_checkpoint
    from tpp_components.networks.weights import load_backbone_weights
    from tpp_components.peft import save_target_parameters
    from tpp_components.pretext import head_modules

    bundle = ROOT / "bundles" / "breast_us_segmentation"
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "init": "standard"})
    parser.get_parsed_content("imports")
    net = parser.get_parsed_content("network_def").eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn_like(p) * 0.05)
    save_target_parameters(net, tmp_path / "target_parameters.safetensors", head_modules(net))
    folder = export_tool(str(bundle), str(tmp_path / "target_parameters.safetensors"), str(tmp_path / "adapter"))
    plain = parser.get_parsed_content("backbone", lazy=False)  # a fresh, un-injected TinyViTSegmenter
    heads = head_modules(plain)
    load_backbone_weights(plain, litemedsam_checkpoint(), key_map="litemedsam_trunk", allow_missing=heads)
    for head in heads:  # the task head (the decoder) is not part of a peft adapter: it ships in model.pt
        plain.get_submodule(head).load_state_dict(net.get_submodule(head).state_dict())
    x = torch.rand(1, 3, 64, 64)
    loaded = PeftModel.from_pretrained(plain, folder).eval()
    assert torch.allclose(_out(loaded, x), _out(net, x), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_tool(str(bundle), str(tmp_path / "nope.safetensors"), str(tmp_path / "a2"))
