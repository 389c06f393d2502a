"""Outputs that explain themselves: the predictions CSV, the confusion matrix, kept earlier files, inference folders."""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from PIL import Image

from tpp_components.data import DatalistError, image_datalist, is_mask_file, scan_image_mask_pairs
from tpp_components.data.datalist import MASK_FILE_PATTERN
from tpp_components.data.mask_pairs import DEFAULT_MASK_PATTERN
from tpp_components.handlers import ClassificationReport, ClassPredictionsSaver
from tpp_components.handlers.classification_report import classification_metrics
from tpp_components.io import keep_previous_version

CLASSES = ["normal", "benign", "malignant"]
#: per image: true label and class probabilities (three classes, ten images, batches of four)
LABELS = [0, 1, 2, 2, 1, 0, 1, 2, 0, 1]
PROBS = torch.tensor([
    [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1],
    [0.3, 0.3, 0.4], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6],
])


def _evaluator(names: list[str], batch_size: int = 4, with_labels: bool = True) -> tuple[Engine, list]:
    """An ignite engine whose decollated outputs look like MONAI's evaluator's: ``pred`` probabilities, one-hot ``label``."""
    items = [{"image": MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": n}), "pred": p,
              "label": torch.nn.functional.one_hot(torch.tensor(y), len(CLASSES)).float()}
             for n, p, y in zip(names, PROBS, LABELS)]
    batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
    keys = ("pred", "label") if with_labels else ("pred",)
    return Engine(lambda engine, batch: [{k: item[k] for k in keys} for item in batch]), batches


def _names(prefix: str = "/data/case") -> list[str]:
    return [f"{prefix} {i},{'x' if i % 2 else 'y'}.png" for i in range(len(LABELS))]  # a comma in a name must survive


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_predictions_csv_has_a_header_class_names_and_the_argmax(tmp_path):
    engine, batches = _evaluator(_names())
    ClassPredictionsSaver(CLASSES, tmp_path, "test_predictions.csv",
                          label_transform=lambda output: [o["label"] for o in output]).attach(engine)
    engine.run(batches)
    header, rows = _rows(tmp_path / "test_predictions.csv")
    assert header == ["image", "predicted_class", "p_normal", "p_benign", "p_malignant", "true_class"]
    assert [r["image"] for r in rows] == _names()  # every image once, in the loader's order, across batches
    probs = torch.tensor([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert torch.allclose(probs, PROBS, atol=1e-6)
    assert [r["predicted_class"] for r in rows] == [CLASSES[i] for i in PROBS.argmax(1).tolist()]
    assert [r["predicted_class"] for r in rows][:3] == ["normal", "benign", "malignant"]
    assert [r["true_class"] for r in rows] == [CLASSES[y] for y in LABELS]


def test_inference_csv_has_no_true_class_and_a_later_run_keeps_the_first_file(tmp_path, caplog):
    engine, batches = _evaluator(_names(), with_labels=False)
    saver = ClassPredictionsSaver(CLASSES, tmp_path)
    saver.attach(engine)
    engine.run(batches)
    first = (tmp_path / "predictions.csv").read_text()
    assert _rows(tmp_path / "predictions.csv")[0] == ["image", "predicted_class", "p_normal", "p_benign", "p_malignant"]
    stamp = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    os.utime(tmp_path / "predictions.csv", (stamp, stamp))

    engine, batches = _evaluator(_names("/other/case")[:2], with_labels=False)
    saver.attach(engine)
    with caplog.at_level(logging.WARNING, logger="tpp_components.handlers.class_predictions"):
        engine.run(batches)
    kept = tmp_path / "predictions.20260304-050607.csv"
    assert kept.read_text() == first  # the earlier run's file, unchanged, under its modification time
    assert [r["image"] for r in _rows(tmp_path / "predictions.csv")[1]] == _names("/other/case")[:2]
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(tmp_path / "predictions.csv") in warning and str(kept) in warning
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.20260304-050607.csv", "predictions.csv"]


def test_keep_previous_version_never_reuses_a_name(tmp_path):
    path = tmp_path / "test_predictions.csv"
    assert keep_previous_version(path) is None
    kept = []
    for text in ("one", "two", "three"):
        path.write_text(text)
        os.utime(path, (1_700_000_000, 1_700_000_000))
        kept.append(keep_previous_version(path))
    assert len(set(kept)) == 3 and [p.read_text() for p in kept] == ["one", "two", "three"]
    assert kept[1].name == kept[0].name.replace(".csv", "-1.csv") and path.read_text() == "three"


def test_logits_and_a_wrong_class_count_are_refused_naming_the_image(tmp_path):
    engine = Engine(lambda e, batch: [{"pred": torch.tensor([2.0, -1.0, 0.5])}])
    ClassPredictionsSaver(CLASSES, tmp_path).attach(engine)
    image = {"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": "/in/a.png"})}
    with pytest.raises(ValueError, match=r"'/in/a.png' is not a probability vector.*softmax"):
        engine.run([[image]])
    engine = Engine(lambda e, batch: [{"pred": torch.tensor([0.5, 0.5])}])
    ClassPredictionsSaver(CLASSES, tmp_path).attach(engine)
    with pytest.raises(ValueError, match=r"'/in/a.png' has 2 values but class_names names 3 classes"):
        engine.run([[image]])
    assert not (tmp_path / "predictions.csv").exists()
    with pytest.raises(ValueError, match="distinct"):
        ClassPredictionsSaver(["a", "a"], tmp_path)


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    import tpp_components.handlers.class_predictions as module

    engine, batches = _evaluator(_names())
    ClassPredictionsSaver(CLASSES, tmp_path).attach(engine)
    monkeypatch.setattr(module.idist, "get_rank", lambda: 1)
    engine.run(batches)
    assert not (tmp_path / "predictions.csv").exists()


def _rank_writes(rank: int, world_size: int, port: int, output_dir: str) -> None:
    """One rank of a gloo group: its own half of the images through an engine with the saver attached."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        names = _names()[rank::world_size]  # as DistributedSampler(shuffle=False) deals them
        engine, batches = _evaluator(names, batch_size=2)
        ClassPredictionsSaver(CLASSES, output_dir, label_transform=lambda output: [o["label"] for o in output]).attach(engine)
        engine.run(batches)
    finally:
        dist.destroy_process_group()


def test_two_processes_write_one_file_with_the_rows_of_both_ranks(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_rank_writes, args=(2, port, str(tmp_path)), nprocs=2)
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]  # rank 1 wrote nothing (no kept copy either)
    rows = _rows(tmp_path / "predictions.csv")[1]
    assert sorted(r["image"] for r in rows) == sorted(_names()[0::2] + _names()[1::2])


def test_confusion_matrix_sums_to_the_images_and_matches_the_csv(tmp_path):
    engine, batches = _evaluator(_names())
    report = ClassificationReport(CLASSES, output_dir=tmp_path)
    report.attach(engine)
    ClassPredictionsSaver(CLASSES, tmp_path, "test_predictions.csv",
                          label_transform=lambda output: [o["label"] for o in output]).attach(engine)
    engine.run(batches)
    written = json.loads((tmp_path / "classification_report.json").read_text())
    matrix = written["confusion_matrix"]
    assert matrix["rows"] == "true class" and matrix["columns"] == "predicted class" and matrix["class_names"] == CLASSES
    counts = np.array(matrix["counts"])
    assert counts.sum() == len(LABELS) and counts.sum(1).tolist() == np.bincount(LABELS, minlength=3).tolist()
    from_csv = np.zeros((3, 3), dtype=int)
    for row in _rows(tmp_path / "test_predictions.csv")[1]:
        from_csv[CLASSES.index(row["true_class"]), CLASSES.index(row["predicted_class"])] += 1
    assert (counts == from_csv).all()
    assert counts.trace() / counts.sum() == pytest.approx(written["accuracy"])
    for c, name in enumerate(CLASSES):  # per-class precision / recall read off the matrix
        assert written["per_class"][name]["recall"] == pytest.approx(counts[c, c] / counts[c].sum())
        assert written["per_class"][name]["precision"] == pytest.approx(counts[c, c] / counts[:, c].sum())
    png = tmp_path / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 100


def test_confusion_matrix_known_values():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    report = classification_metrics(probs, torch.tensor([0, 1, 2, 2]), ["a", "b", "c"])
    assert report["confusion_matrix"]["counts"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    return path


def test_inference_folder_is_read_recursively_without_masks(tmp_path):
    images = [_png(tmp_path / "benign" / "benign (1).png"), _png(tmp_path / "normal" / "deeper" / "n.PNG"),
              _png(tmp_path / "top.png"), _png(tmp_path / "hc18" / "000_HC.png")]
    for mask in ("benign/benign (1)_mask.png", "benign/benign (1)_mask_1.png", "hc18/000_HC_Annotation.png",
                 "hc18/001_HC_annotation.png", ".hidden/x.png", "normal/.thumb.png"):
        _png(tmp_path / mask)
    (tmp_path / "notes.txt").write_text("not an image")
    assert image_datalist(tmp_path, recursive=True) == [{"image": str(p)} for p in sorted(images)]
    assert image_datalist(tmp_path) == [{"image": str(tmp_path / "top.png")}]  # the top level only, by default


def test_a_folder_of_masks_only_is_refused_saying_so(tmp_path):
    _png(tmp_path / "a" / "x_mask.png")
    _png(tmp_path / "b" / "000_HC_Annotation.png")
    with pytest.raises(DatalistError, match=r"holds no image, sub-folders included.*2 file\(s\) skipped as masks") as err:
        image_datalist(tmp_path, recursive=True)
    assert str(tmp_path) in str(err.value) and ".png" in str(err.value)


def test_a_folder_of_class_folders_read_flat_says_how_to_read_it(tmp_path):
    _png(tmp_path / "benign" / "a.png")
    _png(tmp_path / "normal" / "b.png")
    _png(tmp_path / "masks_only" / "c_mask.png")
    with pytest.raises(DatalistError, match=r"holds no image: .*sub-folders \['benign', 'normal'\] do: .*recursive=True"):
        image_datalist(tmp_path)


@pytest.mark.parametrize("name,mask", [("x_mask.png", True), ("x_MASK_2.png", True), ("000_HC_Annotation.png", True),
                                       ("mask.png", False), ("x_masked.png", False), ("annotation_x.png", False)])
def test_one_mask_pattern_for_readers_and_pairing(name, mask, tmp_path):
    assert DEFAULT_MASK_PATTERN is MASK_FILE_PATTERN  # the pairing tool and the readers share it, not copies
    assert is_mask_file(tmp_path / name) is mask


def test_hc18_annotations_pair_with_their_images(tmp_path):
    for stem in ("000_HC", "001_HC"):
        _png(tmp_path / f"{stem}.png")
        _png(tmp_path / f"{stem}_Annotation.png")
    pairs = scan_image_mask_pairs(tmp_path)
    assert [(p.image.name, [m.name for m in p.masks]) for p in pairs] == [
        ("000_HC.png", ["000_HC_Annotation.png"]), ("001_HC.png", ["001_HC_Annotation.png"])]
