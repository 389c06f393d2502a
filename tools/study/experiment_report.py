"""The report of ``tools/tpp_experiment.py``: mean and std per arm, the backbone gate, paired TPP - standard
differences with their Student-t intervals, validation curves and convergence, as Markdown and JSON.

The experiment tool runs the arms (orchestration) and reads their curves; this module only summarises runs it is
given (``{"arm", "method", "init", "seed", "test": {...}, "seconds": {...}, "val_curve": [...]}``).
"""

from __future__ import annotations

import statistics

from tools.study.stats import epochs_to_reach, t_interval

__all__ = ["METRICS", "GATE_MIN_AUC", "GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE", "backbone_gate", "summarise"]

METRICS = ("accuracy", "balanced_accuracy", "macro_auc")

#: the backbone gate: below it, a linear probe says the features carry little of the task
GATE_MIN_AUC = 0.65
GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE = 0.05

def backbone_gate(macro_auc: float, balanced_accuracy: float, num_classes: int) -> list[str]:
    """Reasons a linear probe's test metrics fail the backbone gate (empty when it passes)."""
    reasons = []
    if macro_auc < GATE_MIN_AUC:
        reasons.append(f"linear-probe macro AUC {macro_auc:.3f} < {GATE_MIN_AUC}")
    chance = 1.0 / num_classes
    if balanced_accuracy < chance + GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE:
        reasons.append(f"linear-probe balanced accuracy {balanced_accuracy:.3f} within "
                       f"{100 * GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE:.0f} points of chance ({chance:.3f})")
    return reasons


def _stats(values: list[float]) -> str:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} +- {std:.3f}"


def _curve_text(curve: list[tuple[int, float]], points: int = 8) -> str:
    if not curve:
        return "(none)"
    step = max(1, len(curve) // points)
    picked = curve[::step] + ([curve[-1]] if (len(curve) - 1) % step else [])
    return ", ".join(f"{e}: {v:.4f}" for e, v in picked)


def _validation_text(arms: dict[str, list[dict]], summary: dict) -> list[str]:
    """Validation macro AUC by epoch per arm (mean over seeds), and for each TPP arm the epoch at
    which each seed first reaches its paired standard run's best validation AUC."""
    lines = []
    curves = {arm: [r.get("val_curve") or [] for r in rs] for arm, rs in arms.items()}
    if not any(c for cs in curves.values() for c in cs):
        return lines
    lines.append("\nValidation macro AUC by epoch (mean over seeds):")
    summary["validation"] = {}
    for arm, cs in curves.items():
        epochs = sorted({e for c in cs for e, _ in c})
        mean = [(e, statistics.fmean(v for c in cs for ce, v in c if ce == e)) for e in epochs]
        summary["validation"][arm] = {"mean_curve": mean}
        lines.append(f"- {arm}: " + ", ".join(f"{e}: {v:.3f}" for e, v in mean))
    for arm, rs in arms.items():
        method, init = arm.split("/")
        if not init.startswith("tpp"):
            continue
        std = {r["seed"]: r for r in arms.get(f"{method}/standard", [])}
        reach = []
        for r in rs:
            if r["seed"] in std and std[r["seed"]].get("val_curve") and r.get("val_curve"):
                best = max(v for _, v in std[r["seed"]]["val_curve"])
                best_epoch = epochs_to_reach(std[r["seed"]]["val_curve"], best)
                reach.append((r["seed"], best_epoch, epochs_to_reach(r["val_curve"], best)))
        if reach:
            summary["validation"][arm]["epochs_to_standard_best"] = reach
            lines.append(f"- {arm}: epochs to reach the standard arm's best validation AUC (seed: standard -> TPP): "
                         + ", ".join(f"{s}: {b} -> {t if t is not None else 'never'}" for s, b, t in reach))
    return lines


def summarise(runs: list[dict], num_classes: int, curves: dict | None = None,
              reference_methods: tuple[str, ...] = ("linear_probe", "full_finetune")) -> tuple[dict, str]:
    """Mean +- std per arm (the reference arms, ``reference_methods``, first), the backbone gate, paired TPP -
    standard differences."""
    arms: dict[str, list[dict]] = {}
    for r in sorted(runs, key=lambda r: (r["method"] not in reference_methods, r["arm"])):
        arms.setdefault(r["arm"], []).append(r)
    table = ["| arm | n | accuracy | balanced accuracy | macro AUC | train s/run |", "|---|---|---|---|---|---|"]
    summary: dict = {"arms": {}}
    for arm, rs in arms.items():
        summary["arms"][arm] = {m: [r["test"][m] for r in rs] for m in METRICS}
        cells = " | ".join(_stats(summary["arms"][arm][m]) for m in METRICS)
        table.append(f"| {arm} | {len(rs)} | {cells} | {statistics.fmean(r['seconds']['train'] for r in rs):.0f} |")
    majority = runs[0]["test"]["majority_rate"]
    table.append(f"\nTest split: n={runs[0]['test']['num_samples']}, majority-class rate {majority:.3f}, "
                 f"chance balanced accuracy {1 / num_classes:.3f}.\n")
    probe = arms.get("linear_probe/standard")
    if probe:
        auc = statistics.fmean(r["test"]["macro_auc"] for r in probe)
        bal = statistics.fmean(r["test"]["balanced_accuracy"] for r in probe)
        reasons = backbone_gate(auc, bal, num_classes)
        summary["backbone_gate"] = {"passed": not reasons, "reasons": reasons}
        if reasons:
            table.append("**Backbone gate FAILED** (" + "; ".join(reasons) + "): the backbone's features carry little "
                         "of the task, so the TPP comparison below is NOT evidence for or against TPP.\n")
        else:
            table.append(f"Backbone gate passed: linear-probe macro AUC {auc:.3f} >= {GATE_MIN_AUC}, balanced accuracy "
                         f"{bal:.3f} more than {100 * GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE:.0f} points over chance.\n")
    table.append("| comparison | n pairs | accuracy | balanced accuracy | macro AUC |")
    table.append("|---|---|---|---|---|")
    summary["paired"] = {}
    for arm in arms:
        method, init = arm.split("/")
        if not init.startswith("tpp"):
            continue
        std_runs = {r["seed"]: r for r in arms.get(f"{method}/standard", [])}
        pairs = [(r, std_runs[r["seed"]]) for r in arms[arm] if r["seed"] in std_runs]
        if not pairs:
            continue
        cells, paired = [], {}
        for m in METRICS:
            diffs = [100 * (a["test"][m] - b["test"][m]) for a, b in pairs]
            mean, lo, hi = t_interval(diffs)
            paired[m] = {"per_seed": diffs, "mean": mean, "ci95": [lo, hi]}
            cells.append(f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]")
        summary["paired"][f"{arm} - {method}/standard"] = paired
        table.append(f"| {arm} - {method}/standard | {len(pairs)} | " + " | ".join(cells) + " |")
    table.append("\n(points; mean [95 % t-interval] of the per-seed paired differences)")
    table += _validation_text(arms, summary)
    for name, curve in (curves or {}).items():
        table.append(f"\n{name} held-out pretext loss by epoch: {_curve_text(curve)}")
    return summary, "\n".join(table)
