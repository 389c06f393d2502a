"""Run bundle configs in-process through MONAI's ``ConfigWorkflow``, as ``monai.bundle run`` does."""

from __future__ import annotations

from pathlib import Path

from monai.bundle import ConfigWorkflow

from conftest import ROOT

BUNDLE = ROOT / "bundles" / "breast_us_classification"
CONFIGS = BUNDLE / "configs"

#: the stages as ``monai.bundle run`` merges them: train.json is complete, the others override it
TRAIN = ["train.json"]
PRETRAIN = ["train.json", "pretrain.json"]
TPP = ["train.json", "tpp.json"]
EVALUATE = ["train.json", "evaluate.json"]


def workflow(configs: list[str], workflow_type: str = "train", **overrides) -> ConfigWorkflow:
    """An initialised workflow of the bundle's ``configs`` (merged left to right) with ``overrides``."""
    files = [str(CONFIGS / c) for c in configs]
    wf = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(BUNDLE),
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


def stage_overrides(tmp: Path, datalist: str, **extra) -> dict:
    """Small, fast settings shared by the end-to-end tests."""
    return {"datalist": datalist, "ckpt_dir": str(tmp / "models"), "num_epochs": 1, **extra}
