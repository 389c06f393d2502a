"""Compare PEFT fine-tuning started from TPP with the method's standard initialisation.

Every stage is a real ``python -m monai.bundle run`` of the bundle's configs; arms differ in
exactly one config value (``init``). Results (test accuracy, balanced accuracy, macro AUC per
arm and seed, mean +- std, paired TPP - standard differences, wall time of every stage) are
written to ``<workdir>/results.json`` and ``<workdir>/results.md``.

Example::

    python tools/tpp_experiment.py --datalist busi_datalist.json --workdir runs/busi \
        --methods "['lora','adapter']" --seeds "[0,1,2]"
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import fire

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "bundles" / "breast_us_classification"
METRICS = ("accuracy", "balanced_accuracy", "macro_auc")

#: PEFT configurations compared by default (one config value each)
METHODS = {
    "lora": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention"},
    "adapter": {"method": "adapter", "bottleneck": 16, "scale": 0.1},
    "dora": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention", "use_dora": True},
    "ssf": {"method": "ssf"},
    "bitfit": {"method": "bitfit"},
    "prompt": {"method": "prompt", "num_tokens": 8, "deep": True},
}


def bundle_run(bundle: Path, configs: list[str], overrides: dict, log: Path, threads: int) -> float:
    """Run one ``monai.bundle run`` and return its wall time in seconds; raise with the log's tail on failure."""
    files = [str(bundle / "configs" / c) for c in configs]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(files) if len(files) > 1 else files[0]]
    cmd += ["--bundle_root", str(bundle), "--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        cmd += [f"--{key}", value if isinstance(value, str) else repr(value)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - start
    if code:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise RuntimeError(f"stage failed ({' '.join(configs)}), see {log}:\n{tail}")
    return elapsed


def _stats(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {std:.3f}"


def summarise(runs: list[dict]) -> tuple[dict, str]:
    """Mean +- std per arm and paired TPP - standard differences per method."""
    arms: dict[str, list[dict]] = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)
    table = ["| arm | n | accuracy | balanced accuracy | macro AUC | train s/run |", "|---|---|---|---|---|---|"]
    summary = {}
    for arm, rs in arms.items():
        summary[arm] = {m: [r["test"][m] for r in rs] for m in METRICS}
        cells = " | ".join(_stats(summary[arm][m]) for m in METRICS)
        table.append(f"| {arm} | {len(rs)} | {cells} | {statistics.fmean(r['seconds']['train'] for r in rs):.0f} |")
    majority = runs[0]["test"]["majority_rate"]
    table.append(f"\nmajority-class rate on the test split: {majority:.3f}\n")
    table.append("| method | paired gain TPP - standard, per seed (accuracy / balanced acc / macro AUC, points) |")
    table.append("|---|---|")
    for arm in arms:
        if not arm.endswith("/tpp"):
            continue
        method = arm.split("/")[0]
        std_runs = {r["seed"]: r for r in arms.get(f"{method}/standard", [])}
        gains = []
        for r in arms[arm]:
            if r["seed"] in std_runs:
                s = std_runs[r["seed"]]
                gains.append("/".join(f"{100 * (r['test'][m] - s['test'][m]):+.1f}" for m in METRICS))
        table.append(f"| {method} | {', '.join(gains)} |")
    return summary, "\n".join(table)


def run(
    datalist: str,
    workdir: str = "runs/experiment",
    methods: list[str] | tuple[str, ...] = ("lora", "adapter"),
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    backbone: str | None = None,
    pretrain_datalist: str | None = None,
    pretrain_epochs: int = 50,
    tpp_epochs: int = 20,
    train_epochs: int = 30,
    linear_probe: bool = True,
    threads: int = 2,
    bundle: str = str(DEFAULT_BUNDLE),
) -> dict:
    """Run stage 0 (unless ``backbone`` is given), then TPP and fine-tuning for every method, seed and init.

    Args:
        datalist: labelled datalist (training / validation / test) of the downstream task.
        workdir: where every run writes its models, logs and reports.
        methods: keys of :data:`METHODS`.
        seeds: one TPP run and two fine-tuning runs (tpp, standard) per method and seed.
        backbone: an existing stage-0 ``backbone.pt``; otherwise stage 0 runs on ``pretrain_datalist``.
        pretrain_datalist: unlabeled images for stage 0 (defaults to ``datalist``'s training split).
        pretrain_epochs / tpp_epochs / train_epochs: budgets, identical for every arm.
        linear_probe: also train the head alone on the frozen backbone (one run per seed).
        threads: torch threads per run (runs are sequential).
        bundle: bundle folder.
    """
    work, bundle_path = Path(workdir).resolve(), Path(bundle).resolve()
    datalist = str(Path(datalist).resolve())
    timings: dict[str, float] = {}
    if backbone is None:
        backbone = str(work / "stage0" / "backbone.pt")
        timings["pretrain"] = bundle_run(
            bundle_path, ["pretrain.json"],
            {"datalist": str(Path(pretrain_datalist).resolve()) if pretrain_datalist else datalist,
             "ckpt_dir": str(work / "stage0"), "output_dir": str(work / "stage0" / "logs"), "num_epochs": pretrain_epochs},
            work / "stage0" / "pretrain.log", threads,
        )
        print(f"stage 0 (pretrain.json): {timings['pretrain']:.0f} s", flush=True)
    backbone = str(Path(backbone).resolve())
    runs = []
    arms = [(m, i) for m in methods for i in ("tpp", "standard")] + ([("linear_probe", "standard")] if linear_probe else [])
    for seed in seeds:
        for method in methods:
            tpp_dir = work / f"{method}_seed{seed}" / "tpp"
            t = bundle_run(bundle_path, ["tpp.json"], {
                "datalist": datalist, "peft": METHODS[method], "seed": seed, "backbone_weights": backbone,
                "ckpt_dir": str(tpp_dir), "output_dir": str(tpp_dir / "logs"), "num_epochs": tpp_epochs,
            }, tpp_dir / "tpp.log", threads)
            timings.setdefault("tpp", 0.0)
            timings["tpp"] += t
            print(f"seed {seed} {method}: TPP {t:.0f} s", flush=True)
        for method, init in arms:
            run_dir = work / f"{method}_seed{seed}" / init
            peft = "$None" if method == "linear_probe" else METHODS[method]
            common = {"datalist": datalist, "peft": peft, "seed": seed, "ckpt_dir": str(run_dir)}
            seconds = {"train": bundle_run(bundle_path, ["train.json"], {
                **common, "init": init, "backbone_weights": backbone, "num_epochs": train_epochs,
                "tpp_target_parameters": str(work / f"{method}_seed{seed}" / "tpp" / "tpp_target_parameters.safetensors"),
                "output_dir": str(run_dir / "logs"),
            }, run_dir / "train.log", threads)}
            seconds["evaluate"] = bundle_run(bundle_path, ["train.json", "evaluate.json"], {
                **common, "output_dir": str(run_dir / "eval"),
            }, run_dir / "evaluate.log", threads)
            report = json.loads((run_dir / "eval" / "classification_report.json").read_text())
            runs.append({"arm": f"{method}/{init}", "method": method, "init": init, "seed": seed,
                         "test": report, "seconds": seconds})
            print(f"seed {seed} {method}/{init}: " + " ".join(f"{m} {report[m]:.3f}" for m in METRICS)
                  + f" (train {seconds['train']:.0f} s)", flush=True)
    summary, table = summarise(runs)
    # Linux reports ru_maxrss in KiB: the largest resident set of any finished stage
    timings["peak_rss_mib_any_stage"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {"runs": runs, "summary": summary, "timings": timings, "settings": {
        "datalist": datalist, "methods": list(methods), "seeds": list(seeds), "backbone": backbone,
        "pretrain_epochs": pretrain_epochs, "tpp_epochs": tpp_epochs, "train_epochs": train_epochs}}
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(result, indent=4))
    (work / "results.md").write_text(table + "\n")
    print(table)
    print(f"peak memory of any stage: {timings['peak_rss_mib_any_stage']:.0f} MiB")
    return result


if __name__ == "__main__":
    fire.Fire(lambda **kw: run(**kw) and None)
