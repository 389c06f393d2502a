"""Compare PEFT fine-tuning started from TPP with the method's standard initialisation.

Every stage is a real ``python -m monai.bundle run`` of the bundle's configs (``train.json``
merged with the stage's override file); a method's two arms differ in exactly one config value
(``init``). The reference arms run first: the linear probe (frozen backbone, non-affine batch
norm + linear head) says whether the backbone is worth adapting at all, and full fine-tuning
bounds what the task allows. When the linear probe does not clear the backbone gate
(:func:`backbone_gate`), the report says that the TPP comparison is not evidence.

Results (test accuracy, balanced accuracy and macro AUC per arm and seed, mean +- std, paired
TPP - standard differences with a 95 % t-interval, stage-0 and TPP pretext curves, wall time and
peak memory) go to ``<workdir>/results.json`` and ``<workdir>/results.md``.

Example::

    python tools/tpp_experiment.py --datalist busi.json --workdir runs/busi --switch vit.json --stage0 True \
        --backbone runs/stage0/backbone.pt --methods "['lora','adapter']" --seeds "[0,1,2,3,4]" --jobs 2
"""

from __future__ import annotations

import json
import resource
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root

from tools.study.curves import scalar_curve  # noqa: E402
from tools.study.runner import bundle_run  # noqa: E402
from tools.study.experiment_report import METRICS, summarise  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = ROOT / "bundles" / "breast_us_classification"

#: PEFT configurations compared by default (one config value each)
METHODS = {
    "lora": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention"},
    "lora_attention_mlp": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention_mlp"},
    "lora_late": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "late_attention_mlp"},
    "adapter": {"method": "adapter", "bottleneck": 16, "scale": 0.1},
    "dora": {"method": "lora", "r": 8, "alpha": 16, "target_modules": "attention", "use_dora": True},
    "ssf": {"method": "ssf"},
    "bitfit": {"method": "bitfit"},
    "prompt": {"method": "prompt", "num_tokens": 8, "deep": True},
}

#: the reference arms: overrides of train.json (learning rates chosen per arm, stated in the report)
REFERENCE_ARMS = {
    "linear_probe": {"peft": "$None", "freeze_backbone": True, "head_norm": True, "learning_rate": 0.005,
                     "optimizer#weight_decay": 0.0},
    "full_finetune": {"peft": "$None", "freeze_backbone": False, "learning_rate": 0.0003, "optimizer#weight_decay": 0.05},
}

def run_dir_of(work: Path, method: str, seed: int, init: str) -> Path:
    """Folder of one run: ``<work>/<method>_seed<seed>/<init>`` (a TPP run's ``init`` is ``stage1_<init>``)."""
    return work / f"{method}_seed{seed}" / init


def validation_curve(run_dir: Path) -> list[tuple[int, float]]:
    """``(epoch, validation macro AUC)`` of a fine-tuning run, from its TensorBoard events."""
    return pretext_curve(run_dir / "logs", tag="val_auc")


def pretext_curve(log_dir: Path, tag: str = "val_pretext_loss") -> list[tuple[int, float]]:
    """``(epoch, held-out pretext loss)`` of a pretext stage's TensorBoard events (:func:`tools.study.curves.scalar_curve`)."""
    return scalar_curve(log_dir, tag)



def run(
    datalist: str,
    workdir: str = "runs/experiment",
    methods: list[str] | tuple[str, ...] = ("lora", "adapter"),
    seeds: list[int] | tuple[int, ...] = (0, 1, 2),
    backbone: str | None = None,
    pretrain_datalist: str | None = None,
    pretrain_epochs: int = 100,
    tpp_epochs: int = 20,
    train_epochs: int = 20,
    reference_arms: list[str] | tuple[str, ...] = ("linear_probe", "full_finetune"),
    reference_seeds: dict[str, list[int]] | None = None,
    fresh_decoder_seeds: list[int] | tuple[int, ...] = (),
    fresh_decoder_methods: list[str] | tuple[str, ...] = ("lora",),
    jobs: int = 1,
    threads: int = 2,
    bundle: str = str(DEFAULT_BUNDLE),
    switch: str | None = None,
    stage0: bool = False,
    overrides: dict | None = None,
    resume: bool = False,
    summarise_only: bool = False,
) -> dict:
    """Run stage 0 (for a network without pretrained weights), the reference arms, then TPP and fine-tuning per
    method and seed.

    Args:
        datalist: labelled datalist (training / validation / test) of the downstream task.
        workdir: where every run writes its models, logs and reports.
        methods: keys of :data:`METHODS`.
        seeds: one TPP run and two fine-tuning runs (tpp, standard) per method and seed.
        backbone: an existing stage-0 ``backbone.pt`` (its ``pretext_decoder.pt`` beside it is
            reused by TPP), instead of running stage 0.
        pretrain_datalist: unlabeled images for stage 0 (defaults to ``datalist``'s training split).
        pretrain_epochs / tpp_epochs / train_epochs: budgets, identical for every arm.
        reference_arms: keys of :data:`REFERENCE_ARMS`, run first (one run per seed).
        reference_seeds: seeds of a reference arm when not all of ``seeds`` (``{"full_finetune": [0]}``
            where a run is expensive); the report's per-arm ``n`` says how many ran.
        fresh_decoder_seeds: seeds that also run TPP from a fresh decoder (``reuse_decoder=False``)
            and fine-tune from it (arm ``<method>/tpp_fresh_decoder``).
        fresh_decoder_methods: the methods (among ``methods``) that get the fresh-decoder arm.
        jobs: runs in parallel (each with ``threads`` torch threads: keep jobs x threads <= cores).
        threads: torch threads per run.
        bundle: bundle folder.
        switch: a backbone switch of the bundle (e.g. ``"vit.json"``), merged after ``train.json`` in every stage.
        stage0: the network has no pretrained weights (breast_us_classification's ``vit.json``): stage 0 runs on
            ``pretrain_datalist`` unless ``backbone`` is given, and TPP reuses its decoder. Otherwise (the bundles'
            default pretrained encoders) there is no stage 0, the config supplies the weights, and TPP starts from
            a fresh decoder.
        overrides: config values (``{"head_norm": True}``) given to every stage of every arm, after
            the switch and before the arm's own values; recorded in the report's settings.
        resume: reuse the TPP and fine-tuning runs of ``workdir`` whose logs say they finished
            (an interrupted or extended experiment); everything else runs.
        summarise_only: rebuild ``results.md`` from an earlier run's ``results.json`` (or, if it
            was interrupted, from its finished runs) and logs, without running anything.
    """
    if summarise_only:
        return resummarise(workdir)
    work, bundle_path = Path(workdir).resolve(), Path(bundle).resolve()
    datalist = str(Path(datalist).resolve())
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(reference_arms) - set(REFERENCE_ARMS))
    if unknown:
        raise ValueError(f"unknown methods / reference arms {unknown}; expected {sorted(METHODS)} / {sorted(REFERENCE_ARMS)}.")
    num_classes = len(json.loads(Path(datalist).read_text()).get("labels") or {}) or 3
    timings: dict[str, float] = {}
    base = ["train.json"] + ([switch] if switch else [])
    if not stage0 and backbone is not None:
        raise ValueError(f"backbone={backbone!r} is a stage-0 checkpoint: give stage0=True (and the switch of a network "
                         "with stage 0, e.g. vit.json); a pretrained network's config supplies its own weights.")
    if not stage0:
        common, decoder = {"datalist": datalist}, None
    else:
        if backbone is None:
            backbone = str(work / "stage0" / "backbone.pt")
            timings["pretrain"] = bundle_run(
                bundle_path, base + ["pretrain.json"],
                {"datalist": str(Path(pretrain_datalist).resolve()) if pretrain_datalist else datalist,
                 "ckpt_dir": str(work / "stage0"), "output_dir": str(work / "stage0" / "logs"), "num_epochs": pretrain_epochs},
                work / "stage0" / "pretrain.log", threads * jobs,
            )
            print(f"stage 0: {timings['pretrain']:.0f} s", flush=True)
        backbone_path = Path(backbone).resolve()
        decoder = backbone_path.parent / "pretext_decoder.pt"
        common = {"datalist": datalist, "backbone_weights": str(backbone_path)}
    common = {**(overrides or {}), **common}

    def tpp_job(method: str, seed: int, fresh: bool) -> tuple[str, float]:
        tpp_dir = run_dir_of(work, method, seed, "stage1_tpp_fresh_decoder" if fresh else "stage1_tpp")
        if resume and _finished(tpp_dir / "tpp.log", "PretextTrainer"):
            print(f"seed {seed} {method}: TPP reused from {tpp_dir}", flush=True)
            return str(tpp_dir), _log_seconds(tpp_dir / "tpp.log")
        overrides = {**common, "peft": METHODS[method], "seed": seed, "ckpt_dir": str(tpp_dir),
                     "output_dir": str(tpp_dir / "logs"), "num_epochs": tpp_epochs}
        if decoder is not None:
            overrides.update(pretext_decoder=str(decoder), reuse_decoder=not fresh)
        t = bundle_run(bundle_path, base + ["tpp.json"], overrides, tpp_dir / "tpp.log", threads)
        print(f"seed {seed} {method}: TPP{' (fresh decoder)' if fresh else ''} {t:.0f} s", flush=True)
        return str(tpp_dir), t

    def train_job(method: str, init: str, seed: int) -> dict:
        run_dir = run_dir_of(work, method, seed, init)
        arm = REFERENCE_ARMS[method] if method in REFERENCE_ARMS else {"peft": METHODS[method]}
        overrides = {**common, **arm, "seed": seed, "ckpt_dir": str(run_dir)}
        if method in METHODS and init != "standard":
            overrides["tpp_target_parameters"] = str(run_dir_of(work, method, seed, f"stage1_{init}") / "tpp_target_parameters.safetensors")
        report_path = run_dir / "eval" / "classification_report.json"
        if resume and report_path.is_file() and _finished(run_dir / "train.log", "SupervisedTrainer"):
            print(f"seed {seed} {method}/{init}: reused from {run_dir}", flush=True)
            return {"arm": f"{method}/{init}", "method": method, "init": init, "seed": seed,
                    "test": json.loads(report_path.read_text()), "seconds": {"train": _log_seconds(run_dir / "train.log")},
                    "val_curve": validation_curve(run_dir)}
        overrides["init"] = "tpp" if init != "standard" else "standard"  # evaluation reads the model of this init
        seconds = {"train": bundle_run(bundle_path, base, {
            **overrides, "num_epochs": train_epochs,
            "output_dir": str(run_dir / "logs")}, run_dir / "train.log", threads)}
        seconds["evaluate"] = bundle_run(bundle_path, base + ["evaluate.json"], {
            **{k: v for k, v in overrides.items() if k not in ("backbone_weights",)}, "output_dir": str(run_dir / "eval"),
        }, run_dir / "evaluate.log", threads)
        report = json.loads((run_dir / "eval" / "classification_report.json").read_text())
        print(f"seed {seed} {method}/{init}: " + " ".join(f"{m} {report[m]:.3f}" for m in METRICS)
              + f" (train {seconds['train']:.0f} s)", flush=True)
        return {"arm": f"{method}/{init}", "method": method, "init": init, "seed": seed, "test": report, "seconds": seconds,
                "val_curve": validation_curve(run_dir)}

    fresh_methods = [m for m in methods if m in fresh_decoder_methods]
    tpp_jobs = [(m, s, False) for s in seeds for m in methods] + [(m, s, True) for s in fresh_decoder_seeds for m in fresh_methods]
    arm_seeds = {a: list((reference_seeds or {}).get(a, seeds)) for a in reference_arms}
    train_jobs = [(a, "standard", s) for s in seeds for a in reference_arms if s in arm_seeds[a]]
    train_jobs += [(m, i, s) for s in seeds for m in methods for i in ("standard", "tpp")]
    train_jobs += [(m, "tpp_fresh_decoder", s) for s in fresh_decoder_seeds for m in fresh_methods]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        tpp_futures = [pool.submit(tpp_job, *j) for j in tpp_jobs]
        timings["tpp"] = sum(f.result()[1] for f in tpp_futures)
        runs = [f.result() for f in [pool.submit(train_job, *j) for j in train_jobs]]
    curves = {"stage 0": pretext_curve(backbone_path.parent / "logs")} if stage0 else {}
    for m in methods:
        if seeds:
            curves[f"TPP {m} seed {seeds[0]}"] = pretext_curve(run_dir_of(work, m, seeds[0], "stage1_tpp") / "logs")
        if fresh_decoder_seeds and m in fresh_methods:
            s = fresh_decoder_seeds[0]
            curves[f"TPP {m} seed {s}, fresh decoder"] = pretext_curve(run_dir_of(work, m, s, "stage1_tpp_fresh_decoder") / "logs")
    summary, table = summarise(runs, num_classes, curves, tuple(REFERENCE_ARMS))
    # Linux reports ru_maxrss in KiB: the largest resident set of any finished stage
    timings["peak_rss_mib_any_stage"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    settings = {"datalist": datalist, "methods": list(methods), "seeds": list(seeds),
                "switch": switch, "backbone": str(backbone_path) if stage0 else "pretrained (from the config)",
                "overrides": overrides or {},
                "pretrain_epochs": pretrain_epochs, "tpp_epochs": tpp_epochs, "train_epochs": train_epochs,
                "reference_arms": {a: REFERENCE_ARMS[a] for a in reference_arms},
                "peft": {m: METHODS[m] for m in methods}, "jobs": jobs, "threads": threads}
    result = {"runs": runs, "summary": summary, "curves": curves, "timings": timings, "settings": settings}
    work.mkdir(parents=True, exist_ok=True)
    (work / "results.json").write_text(json.dumps(result, indent=4))
    (work / "results.md").write_text(table + "\n")
    print(table)
    print(f"peak memory of any stage: {timings['peak_rss_mib_any_stage']:.0f} MiB")
    return result


def _log_seconds(log: Path) -> float:
    """Seconds between the first and last timestamped line of a stage log (NaN without two)."""
    import datetime
    import re

    stamps = re.findall(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", log.read_text(), re.M) if log.is_file() else []
    if len(stamps) < 2:
        return float("nan")
    first, last = (datetime.datetime.fromisoformat(t) for t in (stamps[0], stamps[-1]))
    return (last - first).total_seconds()


def _finished(log: Path, engine: str) -> bool:
    """Whether a stage log says its ``engine`` (``SupervisedTrainer``, ``PretextTrainer``) ran to the end."""
    return log.is_file() and f"{engine} - INFO - Engine run finished" in log.read_text()


def _finished_runs(work: Path) -> list[dict]:
    """Runs of an interrupted experiment: every ``<arm>_seed<s>/<init>/eval/classification_report.json``."""
    runs = []
    for report in sorted(work.glob("*_seed*/*/eval/classification_report.json")):
        init, arm_dir = report.parents[1].name, report.parents[2].name
        method, _, seed = arm_dir.rpartition("_seed")
        runs.append({"arm": f"{method}/{init}", "method": method, "init": init, "seed": int(seed),
                     "test": json.loads(report.read_text()),
                     "seconds": {"train": _log_seconds(report.parents[1] / "train.log")}})
    return runs


def resummarise(workdir: str) -> dict:
    """Rebuild the report of ``workdir``: from its ``results.json``, or, when the experiment was
    interrupted, from the runs that finished; each run's validation curve is read from its logs."""
    work = Path(workdir).resolve()
    path = work / "results.json"
    result = json.loads(path.read_text()) if path.is_file() else {"runs": _finished_runs(work), "interrupted": True}
    if not result["runs"]:
        raise FileNotFoundError(f"no finished run under '{work}' (no results.json, no */*/eval/classification_report.json).")
    for r in result["runs"]:
        r["val_curve"] = validation_curve(run_dir_of(work, r["method"], r["seed"], r["init"]))
    num_classes = len(result["runs"][0]["test"].get("per_class", {})) or 3
    result["summary"], table = summarise(result["runs"], num_classes, result.get("curves"), tuple(REFERENCE_ARMS))
    path.write_text(json.dumps(result, indent=4))
    (work / "results.md").write_text(table + "\n")
    print(table)
    return result


if __name__ == "__main__":
    fire.Fire(lambda **kw: run(**kw) and None)
