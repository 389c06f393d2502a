"""BraTS-style patient folders: one folder per patient holding one NIfTI file per MRI sequence and a label.

Releases name the files differently (BraTS 2013: ``Flair_subtrMeanDivStd.nii.gz``,
``OTMultiClass.nii.gz``; BraTS 2021: ``BraTS2021_00000_flair.nii.gz``, ``..._seg.nii.gz``), so every
channel and the label are found by case-insensitive glob patterns, each of which must match
exactly one file of a patient. Patient folders may sit directly under the root or one level
deeper in split folders (``train/``, ``validation/``, ``test/``), whose split can be kept.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tpp_components.data.datalist import DatalistError
from tpp_components.data.nifti_pairs import NIFTI_EXTENSIONS

__all__ = ["DEFAULT_LABEL_PATTERNS", "FOLDER_SPLITS", "Patient", "patient_image_datalist", "scan_patient_folders"]

#: label file patterns tried in turn (BraTS 2013, BraTS 2018-2021)
DEFAULT_LABEL_PATTERNS: tuple[str, ...] = ("*OTMultiClass*", "*_seg.nii*")
#: split folder names and the datalist split they mean
FOLDER_SPLITS: dict[str, str] = {
    "train": "training", "training": "training", "val": "validation", "validation": "validation", "test": "test",
}


@dataclass
class Patient:
    """A patient's folder, channel files (in the order of the patterns), label file and split folder."""

    folder: Path
    channels: list[Path]
    label: Path
    split: str | None


def _match(files: Sequence[Path], pattern: str) -> list[Path]:
    return [p for p in files if fnmatch.fnmatch(p.name.lower(), pattern.lower())]


def scan_patient_folders(
    root: str | os.PathLike,
    channel_patterns: Sequence[str],
    label_patterns: Sequence[str] = DEFAULT_LABEL_PATTERNS,
) -> list[Patient]:
    """Every patient folder under ``root`` with its channel and label files.

    A patient folder is a folder whose NIfTI files match one of ``label_patterns``.

    Args:
        root: dataset folder (patients directly in it, or in split folders one level down).
        channel_patterns: one glob per input channel (``["*flair*", "*t1c*"]``), matched
            case-insensitively against file names; each must match exactly one file.
        label_patterns: globs tried in turn for the label file.

    Returns:
        the patients sorted by folder; ``split`` is the datalist split of a split folder they sit
        in (``train``, ``validation``, ...) or None.

    Raises:
        DatalistError: ``root`` is missing, holds no patient folder, or some patient lacks a
            channel or has several files for one pattern (every problem is listed).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatalistError(f"dataset folder not found: {root}")
    if not channel_patterns:
        raise DatalistError("give at least one channel pattern, e.g. ['*flair*', '*t1c*']")
    patients, problems = [], []
    for folder in sorted({p.parent for p in root.rglob("*") if p.is_file()}):
        files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_EXTENSIONS)]
        label = next((m for pattern in label_patterns if (m := _match(files, pattern))), [])
        if not label:
            continue
        if len(label) > 1:
            problems.append(f"{folder}: several label files match {list(label_patterns)}: {[p.name for p in label]}")
            continue
        channels = []
        for pattern in channel_patterns:
            found = [p for p in _match(files, pattern) if p != label[0]]
            if len(found) != 1:
                problems.append(f"{folder}: channel pattern {pattern!r} matches {len(found)} files "
                                f"({[p.name for p in found]}); expected exactly one of {sorted(p.name for p in files)}")
            channels += found[:1]
        parent = folder.parent.name.lower() if folder.parent != root else ""
        patients.append(Patient(folder, channels, label[0], FOLDER_SPLITS.get(parent)))
    if problems:
        raise DatalistError(f"{len(problems)} patient folder problem(s) in {root}:\n" + "\n".join(f"  - {p}" for p in problems))
    if not patients:
        raise DatalistError(f"no patient folder under {root}: no NIfTI file matches the label patterns {list(label_patterns)}")
    return patients


def patient_image_datalist(root: str | os.PathLike, channel_patterns: Sequence[str]) -> list[dict[str, list[str]]]:
    """The inference datalist of unlabelled patient folders: ``[{"image": [channel files]}, ...]``.

    A patient folder is ``root`` itself or any folder below it with a NIfTI file matching one of
    ``channel_patterns`` (case-insensitive globs, in channel order); each pattern must then match
    exactly one of its files. No label is needed (compare :func:`scan_patient_folders`).

    Raises:
        DatalistError: ``root`` is missing or holds no patient folder, or a patient folder lacks a
            channel or has several files for one pattern (every problem is listed).
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DatalistError(f"input folder '{root}' does not exist or is not a folder.")
    if isinstance(channel_patterns, str) or not channel_patterns:
        raise DatalistError(f"give a list of channel patterns, e.g. ['*flair*', '*t1c*'], got {channel_patterns!r}")
    entries, problems = [], []
    for folder in sorted({root} | {p.parent for p in root.rglob("*") if p.is_file()}):
        files = [p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(NIFTI_EXTENSIONS)]
        found = [_match(files, pattern) for pattern in channel_patterns]
        if not any(found):
            continue
        bad = [f"{pattern!r} matches {len(m)} files {[p.name for p in m]}" for pattern, m in zip(channel_patterns, found) if len(m) != 1]
        if bad:
            problems.append(f"{folder}: " + "; ".join(bad) + f" (expected exactly one each of {sorted(p.name for p in files)})")
            continue
        entries.append({"image": [str(m[0]) for m in found]})
    if problems:
        raise DatalistError(f"{len(problems)} patient folder problem(s) in {root}:\n" + "\n".join(f"  - {p}" for p in problems))
    if not entries:
        raise DatalistError(f"no patient folder under '{root}': no NIfTI file matches the channel patterns {list(channel_patterns)}")
    return entries
