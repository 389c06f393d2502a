"""Run bundle configs in-process through MONAI's ``ConfigWorkflow``, as ``monai.bundle run`` does."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from monai.bundle import ConfigWorkflow

from conftest import ROOT

BUNDLE = ROOT / "bundles" / "breast_us_classification"
CONFIGS = BUNDLE / "configs"

#: the stages as ``monai.bundle run`` merges them: train.json is complete, the others override it
TRAIN = ["train.json"]
PRETRAIN = ["train.json", "pretrain.json"]
TPP = ["train.json", "tpp.json"]
EVALUATE = ["train.json", "evaluate.json"]
INFERENCE = ["inference.json"]
#: the same stages of breast_us_classification with its own ViT (``configs/vit.json``, stage 0 included): the small
#: network its pipeline tests run on. The bundle's default network, LiteMedSAM's pretrained TinyViT, is tested in
#: ``test_litemedsam_bundle.py``.
VIT = "vit.json"
VIT_TRAIN, VIT_PRETRAIN, VIT_TPP, VIT_EVALUATE, VIT_INFERENCE = ([c[0], VIT, *c[1:]] for c in (TRAIN, PRETRAIN, TPP, EVALUATE, INFERENCE))


def workflow(configs: list[str], workflow_type: str = "train", bundle: Path = BUNDLE, **overrides) -> ConfigWorkflow:
    """An initialised workflow of ``bundle``'s ``configs`` (merged left to right) with ``overrides``."""
    configs_dir = Path(bundle) / "configs"
    files = [str(configs_dir / c) for c in configs]
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(configs_dir / "metadata.json"),
        logging_file=str(configs_dir / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(bundle),
        **overrides,
    )
    wf.initialize()
    return wf


def run(configs: list[str], **overrides) -> ConfigWorkflow:
    """Initialise, run and finalise; return the workflow for inspection."""
    wf = workflow(configs, **overrides)
    wf.run()
    wf.finalize()
    return wf


def evaluation_ckpt_dir(tmp: Path) -> dict:
    """``ckpt_dir`` holding empty models of the default and the standard init (``model.pt``, ``model_standard.pt``):
    evaluation refuses to start without the fine-tuned model of its init (``startup_checks#model``), and building
    the stage to check its properties never loads it."""
    (tmp / "models").mkdir(exist_ok=True)
    for name in ("model.pt", "model_standard.pt"):
        (tmp / "models" / name).touch()
    return {"ckpt_dir": str(tmp / "models")}


def stage_overrides(tmp: Path, datalist: str, **extra) -> dict:
    """Small, fast settings shared by the end-to-end tests."""
    return {"datalist": datalist, "ckpt_dir": str(tmp / "models"), "num_epochs": 1, **extra}


def train_and_evaluate(
    tmp: Path, datalist: str, name: str, epochs: int, train: list[str] = VIT_TRAIN, evaluate: list[str] = VIT_EVALUATE,
    **overrides
) -> dict:
    """Fine-tune (standard init) into ``tmp/name``, evaluate on the test split, return the classification report.

    ``train`` / ``evaluate`` are the config lists (a backbone switch goes after ``train.json``);
    evaluation drops ``backbone_weights``, as the merged model holds them.
    """
    common = {"datalist": datalist, "ckpt_dir": str(tmp / name), "init": "standard", **overrides}
    run(train, output_dir=str(tmp / name / "logs"), num_epochs=epochs, **common)
    run(evaluate, output_dir=str(tmp / name / "eval"), **{k: v for k, v in common.items() if k != "backbone_weights"})
    return json.loads((tmp / name / "eval" / "classification_report.json").read_text())


def check_export(bundle: Path, configs: list[str], ckpt: Path, input_shape: list[int], atol: float, trace: bool = False,
                 **overrides) -> None:
    """The zoo's ``ckpt_export`` of ``ckpt`` (scripted, or traced at ``input_shape``) gives the outputs of
    ``network_def`` with the checkpoint loaded strictly."""
    from monai.bundle import ckpt_export

    config_dir = Path(bundle) / "configs"
    files = [str(config_dir / c) for c in configs]
    ts = Path(ckpt).with_suffix(".ts")
    ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(ckpt), meta_file=str(config_dir / "metadata.json"),
                config_file=files if len(files) > 1 else files[0], bundle_root=str(bundle),
                **({"use_trace": True, "input_shape": input_shape} if trace else {}), **overrides)
    net = workflow(configs, workflow_type="infer", bundle=bundle, **overrides).parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(ckpt, weights_only=True))
    x = torch.rand(*input_shape)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(ts))(x), net.eval()(x), atol=atol)


def assert_same_image_steps(train: dict, inference: dict) -> None:
    """A 3D bundle's ``inference.json`` preprocesses images as its ``train.json`` does: the same named pieces
    (``loading``, ``intensity``, ``foreground_crop``) joined the same way, step by step equal but for the label
    (``keys``, interpolation ``mode``, the label-only steps)."""
    assert inference["preprocessing"]["transforms"] == train["preprocessing"]
    assert inference["intensity"] == train["intensity"]
    assert inference["foreground_select_fn"] == train["foreground_select_fn"]
    image_only = ("keys", "mode")
    for piece in ("loading", "foreground_crop"):
        train_steps = [t for t in train[piece] if t["_target_"] not in ("LabelFilterd", "AsDiscreted")]
        assert [t["_target_"] for t in inference[piece]] == [t["_target_"] for t in train_steps], piece
        for step, same in zip(inference[piece], train_steps):
            assert {k: v for k, v in step.items() if k not in image_only} == {k: v for k, v in same.items() if k not in image_only}


def named_steps(config: dict, steps: list) -> list:
    """``steps`` of a raw config with each ``"@name"`` entry (a named setting such as ``intensity``) replaced by
    ``config[name]``."""
    return [config[s[1:]] if isinstance(s, str) and s.startswith("@") else s for s in steps]
