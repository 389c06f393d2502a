"""MONAI engines for pretext training: stage 0 (whole backbone) and TPP (target parameters only).

The pretext modules (:mod:`tpp_components.pretext`) return ``{"loss", "pred", "mask"}``, so the
stock :class:`monai.engines.SupervisedTrainer` iteration (inferer, loss, AMP, gradient
accumulation, iteration events) runs them unchanged; these subclasses only fix the loss
function, turn off decollation (the trainer's output is a one-item list, as a decollated one would be)
and make validation masks reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.metrics import Average
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.utils import CommonKeys as Keys

__all__ = [
    "PretextTrainer", "PretextEvaluator", "PretextLoss", "pretext_loss", "lower_is_better",
    "PRETEXT_KEY_METRIC", "PRETEXT_NEGATIVE_SIGN",
]

#: the key metric of every pretext evaluation: the held-out pretext loss
PRETEXT_KEY_METRIC = "val_pretext_loss"
#: lower pretext loss is better. This is the one place that says so: the evaluator's comparison
#: (which sets ``best_metric_epoch``, followed by ``TargetParametersSaver``) and every
#: ``CheckpointSaver(key_metric_negative_sign=...)`` keyed on the pretext loss read it, because
#: ignite keeps the checkpoint with the *highest* score.
PRETEXT_NEGATIVE_SIGN = True


def pretext_loss(pred: dict[str, torch.Tensor], target: Any = None) -> torch.Tensor:
    """The loss a pretext module computed in its forward pass (labels are not used)."""
    if not isinstance(pred, dict) or "loss" not in pred:
        raise TypeError(f"a pretext network must return a dict with a 'loss' entry, got {type(pred).__name__}.")
    return pred["loss"]


def lower_is_better(current: float, best: float) -> bool:
    """``metric_cmp_fn`` for the pretext loss (MONAI's default keeps the largest value)."""
    return current < best if PRETEXT_NEGATIVE_SIGN else current > best


class PretextLoss(Average):
    """Ignite metric: mean pretext loss over an evaluation run (a key metric for best-checkpointing)."""

    def __init__(self, output_transform: Callable = lambda out: out[Keys.PRED]["loss"].detach(), **kwargs: Any):
        super().__init__(output_transform=output_transform, **kwargs)


class PretextTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` for a pretext module; the optimizer should hold only the trainable
    parameters (:func:`tpp_components.networks.trainable_parameters`).

    Args:
        kwargs: as :class:`monai.engines.SupervisedTrainer`; ``loss_function`` defaults to
            :func:`pretext_loss` and ``decollate`` to False.
    """

    def __init__(self, loss_function: Callable = pretext_loss, decollate: bool = False, **kwargs: Any) -> None:
        super().__init__(loss_function=loss_function, decollate=decollate, **kwargs)

    def _iteration(self, engine: Any, batchdata: dict[str, torch.Tensor]) -> list[dict]:
        """One step of :class:`monai.engines.SupervisedTrainer`, its output wrapped in a one-item list.

        Without decollation the output is a dict, for which MONAI's ``from_engine(["loss"], first=True)``
        (the output transform of every loss-logging handler in the bundles: Stats, TensorBoard, MLflow)
        returns a tuple that those handlers drop; a one-item list reads like a decollated output.
        """
        return [super()._iteration(engine, batchdata)]


class PretextEvaluator(SupervisedEvaluator):
    """``SupervisedEvaluator`` reporting the held-out pretext loss, lower is better.

    Every run draws the same random masks (``mask_seed``) without disturbing the training RNG,
    so validation losses of different epochs are comparable.

    Args:
        mask_seed: seed of the masks drawn during each evaluation run.
        kwargs: as :class:`monai.engines.SupervisedEvaluator`.
    """

    def __init__(
        self,
        mask_seed: int = 0,
        key_val_metric: dict | None = None,
        metric_cmp_fn: Callable = lower_is_better,
        decollate: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            key_val_metric=key_val_metric or {PRETEXT_KEY_METRIC: PretextLoss()},
            metric_cmp_fn=metric_cmp_fn,
            decollate=decollate,
            **kwargs,
        )
        self.mask_seed = mask_seed

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        device = torch.device(self.state.device) if self.state.device is not None else torch.device("cpu")
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.mask_seed)
            super().run(global_epoch)
