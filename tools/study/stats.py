"""Paired statistics of a study: per-seed differences, their Student-t interval, wins, convergence."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from scipy import stats as _stats

__all__ = ["epochs_to_reach", "paired_difference", "t_interval"]


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` and its two-sided Student-t interval (exact quantile, any sample size).

    Returns ``(mean, low, high)``; the bounds are NaN for fewer than two values.
    """
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(_stats.t.ppf(0.5 + confidence / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_difference(arm: dict[int, float], baseline: dict[int, float], scale: float = 1.0) -> dict:
    """Differences ``arm - baseline`` over the seeds both have (times ``scale``, e.g. 100 for points).

    Returns ``{"per_seed", "mean", "ci95", "wins", "n"}`` (JSON-ready): ``wins`` counts the seeds where the
    arm is strictly better (higher), ``n`` the pairs.
    """
    seeds = sorted(set(arm) & set(baseline))
    diffs = [scale * (arm[s] - baseline[s]) for s in seeds]
    if not diffs:
        return {"per_seed": {}, "mean": float("nan"), "ci95": [float("nan"), float("nan")], "wins": 0, "n": 0}
    mean, low, high = t_interval(diffs)
    return {"per_seed": dict(zip(seeds, diffs)), "mean": mean, "ci95": [low, high], "wins": sum(d > 0 for d in diffs),
            "n": len(diffs)}


def epochs_to_reach(curve: Sequence[tuple[int, float]], level: float) -> int | None:
    """The first epoch of ``curve`` (``(epoch, value)``, higher is better) whose value reaches ``level``."""
    return next((e for e, v in curve if v >= level), None)
