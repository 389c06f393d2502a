"""A study's figures: validation curves with seed bands per arm, and a forest plot of the paired differences.

Drawn on matplotlib's Agg canvas without pyplot (as ``tpp_components.handlers.CurvesPlotter`` draws), from the
records and the summary the report already computed, so the figures and the tables show the same numbers.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

from tools.study.metrics import PRIMARY_METRIC
from tpp_components.io import atomic_path

__all__ = ["plot_study"]


def _figure(width: float, height: float):
    """A figure on the Agg canvas and its one axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def _save(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def _arm(r: dict) -> str:
    return r["arm"] if r["method"] is None else f"{r['method']}/{r['arm']}"


def _curves(records: list[dict], regime: str, path: Path) -> Path | None:
    """Mean validation curve per arm over its seeds, with the min-max band of the seeds."""
    by_arm: dict[str, list[dict[int, float]]] = defaultdict(list)
    for r in records:
        if r["kind"] == "finetune" and r["regime"] == regime and r.get("val_curve"):
            by_arm[_arm(r)].append(dict((int(e), float(v)) for e, v in r["val_curve"]))
    if not by_arm:
        return None
    fig, ax = _figure(7, 4.5)
    for arm, curves in sorted(by_arm.items()):
        epochs = sorted(set.intersection(*(set(c) for c in curves)))
        mean = [statistics.fmean(c[e] for c in curves) for e in epochs]
        line, = ax.plot(epochs, mean, "o-", markersize=3, label=f"{arm} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(epochs, [min(c[e] for c in curves) for e in epochs], [max(c[e] for c in curves) for e in epochs],
                            color=line.get_color(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation score (the bundle's key metric)")
    ax.set_title(f"regime '{regime}': mean over seeds, band = min-max of the seeds")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _forest(summary: dict, primary: str, path: Path) -> Path | None:
    """Every paired difference of the primary metric, per regime, with its 95 % interval."""
    rows = [(f"{regime}: {key}", d[primary]) for regime, section in summary.get("regimes", {}).items()
            for key, d in section.get("paired", {}).items() if primary in d and d[primary]["n"] > 0]
    if not rows:
        return None
    fig, ax = _figure(8, 0.45 * len(rows) + 1.2)
    for i, (label, d) in enumerate(reversed(rows)):
        lo, hi = d["ci95"]
        if lo == lo:  # an interval needs two seeds
            ax.plot([lo, hi], [i, i], color="black", lw=1.2)
        ax.plot([d["mean"]], [i], "o", color="tab:blue")
        ax.annotate(f"n={d['n']}, wins {d['wins']}", (d["mean"], i), textcoords="offset points", xytext=(3, 4), fontsize=6)
    ax.axvline(0.0, color="grey", ls="--", lw=0.8)
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=7)
    ax.set_xlabel(f"paired difference in {primary}, points (mean, 95 % Student-t interval)")
    return _save(fig, path)


def plot_study(records: list[dict], summary: dict, regimes: list[str], folder: str | Path) -> list[Path]:
    """Write ``curves_<regime>.png`` for each regime and ``forest.png`` into ``folder``; return the paths written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tunes = [r for r in records if r["kind"] == "finetune"]
    written = [_curves(records, regime, folder / f"curves_{regime}.png") for regime in regimes]
    if tunes:
        written.append(_forest(summary, PRIMARY_METRIC[tunes[0]["task"]], folder / "forest.png"))
    return [p for p in written if p is not None]
