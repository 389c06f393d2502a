"""Convert BraTS-style patient folders into a validated MONAI multi-channel segmentation datalist.

Each patient folder holds one NIfTI file per MRI sequence and a label volume; ``--channels`` gives
one glob per input channel (case-insensitive), ``--label_patterns`` the label's. Entries are
``{"image": [channel files], "label": file}``, which MONAI's ``LoadImaged`` stacks into a
multi-channel volume. Every channel's header is checked against the label's before anything is
written. Split folders (``train/``, ``validation/``, ``test/``) are kept when every patient sits in
one (``--keep_folder_splits``); otherwise patients are split at random by ``--seed``.

Example::

    python tools/prepare_patient_folders.py --data_dir ../shared/data/brats2013 --output brats.json \\
        --channels "['flair*', 't1c*']"
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import fire

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.prepare_nifti_pairs import split_volumes  # noqa: E402
from tpp_components.data import SPLITS, DatalistError, split_fractions, write_datalist  # noqa: E402
from tpp_components.data.nifti_pairs import check_volume_pair  # noqa: E402
from tpp_components.data.patient_folders import DEFAULT_LABEL_PATTERNS, scan_patient_folders  # noqa: E402


def main(
    data_dir: str,
    output: str,
    channels: Sequence[str] = ("*flair*", "*t1c*"),
    label_patterns: Sequence[str] = DEFAULT_LABEL_PATTERNS,
    foreground: Sequence[int] | None = None,
    foreground_name: str = "tumour",
    keep_folder_splits: bool = True,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    name: str | None = None,
) -> str:
    """Find the patients, check their volumes, split and write ``output``.

    Args:
        data_dir: dataset folder.
        output: datalist JSON to write (atomically).
        channels: one glob per input channel, in channel order.
        label_patterns: globs tried in turn for the label file.
        foreground: label ids that form the foreground (default: every non-zero id, e.g. the
            whole tumour of BraTS); recorded in the datalist for the bundle's transforms.
        foreground_name: name of label 1.
        keep_folder_splits: use the split folders the patients sit in, when all do.
        seed / val_fraction / test_fraction: the random split by patient otherwise.
        name: the datalist's ``name``.

    Returns:
        the path of the written datalist.
    """
    if isinstance(channels, str):
        channels = [channels]
    if isinstance(label_patterns, str):
        label_patterns = [label_patterns]
    patients = scan_patient_folders(data_dir, channels, label_patterns)
    problems = [p for patient in patients for channel in patient.channels
                if (p := check_volume_pair(channel, patient.label)) is not None]
    if problems:
        raise DatalistError(f"{len(problems)} channel/label mismatch(es) (nothing was written):\n"
                            + "\n".join(f"  - {p}" for p in problems))
    entries = [{"image": [str(c) for c in p.channels], "label": str(p.label), "patient": p.folder.name,
                "split": p.split} for p in patients]
    if keep_folder_splits and all(p.split for p in patients):
        splits = {s: [{k: e[k] for k in ("image", "label", "patient")} for e in entries if e["split"] == s] for s in SPLITS}
        split_by = "folders"
    else:
        fractions = split_fractions(val_fraction, test_fraction)
        keyed = [{"image": e["label"], "entry": {k: e[k] for k in ("image", "label", "patient")}} for e in entries]
        splits = {s: [k["entry"] for k in part] for s, part in split_volumes(keyed, fractions, seed).items()}
        split_by = f"random by patient, seed {seed}"
    datalist = {
        "name": name or Path(data_dir).resolve().name,
        "labels": {"0": "background", "1": foreground_name},
        "num_classes": 2,
        "channels": list(channels),
        "foreground_label_ids": list(foreground) if foreground is not None else "nonzero",
        **splits,
        "split_by": split_by,
        "source": str(Path(data_dir).resolve()),
    }
    path = write_datalist(datalist, output)
    print("  ".join(f"{s} {len(splits[s])}" for s in SPLITS) + f"  (patients; split {split_by}; "
          f"{len(channels)} channels {list(channels)})")
    for split in SPLITS:
        if not splits[split]:
            print(f"warning: split {split!r} is empty")
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
