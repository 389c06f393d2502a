"""A study's tables: every arm per regime, the reference arms' sanity check and (classification) the backbone gate,
paired differences against the baseline arm with 95 % intervals and wins, convergence, and the TPP pretext curves."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable

from tools.study.metrics import PRIMARY_METRIC
from tools.study.plan import StudyPlan
from tools.study.stats import epochs_to_reach, paired_difference
from tpp_components.data import load_datalist
from tpp_components.data.classes import datalist_class_names

__all__ = ["GATE_MIN_AUC", "GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE", "backbone_gate", "summarise"]

#: paired differences in points (x100) for scores in [0, 1]; distances stay in mm
SCALE = {"hd95": 1.0}
#: the backbone gate: a linear probe below it says the frozen features carry little of the task, and a comparison
#: of starts for adapting them is then not evidence about TPP
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


def _num_classes(plan: StudyPlan) -> int:
    """Classes of the plan's datalist, as the bundles count them (its ``labels``), else its distinct training labels."""
    data = load_datalist(plan.datalist)
    found = sorted({i["label"] for i in data.get("training", []) if isinstance(i.get("label"), int)})
    return len(datalist_class_names(data, default=[str(c) for c in found]))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {std:.3f}"


def _interval(d: dict) -> str:
    lo, hi = d["ci95"]
    if math.isnan(lo):
        return f"{d['mean']:+.1f} (n={d['n']})"
    return f"{d['mean']:+.1f} [{lo:+.1f}, {hi:+.1f}]"


def _arm_name(r: dict) -> str:
    return r["arm"] if r["method"] is None else f"{r['method']}/{r['arm']}"


def _convergence(arm_runs: dict[int, dict], base_runs: dict[int, dict]) -> list[tuple[int, int | None, int | None]]:
    """Per seed: (seed, epoch of the baseline's best validation score, epoch the arm first reaches it)."""
    out = []
    for seed in sorted(set(arm_runs) & set(base_runs)):
        base_curve, arm_curve = base_runs[seed].get("val_curve") or [], arm_runs[seed].get("val_curve") or []
        if not base_curve or not arm_curve:
            continue
        best = max(v for _, v in base_curve)
        out.append((seed, epochs_to_reach(base_curve, best), epochs_to_reach(arm_curve, best)))
    return out


def summarise(plan: StudyPlan, records: list[dict]) -> tuple[dict, str]:
    """The study's summary (JSON-ready) and its Markdown report, from the finished runs' records."""
    tunes = [r for r in records if r["kind"] == "finetune"]
    tpps = [r for r in records if r["kind"] == "tpp"]
    lines = [f"# Study '{plan.study}'", "",
             f"Bundle `{plan.bundle.name}`{' + ' + ', '.join(plan.switches) if plan.switches else ''}, datalist "
             f"`{plan.datalist.name}`, seeds {plan.seeds}; every stage `{plan.overrides}`. Paired differences are "
             f"arm - `{plan.baseline_arm}` of the same method and seed, in points (x100; HD95 as the bundle reports "
             "it, in voxels of its resampled grid), mean [95 % Student-t "
             "interval]; wins count the seeds where the arm scored higher. Models are selected on validation; "
             "every score is on the test split."]
    summary: dict = {"regimes": {}}
    if not tunes:
        return summary, "\n".join(lines + ["", "No fine-tuning run has finished yet."])
    task = tunes[0]["task"]
    primary = PRIMARY_METRIC[task]
    metrics = list(tunes[0]["test"])
    gated = task == "classification" and "linear_probe" in plan.reference_arms
    num_classes = _num_classes(plan) if gated else 0
    for regime in plan.regimes:
        name = regime["name"]
        rs = [r for r in tunes if r["regime"] == name]
        if not rs:
            continue
        by_arm: dict[str, dict[int, dict]] = defaultdict(dict)
        for r in rs:
            by_arm[_arm_name(r)][r["seed"]] = r
        section: dict = {"arms": {}, "paired": {}, "convergence": {}}
        lines += ["", f"## Regime '{name}': {100 * float(regime.get('label_fraction', 1.0)):.0f} % of the training labels, "
                      f"`{regime.get('overrides', {})}`", "",
                  "| arm | n | " + " | ".join(metrics) + " | train s/run | train CPU s/run |",
                  "|---|---|" + "---|" * (len(metrics) + 2)]
        for arm, seeds in by_arm.items():
            values = {m: [seeds[s]["test"][m] for s in sorted(seeds)] for m in metrics}
            section["arms"][arm] = values
            train_s = statistics.fmean(seeds[s]["seconds"]["train"] for s in seeds)
            cells = " | ".join(_mean_std(values[m]) for m in metrics)
            lines.append(f"| {arm} | {len(seeds)} | {cells} | {train_s:.0f} | {_cpu_seconds(seeds.values())} |")
        lines += ["", *_reference_check(plan, by_arm, primary)]
        probe = by_arm.get("linear_probe")
        if gated and probe:
            reasons = backbone_gate(statistics.fmean(r["test"]["macro_auc"] for r in probe.values()),
                                    statistics.fmean(r["test"]["balanced_accuracy"] for r in probe.values()),
                                    num_classes)
            section["backbone_gate"] = {"passed": not reasons, "reasons": reasons}
            if reasons:
                lines.append(f"**The linear probe fails the backbone gate ({'; '.join(reasons)}): the frozen features "
                             "carry little of the task, and the comparison of starts below is NOT evidence about TPP.**")
            else:
                lines.append(f"Backbone gate passed: the linear probe's macro AUC is at least {GATE_MIN_AUC} and its "
                             f"balanced accuracy at least {100 * GATE_MIN_BALANCED_ACCURACY_OVER_CHANCE:.0f} points "
                             "above chance, so the frozen features carry the task.")
        lines += ["", "| comparison | n | " + " | ".join(metrics) + f" | wins ({primary}) |", "|---|---|" + "---|" * (len(metrics) + 1)]
        for method in plan.methods:
            base = by_arm.get(f"{method}/{plan.baseline_arm}", {})
            for arm in plan.arms:
                if arm == plan.baseline_arm or f"{method}/{arm}" not in by_arm:
                    continue
                runs = by_arm[f"{method}/{arm}"]
                diffs = {m: paired_difference({s: r["test"][m] for s, r in runs.items()},
                                              {s: r["test"][m] for s, r in base.items()}, scale=SCALE.get(m, 100.0))
                         for m in metrics}
                key = f"{method}/{arm} - {method}/{plan.baseline_arm}"
                section["paired"][key] = diffs
                d = diffs[primary]
                lines.append(f"| {key} | {d['n']} | " + " | ".join(_interval(diffs[m]) for m in metrics)
                             + f" | {d['wins']}/{d['n']} |")
                section["convergence"][key] = _convergence(runs, base)
        conv = [(k, v) for k, v in section["convergence"].items() if v]
        if conv:
            lines += ["", f"Convergence: the epoch at which each seed first reaches the baseline arm's best validation "
                          f"{primary} (seed: baseline's best epoch -> arm's epoch, or never):"]
            for key, rows in conv:
                lines.append(f"- {key}: " + ", ".join(f"{s}: {b} -> {a if a is not None else 'never'}" for s, b, a in rows))
        summary["regimes"][name] = section
    lines += _pretext_lines(tpps, summary)
    return summary, "\n".join(lines)


def _reference_check(plan: StudyPlan, by_arm: dict[str, dict[int, dict]], primary: str) -> list[str]:
    """One line on whether the reference arms make sense: full fine-tuning should reach at least the linear probe,
    and PEFT from its standard start should sit near or between them."""
    means = {arm: statistics.fmean(r["test"][primary] for r in seeds.values()) for arm, seeds in by_arm.items()}
    refs = {a: means[a] for a in plan.reference_arms if a in means}
    if not refs:
        why = "none of its runs has finished yet" if plan.reference_arms else "the plan has none"
        return [f"(no reference arm to check the comparison against: {why})"]
    text = ", ".join(f"{a} {v:.3f}" for a, v in refs.items())
    base = {m: means[f"{m}/{plan.baseline_arm}"] for m in plan.methods if f"{m}/{plan.baseline_arm}" in means}
    text += "; " + ", ".join(f"{m}/{plan.baseline_arm} {v:.3f}" for m, v in base.items())
    probe, full = refs.get("linear_probe"), refs.get("full_finetune")
    if probe is not None and full is not None and full < probe:
        text += ". **Check the reference arms: full fine-tuning is below the linear probe.**"
    return [f"Reference arms ({primary}, mean): {text}"]


def _pretext_lines(tpps: list[dict], summary: dict) -> list[str]:
    """Held-out pretext loss of each TPP variant (first and last epoch, mean over seeds) and what a TPP run cost."""
    runs: dict[str, list[dict]] = defaultdict(list)
    for r in tpps:
        if r.get("pretext_curve"):
            runs[f"{r['method']}/{r['arm']}"].append(r)
    if not runs:
        return []
    lines = ["", "## TPP: held-out pretext loss (mean over seeds, first -> last epoch) and time per TPP run", ""]
    summary["pretext"] = {}
    for key, rs in runs.items():
        cs = [r["pretext_curve"] for r in rs]
        first, last = statistics.fmean(c[0][1] for c in cs), statistics.fmean(c[-1][1] for c in cs)
        summary["pretext"][key] = {"first": first, "last": last, "seeds": len(cs)}
        wall = [r["seconds"]["tpp"] for r in rs if "tpp" in r.get("seconds", {})]
        cost = f"; {statistics.fmean(wall):.0f} s wall" if wall else ""
        if cost:
            cost += f", {_cpu_seconds(rs, 'tpp')} CPU s"
        lines.append(f"- {key}: {first:.4f} -> {last:.4f} ({100 * (last - first) / first:+.1f} %, {len(cs)} seeds{cost})")
    return lines


def _cpu_seconds(records: Iterable[dict], stage: str = "train") -> str:
    """Mean CPU seconds of ``stage`` over the runs that recorded it (runs made before the runner measured CPU time
    have none), with their count when not every run has it; ``-`` when none has."""
    records = list(records)
    cpu = [r["cpu_seconds"][stage] for r in records if stage in r.get("cpu_seconds", {})]
    if not cpu:
        return "-"
    return f"{statistics.fmean(cpu):.0f}" + ("" if len(cpu) == len(records) else f" ({len(cpu)} of {len(records)})")
