"""A classification bundle's classes: read from the datalist the converter wrote, checked against the labels.

The converters write ``"labels": {"0": name, ...}`` and ``"num_classes"`` into the datalist. A bundle's
``class_names`` default to those (``num_classes`` to their count), so a dataset with other classes needs no
override; ``--class_names`` still overrides. :func:`check_classes` refuses, before any data is cached, a
``num_classes`` that disagrees with ``class_names`` or with the datalist's own classes, naming all three.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from numbers import Integral
from typing import Any

from tpp_components.data.datalist import SPLITS, DatalistError, load_datalist

__all__ = ["check_classes", "datalist_class_names"]


def _read(datalist: Any) -> Mapping[str, Any] | None:
    """The datalist as a mapping, or None where it is not a readable JSON object (the datalist check says why)."""
    if isinstance(datalist, Mapping):
        return datalist
    if not isinstance(datalist, (str, os.PathLike)):
        return None
    try:
        return load_datalist(datalist)
    except DatalistError:
        return None


def datalist_class_names(datalist: Any, default: Sequence[str]) -> list[str]:
    """The class names the datalist declares (its ``"labels"``, in label order), else ``default``.

    Args:
        datalist: a datalist JSON file (or the loaded mapping); a missing or unreadable file gives ``default``
            (the bundle's datalist check reports it at start-up).
        default: the bundle's own class names.
    """
    data = _read(datalist)
    labels = data.get("labels") if data is not None else None
    if not isinstance(labels, Mapping) or not labels:
        return list(default)
    try:
        order = sorted(labels, key=int)
    except (TypeError, ValueError):
        raise DatalistError(f"datalist {datalist}: 'labels' keys must be the label integers as strings, "
                            f"got {sorted(labels)}") from None
    if [int(k) for k in order] != list(range(len(order))):
        raise DatalistError(f"datalist {datalist}: 'labels' must number the classes 0..{len(order) - 1}, got {order}")
    return [str(labels[k]) for k in order]


def check_classes(num_classes: int, class_names: Sequence[str], datalist: Any) -> None:
    """Refuse a run whose ``num_classes``, ``class_names`` and datalist disagree; the error names all three.

    Checked: ``len(class_names) == num_classes``; the datalist's ``"num_classes"`` and ``"labels"``, where
    it has them, give the same count. Each entry's label is checked by the datalist check, which names the entry.

    Raises:
        ValueError: naming ``num_classes``, ``class_names``, the datalist's classes and the labels found.
    """
    data = _read(datalist)
    declared = None if data is None else data.get("num_classes")
    names = None if data is None else data.get("labels")
    labels = sorted({int(item["label"]) for split in SPLITS for item in (data or {}).get(split, []) or []
                     if isinstance(item, Mapping) and isinstance(item.get("label"), Integral)
                     and not isinstance(item.get("label"), bool)})
    problems = []
    if len(class_names) != num_classes:
        problems.append(f"class_names has {len(class_names)} names")
    if isinstance(declared, int) and declared != num_classes:
        problems.append(f"the datalist declares num_classes {declared}")
    if isinstance(names, Mapping) and len(names) != num_classes:
        problems.append(f"the datalist's 'labels' name {len(names)} classes")
    if problems:
        where = datalist if isinstance(datalist, (str, os.PathLike)) else "the datalist"
        raise ValueError(
            f"classes disagree: num_classes is {num_classes} but {'; '.join(problems)} "
            f"(class_names {list(class_names)}; {where}: num_classes {declared!r}, labels {dict(names or {})}, "
            f"label values {labels}). Set --class_names (num_classes follows it) to the datalist's classes, "
            "or rewrite the datalist with the converter's --class_names."
        )
