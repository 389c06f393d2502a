"""A classification bundle's classes come from the datalist the converter wrote; a disagreement between
``num_classes``, ``class_names`` and the datalist is refused at start-up, naming all three."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bundle_utils import TRAIN, stage_overrides, workflow
from conftest import ROOT
from tpp_components.data import DatalistError, check_classes, datalist_class_names

BRAIN = ROOT / "bundles" / "brain_mri_classification"


def _datalist(tmp: Path, names: list[str], labels: list[int]) -> Path:
    items = [{"image": f"/x/{i}.png", "label": lab} for i, lab in enumerate(labels)]
    path = tmp / "datalist.json"
    path.write_text(json.dumps({"labels": {str(i): n for i, n in enumerate(names)}, "num_classes": len(names),
                                "training": items, "validation": items[:1], "test": items[:1]}))
    return path


def test_class_names_come_from_the_datalist_else_the_default(tmp_path):
    path = _datalist(tmp_path, ["normal", "pneumonia"], [0, 1, 1])
    assert datalist_class_names(path, ["a", "b", "c"]) == ["normal", "pneumonia"]
    assert datalist_class_names(tmp_path / "missing.json", ["a", "b", "c"]) == ["a", "b", "c"]
    assert datalist_class_names([{"image": "x.png"}], ["a"]) == ["a"]  # an in-memory list (inference)
    path.write_text(json.dumps({"labels": {"0": "a", "2": "c"}, "training": []}))
    with pytest.raises(DatalistError, match=r"'labels' must number the classes 0..1"):
        datalist_class_names(path, ["a"])


@pytest.mark.parametrize("num_classes,names,says", [
    (2, ["a", "b", "c", "d"], ["class_names has 4 names", "declares num_classes 4", "label values [0, 1, 2, 3]"]),
    (4, ["a", "b", "c", "d"], []),
])
def test_check_classes_names_all_three(tmp_path, num_classes, names, says):
    path = _datalist(tmp_path, ["a", "b", "c", "d"], [0, 1, 2, 3])
    if not says:
        check_classes(num_classes, names, path)
        return
    with pytest.raises(ValueError) as err:
        check_classes(num_classes, names, path)
    for text in [*says, f"num_classes is {num_classes}", str(path), "--class_names"]:
        assert text in str(err.value), err.value


def _two_class_datalist(tmp_path: Path, small_demo_datalist: str) -> Path:
    """The demo datalist relabelled as a two-class dataset, as the converter writes one."""
    data = json.loads(Path(small_demo_datalist).read_text())
    for split in ("training", "validation", "test"):
        data[split] = [dict(item, label=min(item["label"], 1)) for item in data[split]]
    data["labels"], data["num_classes"] = {"0": "normal", "1": "abnormal"}, 2
    path = tmp_path / "two_classes.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("bundle", [None, BRAIN], ids=["breast_us", "brain_mri"])
def test_bundle_takes_its_classes_from_the_datalist(tmp_path, small_demo_datalist, bundle):
    path = _two_class_datalist(tmp_path, small_demo_datalist)
    extra = {} if bundle is None else {"bundle": bundle}
    random = {"backbone_weights": None, "allow_random_backbone": True, "init": "standard"}  # no stage 0 or TPP
    wf = workflow(TRAIN, **stage_overrides(tmp_path, str(path)), **random, **extra)
    assert wf.parser.get_parsed_content("class_names") == ["normal", "abnormal"]
    assert wf.parser.get_parsed_content("num_classes") == 2
    assert wf.parser.get_parsed_content("backbone#num_classes") == 2  # the classifier's outputs
    # an override wins over the datalist
    wf = workflow(TRAIN, **stage_overrides(tmp_path, str(path)), class_names=["no", "yes"], **random, **extra)
    assert wf.parser.get_parsed_content("class_names") == ["no", "yes"]


def test_bundle_refuses_num_classes_that_disagrees_with_the_datalist_at_start_up(tmp_path, small_demo_datalist):
    path = _two_class_datalist(tmp_path, small_demo_datalist)
    with pytest.raises(Exception) as err:
        workflow(TRAIN, **stage_overrides(tmp_path, str(path)), num_classes=3)
    text = str(err.value) + str(err.value.__cause__)
    assert "num_classes is 3" in text and "class_names has 2 names" in text and "declares num_classes 2" in text
    assert not list((tmp_path / "models").glob("model*.pt")) if (tmp_path / "models").exists() else True
