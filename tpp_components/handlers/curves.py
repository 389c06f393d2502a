"""A PNG of a run's training and validation curves, rewritten after every epoch.

TensorBoard holds the same numbers (``TensorBoardStatsHandler``); this figure is for a glance at a
run's output folder without starting a server, and for reports. Drawn with matplotlib's
object-oriented API (no pyplot state, no display needed).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from tpp_components.io import atomic_path

__all__ = ["CurvesPlotter"]


def _loss_of(output) -> float | None:
    """The loss of one iteration's output (MONAI engines: a dict, or a list of dicts per sample)."""
    item = output[0] if isinstance(output, (list, tuple)) and output else output
    loss = item.get("loss") if isinstance(item, dict) else None
    if loss is None:
        return None
    return float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)


class CurvesPlotter:
    """Plot the mean training loss per epoch and every validation metric to ``<output_dir>/<filename>``.

    Attach to the trainer after ``ValidationHandler`` (so the validator has run when an epoch
    completes). The PNG is written atomically each epoch, so an interrupted run keeps its curves.

    Args:
        output_dir: the run's output folder.
        validator: the evaluator whose ``state.metrics`` are plotted (None: training loss only).
        filename: the PNG's name.
    """

    def __init__(self, output_dir: str | os.PathLike, validator: Engine | None = None, filename: str = "curves.png") -> None:
        self.path = Path(output_dir) / filename
        self.validator = validator
        self.epoch_losses: list[float] = []
        self.train_loss: list[tuple[int, float]] = []
        self.metrics: dict[str, list[tuple[int, float]]] = defaultdict(list)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, lambda e: self.epoch_losses.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _iteration(self, engine: Engine) -> None:
        loss = _loss_of(engine.state.output)
        if loss is not None and math.isfinite(loss):
            self.epoch_losses.append(loss)

    def __call__(self, engine: Engine) -> None:
        epoch = int(engine.state.epoch)
        if self.epoch_losses:
            self.train_loss.append((epoch, sum(self.epoch_losses) / len(self.epoch_losses)))
        if self.validator is not None and self.validator.state.epoch == epoch:
            for name, value in self.validator.state.metrics.items():
                if isinstance(value, (int, float)) and math.isfinite(float(value)):
                    self.metrics[name].append((epoch, float(value)))
        self.plot()

    def plot(self) -> Path:
        """Write the figure now; returns its path."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        panels = [("training loss", self.train_loss)] + [(k if k.startswith("val") else f"validation {k}", v) for k, v in sorted(self.metrics.items())]
        figure = Figure(figsize=(4 * len(panels), 3.2), layout="constrained")
        FigureCanvasAgg(figure)
        for axis, (title, points) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
            if points:
                axis.plot(*zip(*points), marker="o", markersize=3)
            axis.set_title(title)
            axis.set_xlabel("epoch")
            axis.grid(alpha=0.3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            figure.savefig(tmp, format="png", dpi=100)
        return self.path
