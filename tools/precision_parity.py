"""Does mixed precision change the result? bf16 against fp32 on a bundle, paired by seed.

Each (seed, precision) fine-tunes the bundle (``monai.bundle run`` of its configs, standard init,
``--precision``) and evaluates the selected model on the test split in the same precision; the
arms of one seed differ in that one value. Classification reports test macro AUC and balanced
accuracy (``classification_report.json``), segmentation the test mean Dice (``metrics.csv``).
Paired differences (bf16 - fp32) with a 95 % Student-t interval go to ``<workdir>/parity.md``; a
finished run is not run again, so an interrupted study resumes. Usage, from the repository root::

    python tools/precision_parity.py --bundle_root bundles/breast_us_classification \\
        --switches "['litemedsam.json']" --datalist busi.json --workdir runs/parity_busi \\
        --seeds "[0,1,2]" --overrides "{'num_epochs': 3}" --threads 2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fire

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from the repository root
from tools.study.metrics import read_test_metrics as _read  # noqa: E402
from tools.study.runner import bundle_run  # noqa: E402
from tools.study.stats import t_interval  # noqa: E402

PRECISIONS = ("fp32", "bf16")


def read_test_metrics(eval_dir: Path) -> dict[str, float]:
    """The parity metrics of an evaluation: macro AUC and balanced accuracy, or mean Dice."""
    task, metrics = _read(eval_dir)
    keep = ("macro_auc", "balanced_accuracy") if task == "classification" else ("mean_dice",)
    return {k: metrics[k] for k in keep}


def one_run(bundle: Path, switches: list[str], datalist: str, seed: int, precision: str, work: Path, overrides: dict,
            threads: int) -> dict:
    """Fine-tune and evaluate one arm; reuse the result of a finished run."""
    run_dir = work / f"seed{seed}" / precision
    result_file = run_dir / "result.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    common = {"datalist": str(Path(datalist).resolve()), "seed": seed, "precision": precision, "init": "standard",
              "ckpt_dir": str(run_dir / "models"), **overrides}
    train_s = bundle_run(bundle, ["train.json", *switches], {**common, "output_dir": str(run_dir / "train")},
                         run_dir / "train.log", threads)
    evaluate = {k: v for k, v in common.items() if k != "backbone_weights"}
    bundle_run(bundle, ["train.json", *switches, "evaluate.json"], {**evaluate, "output_dir": str(run_dir / "eval")},
               run_dir / "eval.log", threads)
    result = {"seed": seed, "precision": precision, "train_seconds": train_s, **read_test_metrics(run_dir / "eval")}
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=4))
    tmp.replace(result_file)
    return result


def report(results: list[dict], title: str) -> str:
    """Markdown: per-seed metrics and the paired bf16 - fp32 differences with their 95 % intervals."""
    by = {(r["seed"], r["precision"]): r for r in results}
    seeds = sorted({s for s, p in by if (s, "fp32") in by and (s, "bf16") in by})
    metrics = [k for k in results[0] if k not in ("seed", "precision", "train_seconds")]
    lines = [f"## {title}", "", "| metric | fp32 mean | bf16 mean | paired bf16 - fp32 (95 % interval) | seeds |", "|---|---|---|---|---|"]
    for m in metrics:
        a = [by[(s, "fp32")][m] for s in seeds]
        b = [by[(s, "bf16")][m] for s in seeds]
        mean, low, high = t_interval([y - x for x, y in zip(a, b)])
        lines.append(f"| {m} | {sum(a) / len(a):.4f} | {sum(b) / len(b):.4f} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] | {len(seeds)} |")
    speed = [by[(s, "fp32")]["train_seconds"] / by[(s, "bf16")]["train_seconds"] for s in seeds]
    lines += ["", f"Training wall time fp32 / bf16 per seed: {', '.join(f'{x:.2f}x' for x in speed)}."]
    lines += ["", "| seed | precision | " + " | ".join(metrics) + " | train s |", "|---|---|" + "---|" * (len(metrics) + 1)]
    lines += [f"| {s} | {p} | " + " | ".join(f"{by[(s, p)][m]:.4f}" for m in metrics) + f" | {by[(s, p)]['train_seconds']:.0f} |"
              for s in seeds for p in PRECISIONS]
    return "\n".join(lines)


def main(bundle_root: str, datalist: str, workdir: str, switches=(), seeds=(0, 1, 2), overrides: dict | None = None,
         threads: int = 2) -> str:
    """Run every (seed, precision) pair that is not finished yet, then write ``<workdir>/parity.md``."""
    bundle, work = Path(bundle_root).resolve(), Path(workdir).resolve()
    results = [one_run(bundle, list(switches), datalist, s, p, work, dict(overrides or {}), threads)
               for s in seeds for p in PRECISIONS]
    text = report(results, f"{bundle.name} {' + '.join(switches) or ''} bf16 vs fp32, {dict(overrides or {})}")
    (work / "parity.md").write_text(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    fire.Fire(lambda **kw: main(**kw) and None)
