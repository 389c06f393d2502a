"""Make a datalist's ``test`` section a folder of class folders: evaluate a bundle on one's own test images.

The datalist (a converter's output, e.g. ``tools/prepare_busi.py``'s) keeps its ``training`` and
``validation`` sections, its class names and label indices, and every other key; its ``test`` section
becomes the images of ``--test_dir`` (``<class>/<image>``, class folders named as the datalist's
classes; a class may have no folder). The new datalist is written to ``--output``, atomically; the input
is replaced only where ``--output`` names it. A test image that the training or validation section also
lists stops the conversion; a near-duplicate of one (the same scan re-encoded) is reported with examples.

This is a tool of its own rather than a mode of ``tools/prepare_class_folders.py``: it edits a datalist
written before instead of splitting a dataset, so none of that converter's split options apply, and the
converter keeps its required ``--data_dir``. To build a datalist from class folders and a separate test
folder in one go, give the converter ``--test_dir``.

Example::

    python tools/add_test_folder.py --datalist busi.json --test_dir /data/my_test_images --output busi_my_test.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import fire

# the repository root: ``tools`` and (in a checkout that is not installed) ``tpp_components``
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools.prepare_class_folders import print_split_counts, spanning_warning  # noqa: E402
from tpp_components.data import (  # noqa: E402
    DatalistError,
    datalist_class_names,
    load_datalist,
    near_duplicate_groups,
    scan_class_folders,
    validate_datalist,
    write_datalist,
)


def main(
    datalist: str,
    test_dir: str,
    output: str,
    near_duplicates: bool = True,
    max_distance: int = 4,
    check_images: bool = True,
) -> str:
    """Write ``output``: ``datalist`` with its ``test`` section replaced by the images of ``test_dir``.

    Args:
        datalist: a classification datalist with ``"labels"`` (``{"0": name, ...}``, as the converters write).
        test_dir: folder holding one sub-folder of test images per class, named as in the datalist.
        output: path of the datalist JSON to write (atomically); relative image paths of the datalist are
            read from its folder, as the bundles read them.
        near_duplicates: report test images within ``max_distance`` hash bits of a training or validation image.
        max_distance: largest Hamming distance between 256-bit difference hashes that counts as a near-duplicate.
        check_images: open every image to make sure it can be read.

    Returns:
        the path of the written datalist.

    Raises:
        DatalistError: the datalist is unreadable or names no classes; a folder of ``test_dir`` is no class of
            it; a test image is also in its training or validation section; an image is missing or unreadable.
    """
    data = load_datalist(datalist)
    classes = tuple(datalist_class_names(data, default=()))
    if not classes:
        raise DatalistError(f"datalist {datalist} has no 'labels' ({{\"0\": class name, ...}}, as the converters "
                            "write): the classes of the test folder cannot be matched to label indices")
    test = scan_class_folders(test_dir, classes, missing_ok=True, classes_from=f"datalist {datalist}")
    replaced = len(data.get("test") or [])
    out = {**data, "test": test, "test_source": str(Path(test_dir).expanduser().resolve())}
    base = Path(output).resolve().parent
    validate_datalist(out, classes, base_dir=base, check_images=check_images)  # a test image listed twice stops here
    report = []
    if near_duplicates:
        known = [(split, item["image"]) for split in ("training", "validation") for item in out[split]]
        sides = [split for split, _ in known] + ["test"] * len(test)
        images = [str(base / image) for _, image in known] + [item["image"] for item in test]
        groups = near_duplicate_groups(images, max_distance)
        what = (f"the test folder and the datalist's training / validation sections (within {max_distance} bits; "
                "a test score on them may reflect memory)")
        report = spanning_warning(what, images, groups, sides)
    path = write_datalist(out, output)

    print_split_counts(out, classes)
    replaces = f" (replaces the {replaced} test images of {datalist})" if replaced else ""
    print(f"test: the folder {out['test_source']}{replaces}")
    for line in report:
        print(line)
    return str(path)


if __name__ == "__main__":
    fire.Fire(main)
