"""The main job on an embedded default: the whole TPP pipeline of the breast-ultrasound bundle with its own ViT
(``configs/vit.json``, which has the stage-0 pretraining a dataset of its own shows best) on
a synthetic demo dataset the project generates itself (no download), then the test metrics of
the linear probe (is the backbone worth adapting?) and of the same PEFT method (LoRA) started
from TPP and from its standard initialisation.

Example::

    python tools/demo.py                     # a few minutes on 2 CPU cores
    python tools/demo.py --workdir runs/demo --seeds "[0,1]"
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.make_demo_data import make_demo_dataset  # noqa: E402
from tools.prepare_busi import main as prepare_busi  # noqa: E402
from tools.tpp_experiment import run as run_experiment  # noqa: E402


def main(
    workdir: str = "runs/demo",
    num_per_class: int = 80,
    seeds: list[int] | tuple[int, ...] = (0,),
    pretrain_epochs: int = 40,
    tpp_epochs: int = 15,
    train_epochs: int = 15,
    threads: int = 2,
) -> None:
    """Generate the demo data, run stage 0, TPP, fine-tuning (TPP and standard init) and evaluation."""
    start = time.perf_counter()
    work = Path(workdir).resolve()
    data = make_demo_dataset(work / "data", num_per_class=num_per_class, image_size=64, seed=0)
    datalist = prepare_busi(data_dir=str(data), output=str(work / "datalist.json"), seed=0)
    result = run_experiment(
        datalist=str(datalist), workdir=str(work / "experiment"), methods=["lora"], seeds=list(seeds),
        pretrain_epochs=pretrain_epochs, tpp_epochs=tpp_epochs, train_epochs=train_epochs,
        reference_arms=["linear_probe"], threads=threads, switch="vit.json", stage0=True,
    )
    print("\nDemo (synthetic data, LoRA r=8): test metrics, same budget; the LoRA arms are one config value apart")
    for arm in ("linear_probe/standard", "lora/tpp", "lora/standard"):
        values = result["summary"]["arms"][arm]
        print(f"  {arm:<14} " + "  ".join(f"{m} {sum(v) / len(v):.3f}" for m, v in values.items()))
    print(f"total wall time {time.perf_counter() - start:.0f} s; runs, models and logs in {work}")


if __name__ == "__main__":
    fire.Fire(main)
