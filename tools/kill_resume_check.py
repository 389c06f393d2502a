"""kill -9 a bundle stage at random moments, resume it until it finishes, and compare with an uninterrupted run.

For each stage (stage 0 ``pretrain``, ``tpp``, ``train``) of a 2D bundle, on small synthetic data:

1. one uninterrupted reference run (``--resume False``) into ``<workdir>/reference``;
2. ``trials`` interrupted runs, each in a fresh folder: ``python -m monai.bundle run`` is started,
   SIGKILLed after a random (seeded) delay, then restarted with ``--resume True`` (and, half of the
   time, killed again) until it exits normally. After every kill, every ``.pt`` / ``.safetensors``
   file in ``models/`` and in the stage's log folder must load (nothing half-written under a final
   name); after the last run no partial temporary file may remain;
3. the finished run's outputs (best model / backbone / target parameters, the last resumable
   checkpoint, the best metric) are compared tensor by tensor with the reference.

Example::

    OMP_NUM_THREADS=1 python tools/kill_resume_check.py --workdir /tmp/kill --trials 10 --epochs 3

Every process runs with one thread (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.bundle_command import bundle_command  # noqa: E402
from tpp_components.handlers.checkpoints import latest_checkpoint  # noqa: E402
from tpp_components.peft import read_manifest  # noqa: E402

DEFAULT_BUNDLE = ROOT / "bundles" / "breast_us_classification"
STAGES = ("pretrain", "tpp", "train")
CONFIGS = {"pretrain": ["train.json", "pretrain.json"], "tpp": ["train.json", "tpp.json"], "train": ["train.json"]}
#: a switch to a network with stage 0, merged after train.json where the bundle has it (breast_us_classification's
#: default is the pretrained LiteMedSAM encoder, which has no stage 0)
STAGE0_SWITCH = "vit.json"


def stage_configs(bundle: Path, stage: str) -> list[str]:
    """``CONFIGS[stage]`` with :data:`STAGE0_SWITCH` after ``train.json`` when ``bundle`` has it."""
    first, *rest = CONFIGS[stage]
    return [first, *([STAGE0_SWITCH] if (bundle / "configs" / STAGE0_SWITCH).is_file() else []), *rest]
#: small batches: several iterations per epoch, so that kills also land mid-epoch
BATCH_SIZE = 8
#: what each stage writes into ``models/`` (compared with the reference)
PRODUCTS = {
    "pretrain": ["backbone.pt", "pretext_decoder.pt"],
    "tpp": ["tpp_target_parameters.safetensors"],
    "train": ["model.pt", "target_parameters.safetensors"],
}


def make_data(workdir: Path, seed: int = 0, num_per_class: int = 10) -> str:
    """Synthetic three-class images and their datalist (the breast-ultrasound classification layout)."""
    from tools.make_demo_data import make_demo_dataset
    from tools.prepare_busi import main as prepare_busi

    data = make_demo_dataset(workdir / "data", num_per_class=num_per_class, image_size=64, seed=seed)
    return str(prepare_busi(data_dir=str(data), output=str(workdir / "datalist.json"), seed=seed))


def stage_overrides(stage: str, run_dir: Path, reference: Path, datalist: str, epochs: int) -> dict:
    """Overrides of one stage writing into ``run_dir``; later stages read the reference's earlier products."""
    overrides = {"datalist": datalist, "ckpt_dir": str(run_dir / "models"), "output_dir": str(run_dir / "logs" / stage),
                 "num_epochs": epochs, "train#dataloader#batch_size": BATCH_SIZE}
    if stage in ("tpp", "train"):
        overrides.update(backbone_weights=str(reference / "models" / "backbone.pt"),
                         pretext_decoder=str(reference / "models" / "pretext_decoder.pt"))
    if stage == "train":
        overrides.update(init="tpp", tpp_target_parameters=str(reference / "models" / "tpp_target_parameters.safetensors"))
    return overrides


def command(bundle: Path, stage: str, overrides: dict, resume: bool) -> list[str]:
    return bundle_command(bundle, stage_configs(bundle, stage), {**overrides, "resume": resume})


def environment() -> dict:
    """One thread per process; the repository importable."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


#: the trainer's first log line: training (not process start-up) begins
TRAINING_STARTS = "Engine run resuming from iteration"


def launch(cmd: list[str], log: Path, kill: tuple[str, float] | None) -> tuple[int | None, float, float | None]:
    """Run ``cmd``; SIGKILL its process group as ``kill`` says (None: let it finish).

    Args:
        kill: ``("startup", s)``: ``s`` seconds after the start; ``("training", s)``: ``s`` seconds
            after the trainer's first log line (a process that has not got there by then is killed
            when it does).

    Returns:
        the exit status (None when killed), the seconds it ran, and when training began (seconds
        after the start; None if it never did).
    """
    start = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.is_file() else 0
    began = None
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT,
                                start_new_session=True)
        while proc.poll() is None:
            now = time.perf_counter() - start
            if began is None:
                with open(log, "rb") as f:
                    f.seek(offset)
                    if TRAINING_STARTS.encode() in f.read():
                        began = now
            due = kill is not None and (
                (kill[0] == "startup" and now >= kill[1]) or (kill[0] == "training" and began is not None and now >= began + kill[1]))
            if due:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return None, time.perf_counter() - start, began
            time.sleep(0.05)
    return proc.returncode, time.perf_counter() - start, began


def check_files(*folders: Path) -> list[str]:
    """Every checkpoint under a final name loads (weights only) and every target-parameter file reads;
    returns the names of partial temporary files present (allowed right after a kill only)."""
    temporaries = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.name.startswith(".") and path.name.endswith(".tmp"):
                temporaries.append(path.name)
            elif path.suffix == ".pt":
                torch.load(path, map_location="cpu", weights_only=True)  # raises on a truncated file
            elif path.suffix == ".safetensors":
                load_file(str(path))
                read_manifest(path)  # the manifest in the header: raises on a truncated or foreign file
    return temporaries


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint or safetensors file, flattened to dotted names."""
    obj = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    out: dict[str, torch.Tensor] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}.{i}", v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[prefix] = torch.tensor(float(value))

    walk("", obj)
    return out


def compare(stage: str, run_dir: Path, reference: Path) -> float:
    """Largest absolute difference over every tensor of the stage's products and last checkpoint."""
    pairs = [(run_dir / "models" / name, reference / "models" / name) for name in PRODUCTS[stage]]
    ours = latest_checkpoint(run_dir / "logs" / stage, stage)
    theirs = latest_checkpoint(reference / "logs" / stage, stage)
    if ours is None or theirs is None or Path(ours).name != Path(theirs).name:
        raise AssertionError(f"{stage}: last checkpoints differ: {ours} vs {theirs}")
    pairs.append((Path(ours), Path(theirs)))
    worst = 0.0
    for a, b in pairs:
        ta, tb = _tensors(a), _tensors(b)
        if set(ta) != set(tb):
            raise AssertionError(f"{a.name}: keys differ {sorted(set(ta) ^ set(tb))[:5]}")
        for key in ta:
            if ta[key].dtype == torch.uint8 or not ta[key].is_floating_point():
                if not torch.equal(ta[key], tb[key]):
                    worst = max(worst, float("inf"))
                continue
            worst = max(worst, float((ta[key].double() - tb[key].double()).abs().max()) if ta[key].numel() else 0.0)
    return worst


def interrupted_run(bundle: Path, stage: str, run_dir: Path, reference: Path, datalist: str, epochs: int,
                    timing: tuple[float, float], rng: random.Random, max_attempts: int = 12) -> dict:
    """Start, kill, resume ... until the stage finishes; check the files after every kill.

    Launches are killed until one kill has happened, later ones half of the time; a kill lands during start-up
    one time in five, otherwise at a uniformly random moment of the reference run's training
    (``timing``: its start-up and training seconds).
    """
    overrides = stage_overrides(stage, run_dir, reference, datalist, epochs)
    log = run_dir / f"{stage}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    kills, temporaries, delays = 0, 0, []
    for attempt in range(max_attempts):
        kill = None
        if kills == 0 or rng.random() < 0.5:
            kill = ("startup", rng.uniform(0, timing[0])) if rng.random() < 0.2 else ("training", rng.uniform(0, timing[1]))
        code, _, _ = launch(command(bundle, stage, overrides, resume=kills > 0), log, kill)
        if code is None:
            kills += 1
            delays.append(f"{kill[0]}+{kill[1]:.2f}s")
            temporaries += len(check_files(run_dir / "models", run_dir / "logs" / stage))
            continue
        if code != 0:
            tail = "".join(log.read_text().splitlines(keepends=True)[-25:])
            raise RuntimeError(f"{stage} exited with {code} after {kills} kills, see {log}:\n{tail}")
        if kills == 0:  # finished before the planned kill: start the trial again, from nothing
            shutil.rmtree(run_dir / "models", ignore_errors=True)
            shutil.rmtree(run_dir / "logs", ignore_errors=True)
            continue
        left = check_files(run_dir / "models", run_dir / "logs" / stage)
        if left:
            raise AssertionError(f"{stage}: partial files left after the finished run: {left}")
        return {"kills": kills, "attempts": attempt + 1, "delays": delays, "temporaries_after_kills": temporaries,
                "max_abs_diff": compare(stage, run_dir, reference)}
    raise RuntimeError(f"{stage} did not finish in {max_attempts} attempts (see {log})")


def main(workdir: str = "/tmp/kill_resume_check", bundle: str = str(DEFAULT_BUNDLE), trials: int = 10, epochs: int = 3,
         seed: int = 0, stages: str = ",".join(STAGES)) -> dict:
    """Run the check and print (and return, and write to ``<workdir>/results.json``) the numbers.

    Args:
        workdir: scratch folder (emptied first).
        bundle: the bundle folder (its configs must have ``pretrain.json`` and ``tpp.json``).
        trials: interrupted runs per stage.
        epochs: epochs of every run.
        seed: seed of the kill delays and of the synthetic data.
        stages: comma-separated subset of ``pretrain,tpp,train`` (earlier stages' reference products
            are always produced).
    """
    work, bundle_path = Path(workdir).resolve(), Path(bundle).resolve()
    wanted = [s.strip() for s in str(stages).split(",") if s.strip()]
    if set(wanted) - set(STAGES):
        raise ValueError(f"stages: unknown {sorted(set(wanted) - set(STAGES))}; expected some of {list(STAGES)}.")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    datalist = make_data(work, seed)
    reference, rng, results = work / "reference", random.Random(seed), {}
    for stage in STAGES[: max(STAGES.index(s) for s in wanted) + 1]:
        log = reference / f"{stage}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        code, duration, began = launch(command(bundle_path, stage, stage_overrides(stage, reference, reference, datalist, epochs), False),
                                       log, None)
        if code != 0 or began is None:
            raise RuntimeError(f"reference {stage} failed, see {log}")
        if stage not in wanted:
            continue
        trials_out = [interrupted_run(bundle_path, stage, work / stage / f"trial{i}", reference, datalist, epochs,
                                     (began, duration - began), rng)
                      for i in range(trials)]
        results[stage] = {
            "reference_seconds": round(duration, 1), "reference_training_seconds": round(duration - began, 1), "finished": f"{len(trials_out)}/{trials}",
            "kills": sum(t["kills"] for t in trials_out), "max_abs_diff": max(t["max_abs_diff"] for t in trials_out),
            "temporaries_after_kills": sum(t["temporaries_after_kills"] for t in trials_out), "trials": trials_out,
        }
        print(f"{stage}: {results[stage]['finished']} finished, {results[stage]['kills']} kills, "
              f"max |diff| vs uninterrupted {results[stage]['max_abs_diff']:.3g}, reference {duration:.1f} s", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=4))
    return results


if __name__ == "__main__":
    import fire

    fire.Fire(main)
