"""Scalar curves read back from the TensorBoard events a stage wrote."""

from __future__ import annotations

from pathlib import Path

__all__ = ["scalar_curve"]


def scalar_curve(log_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of ``tag`` in the TensorBoard events under ``log_dir`` (epochs, for the bundles' tags).

    A folder that a rerun wrote into holds several event files: the newest value of each step wins (files
    are read oldest first). A missing folder or tag gives an empty curve.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not Path(log_dir).is_dir():
        return []
    events = EventAccumulator(str(log_dir))
    events.Reload()
    if tag not in events.Tags().get("scalars", []):
        return []
    latest = {int(e.step): float(e.value) for e in events.Scalars(tag)}
    return sorted(latest.items())
