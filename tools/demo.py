"""The main job on an embedded default: the whole TPP pipeline of the breast-ultrasound bundle with its own ViT
(``configs/vit.json``, which has the stage-0 pretraining a dataset of its own shows best) on
a synthetic demo dataset the project generates itself (no download), run as a study plan
(``tools/run_study.py``; the plan is written to ``<workdir>/plan.yaml``), then the test metrics of
the linear probe (is the backbone worth adapting?) and of the same PEFT method (LoRA) started
from TPP and from its standard initialisation, with the backbone gate's verdict in the study's report.

Example::

    python tools/demo.py                     # a few minutes on 2 CPU cores
    python tools/demo.py --workdir runs/demo --seeds "[0,1]"
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import fire
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.make_demo_data import make_demo_dataset  # noqa: E402
from tools.prepare_busi import main as prepare_busi  # noqa: E402
from tools.run_study import main as run_study  # noqa: E402


#: the linear probe (frozen backbone, the head norm and a linear head), as the demo and the study plans run it
LINEAR_PROBE = {"peft": None, "freeze_backbone": True, "head_norm": True, "learning_rate": 0.005, "optimizer#weight_decay": 0.0}


def demo_plan(datalist: Path, workdir: Path, seeds: list[int], pretrain_epochs: int, tpp_epochs: int, train_epochs: int,
              threads: int) -> dict:
    """The demo as a study plan (``tools/study/plan.py``): stage 0 on the training images, the linear probe, LoRA
    from TPP and from its standard start, every stage under ``vit.json``."""
    return {
        "study": "demo", "bundle": "bundles/breast_us_classification", "switches": ["vit.json"],
        "datalist": str(datalist), "workdir": str(workdir), "seeds": list(seeds), "threads": threads,
        "stage0": {"num_epochs": pretrain_epochs},
        "methods": {"lora": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention"}},
        "pretexts": {"pixels": {"tpp_epochs": tpp_epochs}},  # MAE, from stage 0's decoder (vit.json: reuse_decoder)
        "arms": {"standard": {}, "tpp": {"pretext": "pixels"}},
        "reference_arms": {"linear_probe": LINEAR_PROBE},
        "regimes": [{"name": "all_labels", "label_fraction": 1.0, "overrides": {"num_epochs": train_epochs}}],
    }


def main(
    workdir: str = "runs/demo",
    num_per_class: int = 80,
    seeds: list[int] | tuple[int, ...] = (0,),
    pretrain_epochs: int = 40,
    tpp_epochs: int = 15,
    train_epochs: int = 15,
    threads: int = 2,
) -> None:
    """Generate the demo data, write the demo's study plan, run it (stage 0, the linear probe, TPP, fine-tuning from
    TPP and from the standard start, evaluation) and print the test metrics of its three arms."""
    start = time.perf_counter()
    work = Path(workdir).resolve()
    data = make_demo_dataset(work / "data", num_per_class=num_per_class, image_size=64, seed=0)
    datalist = prepare_busi(data_dir=str(data), output=str(work / "datalist.json"), seed=0)
    plan = work / "plan.yaml"
    plan.write_text(yaml.safe_dump(demo_plan(Path(datalist), work / "study", list(seeds), pretrain_epochs, tpp_epochs,
                                             train_epochs, threads), sort_keys=False))
    run_study(str(plan))
    arms = json.loads((work / "study" / "results.json").read_text())["summary"]["regimes"]["all_labels"]["arms"]
    print("\nDemo (synthetic data, LoRA r=8): test metrics, same budget; the LoRA arms are one config value apart")
    for arm in ("linear_probe", "lora/tpp", "lora/standard"):
        print(f"  {arm:<14} " + "  ".join(f"{m} {sum(v) / len(v):.3f}" for m, v in arms[arm].items()))
    print(f"total wall time {time.perf_counter() - start:.0f} s; the plan is {plan} (rerun it with "
          f"python tools/run_study.py {plan}); runs, models and logs in {work / 'study'}")


if __name__ == "__main__":
    fire.Fire(main)
