"""What a resumable checkpoint holds besides weights, optimizer and trainer, so that a resumed run
continues the interrupted one exactly: the best-metric bookkeeping, the random states and the
settings the run was started with.

Each class is a state view for MONAI's ``CheckpointSaver`` / ``CheckpointLoader`` (``state_dict`` /
``load_state_dict``); every value is a tensor or a plain container, so the checkpoint loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine
from monai.transforms import Randomizable, Transform

from tpp_components.networks.pretrained import sha256_of

__all__ = ["BestMetricState", "RandomState", "RunSettings", "file_digest"]


class BestMetricState:
    """The evaluator's best metric and epoch, and the key-metric list of every saver among ``handlers``.

    Without it a resumed run starts with no best: the first validation after the restart writes
    ``models/model.pt`` (and the best target parameters) even when it is worse than the model saved
    before the interruption.

    Args:
        evaluator: the validation engine (MONAI ``Workflow``: ``state.best_metric`` / ``best_metric_epoch``).
        handlers: the evaluator's handlers; those with a key-metric list (``AtomicCheckpointSaver``)
            are saved and restored in order.
    """

    def __init__(self, evaluator: Engine, handlers: Sequence[Any] = ()) -> None:
        self.evaluator = evaluator
        self.savers = [h for h in handlers if callable(getattr(h, "state_dict", None)) and getattr(h, "_key_metric_checkpoint", None)]

    def state_dict(self) -> dict:
        return {
            "best_metric": float(self.evaluator.state.best_metric),
            "best_metric_epoch": int(self.evaluator.state.best_metric_epoch),
            "savers": [s.state_dict() for s in self.savers],
        }

    def load_state_dict(self, state: Mapping) -> None:
        if len(state["savers"]) != len(self.savers):
            raise ValueError(
                f"best-metric state: the checkpoint tracks {len(state['savers'])} key-metric savers, this run has {len(self.savers)}."
            )
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        for saver, saved in zip(self.savers, state["savers"]):
            saver.load_state_dict(saved)


def _randomizables(obj: Any, seen: set[int]) -> Iterator[Randomizable]:
    """Every ``Randomizable`` reachable from ``obj`` through transforms and lists of them, in a fixed order
    (wrappers such as ``RandAffined`` hold their own randomizable ``RandAffine``)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Randomizable):
        yield obj
    if isinstance(obj, (list, tuple)):
        children = list(obj)
    elif isinstance(obj, Transform):
        children = list(vars(obj).values())
    else:
        return
    for child in children:
        if isinstance(child, (Transform, list, tuple)):
            yield from _randomizables(child, seen)


def _numpy_state(legacy: tuple) -> dict:
    """A NumPy ``RandomState.get_state()`` tuple as tensors and Python numbers (``torch.load(weights_only=True)``)."""
    kind, keys, pos, has_gauss, gauss = legacy
    return {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}


def _legacy_state(state: Mapping) -> tuple:
    """The ``RandomState.set_state()`` tuple of :func:`_numpy_state`'s dict."""
    return state["kind"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"], state["gauss"]


class RandomState:
    """torch / numpy / Python random states and the state of every random transform of ``dataset``.

    Saved at the end of an epoch and restored when the resumed run starts, the next epoch draws
    the same shuffling, augmentations, pretext masks and dropout as in an uninterrupted run
    (MONAI's ``DataLoader`` seeds the transforms once, when it is built, so a restarted process
    would otherwise replay the first epoch's augmentations).

    Args:
        dataset: the training dataset (its ``transform`` is searched for random transforms).
    """

    def __init__(self, dataset: Any) -> None:
        self.transforms = list(_randomizables(getattr(dataset, "transform", None), set()))

    def state_dict(self) -> dict:
        state = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": random.getstate(),
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if len(state["transforms"]) != len(self.transforms):
            raise ValueError(
                f"random state: the checkpoint holds {len(state['transforms'])} random transforms, this run's "
                f"training transforms have {len(self.transforms)}."
            )
        torch.set_rng_state(state["torch"])
        np.random.set_state(_legacy_state(state["numpy"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        for t, s in zip(self.transforms, state["transforms"]):
            t.R.set_state(_legacy_state(s))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a datalist's identity in :class:`RunSettings`)."""
    return sha256_of(path)


class RunSettings:
    """The settings a run started with; resuming with different ones is refused, naming them.

    Args:
        settings: JSON-serialisable values (seed, PEFT configuration, datalist digest...).
    """

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = {k: json.dumps(v, sort_keys=True) for k, v in settings.items()}

    def state_dict(self) -> dict[str, str]:
        return dict(self.settings)

    def load_state_dict(self, state: Mapping[str, str]) -> None:
        differ = [f"{k}: checkpoint {state.get(k)} vs this run {self.settings.get(k)}"
                  for k in sorted(state.keys() | self.settings.keys()) if state.get(k) != self.settings.get(k)]
        if differ:
            raise ValueError(
                "cannot resume: the checkpoint was written by a run with other settings ("
                + "; ".join(differ) + "). Resume with the same settings, or start afresh with resume false."
            )
