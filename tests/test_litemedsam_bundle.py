"""breast_us_classification's default network, LiteMedSAM's TinyViT: every stage, and learning gates.

The stages run as a user runs them (``configs/litemedsam.json``, the switch that selected it before 0.4.0, is a
no-op over the default: ``tests/test_generated_configs.py``)::

    python -m monai.bundle run --config_file "['configs/train.json','configs/tpp.json']"
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import BUNDLE, CONFIGS, run, stage_overrides, train_and_evaluate
from conftest import needs_weights, require_data
from tools.demo import LINEAR_PROBE
from tools.make_demo_data import make_demo_dataset
from tools.prepare_busi import main as prepare_busi
from tpp_components.data import load_datalist
from tpp_components.networks import litemedsam_checkpoint
from tpp_components.peft import read_manifest

pytestmark = needs_weights

TRAIN = ["train.json"]
TPP = ["train.json", "tpp.json"]
EVALUATE = ["train.json", "evaluate.json"]
INFER = ["inference.json"]

#: generated data, 32 px: balanced accuracy over the trivial predictor's 1/3, in points
#: (measured on the demo test split, n=36: linear probe 0.889 (+56), LoRA 0.750 (+42))
DEMO_MARGIN = 0.25
#: real BUSI at 64 px, LoRA 2 epochs: balanced accuracy over chance, in points (measured 0.615 (+28), macro AUC 0.744)
BUSI_MARGIN = 0.15


def _network_def(configs: list[str], **overrides) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in configs])
    parser["bundle_root"] = str(BUNDLE)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def test_switch_runs_tpp_train_evaluate_and_inference(small_demo_datalist, tmp_path):
    common = stage_overrides(tmp_path, small_demo_datalist, image_size=32)
    run(TPP, output_dir=str(tmp_path / "logs" / "tpp"), **common)
    run(TRAIN, output_dir=str(tmp_path / "logs" / "train"), init="tpp", **common)
    run(EVALUATE, output_dir=str(tmp_path / "eval"), **common)
    images = tmp_path / "images"
    images.mkdir()
    for item in load_datalist(small_demo_datalist)["test"][:3]:
        (images / Path(item["image"]).name).write_bytes(Path(item["image"]).read_bytes())
    run(INFER, workflow_type="infer", input_dir=str(images), output_dir=str(tmp_path / "pred"),
        ckpt_dir=str(tmp_path / "models"), image_size=32)

    models = tmp_path / "models"
    tpp_manifest = read_manifest(models / "tpp_target_parameters.safetensors")
    assert tpp_manifest["backbone"]["fingerprint"] == read_manifest(models / "target_parameters.safetensors")["backbone"]["fingerprint"]
    assert tpp_manifest["backbone"]["class"] == "TinyViTClassifier"
    assert tpp_manifest["config"]["target_modules"] == "attention_mlp"
    report = json.loads((tmp_path / "eval" / "classification_report.json").read_text())
    assert report["num_samples"] == len(load_datalist(small_demo_datalist)["test"])
    assert len((tmp_path / "pred" / "predictions.csv").read_text().strip().splitlines()) == 1 + 3  # header + 3 images
    header = (tmp_path / "eval" / "test_predictions.csv").read_text().splitlines()[0]
    assert header == "image,predicted_class,p_normal,p_benign,p_malignant,true_class"

    # the merged model loads strictly into the inference definition with the switch
    net = _network_def(INFER, image_size=32)
    model = torch.load(models / "model.pt", weights_only=True)
    net.load_state_dict(model, strict=True)
    # frozen means frozen through every stage: the BatchNorm statistics are still LiteMedSAM's
    released = torch.load(litemedsam_checkpoint(), weights_only=True)
    pairs = {
        "layers.0.blocks.0.conv1.adn.N.running_mean": "image_encoder.layers.0.blocks.0.conv1.bn.running_mean",
        "layers.2.blocks.5.local_conv.adn.N.running_var": "image_encoder.layers.2.blocks.5.local_conv.bn.running_var",
        "patch_embed.conv1.adn.N.running_var": "image_encoder.patch_embed.seq.0.bn.running_var",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(model[ours], released[theirs]), ours
    # the merged LoRA update reached an MLP weight, and the 3-channel input is what it reads
    assert not torch.equal(model["layers.3.blocks.1.mlp.linear1.weight"], released["image_encoder.layers.3.blocks.1.mlp.fc1.weight"])
    assert model["patch_embed.conv1.conv.weight"].shape[1] == 3


def test_switch_refuses_a_stage0_decoder_and_prompts(small_demo_datalist, tmp_path):
    """No stage 0 for a pretrained encoder: TPP starts from a fresh decoder; prompts do not fit windows."""
    from bundle_utils import workflow

    wf = workflow(TPP, **stage_overrides(tmp_path, small_demo_datalist, image_size=32))
    assert wf.parser["reuse_decoder"] is False
    assert wf.parser.get_parsed_content("pretext#model#decoder_weights") is None
    with pytest.raises(RuntimeError) as err:
        workflow(TRAIN, **stage_overrides(tmp_path, small_demo_datalist, image_size=32), init="standard",
                 peft={"method": "prompt"}).parser.get_parsed_content("network_def")
    assert "windowed attention" in str(err.value.__cause__)


@pytest.mark.parametrize("target", ["features", "distill"])
def test_switch_tpp_with_the_feature_targets(small_demo_datalist, tmp_path, target):
    """``--pretext#target features`` (masked feature prediction) or ``distill`` (self-distillation from the frozen
    encoder): no pixel decoder; TPP writes target parameters."""
    common = stage_overrides(tmp_path, small_demo_datalist, image_size=32)
    wf = run(TPP, output_dir=str(tmp_path / "logs"), **{"pretext#target": target}, **common)
    pretext = wf.parser.get_parsed_content("pretext#model")
    assert pretext.target == target and not hasattr(pretext, "decoder")
    assert hasattr(pretext, "distill") == (target == "distill")
    manifest = read_manifest(tmp_path / "models" / "tpp_target_parameters.safetensors")
    assert manifest["method"] == "lora"


@pytest.mark.slow
def test_gate_linear_probe_and_lora_beat_trivial_on_demo_data(tmp_path):
    data = make_demo_dataset(tmp_path / "data", num_per_class=60, image_size=64, seed=0)
    datalist = str(prepare_busi(data_dir=str(data), output=str(tmp_path / "datalist.json"), seed=0))
    probe = train_and_evaluate(tmp_path, datalist, "probe", 15, TRAIN, EVALUATE, image_size=32, **LINEAR_PROBE)
    lora = train_and_evaluate(tmp_path, datalist, "lora", 6, TRAIN, EVALUATE, image_size=32)
    for name, report in (("linear probe", probe), ("lora", lora)):
        print(f"LiteMedSAM demo {name}: balanced accuracy {report['balanced_accuracy']:.3f}, accuracy {report['accuracy']:.3f}")
        assert report["balanced_accuracy"] >= 1 / 3 + DEMO_MARGIN, (name, report["balanced_accuracy"], report["per_class"])
        assert report["accuracy"] >= report["majority_rate"] + DEMO_MARGIN, (name, report["accuracy"])


@pytest.mark.slow
def test_gate_lora_beats_trivial_on_real_busi(tmp_path):
    """The pretrained encoder with LoRA, 2 epochs at 64 px on the BUSI training split; the whole
    test split (n=156) must beat chance on balanced accuracy by the margin."""
    busi = require_data("busi_classification")
    datalist = str(prepare_busi(data_dir=str(busi), output=str(tmp_path / "busi.json"), seed=0))
    report = train_and_evaluate(tmp_path, datalist, "lora", 2, TRAIN, EVALUATE)
    print(f"LiteMedSAM BUSI LoRA 2 epochs: balanced accuracy {report['balanced_accuracy']:.3f}, macro AUC {report['macro_auc']:.3f}")
    assert report["num_samples"] == 156
    assert report["balanced_accuracy"] >= 1 / 3 + BUSI_MARGIN, (report["balanced_accuracy"], report["per_class"])
