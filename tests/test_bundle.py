"""The breast-ultrasound bundle end to end through ConfigWorkflow, on synthetic and real images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle_utils import BUNDLE, CONFIGS, VIT, check_export, evaluation_ckpt_dir, run, stage_overrides, workflow
from bundle_utils import VIT_EVALUATE as EVALUATE
from bundle_utils import VIT_INFERENCE as INFERENCE
from bundle_utils import VIT_PRETRAIN as PRETRAIN
from bundle_utils import VIT_TPP as TPP
from bundle_utils import VIT_TRAIN as TRAIN
from conftest import require_data
from tools.make_demo_data import make_demo_dataset
from tools.prepare_busi import main as prepare_busi
from tpp_components.data import load_datalist, write_datalist
from tpp_components.peft import TargetParameterError, read_manifest


@pytest.fixture(scope="module")
def demo_datalist(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("demo")
    data = make_demo_dataset(tmp / "data", num_per_class=10, image_size=64, seed=0)
    return str(prepare_busi(data_dir=str(data), output=str(tmp / "datalist.json"), seed=0))


@pytest.mark.parametrize(
    "configs,workflow_type",
    [(PRETRAIN, "train"), (TPP, "train"), (TRAIN, "train"), (EVALUATE, "train"), (INFERENCE, "infer")],
)
def test_check_properties(configs, workflow_type, demo_datalist, tmp_path):
    image = Path(load_datalist(demo_datalist)["test"][0]["image"])
    (tmp_path / image.name).write_bytes(image.read_bytes())
    overrides = {"datalist": demo_datalist} if workflow_type == "train" else {"input_dir": str(tmp_path)}
    if configs in (TPP, TRAIN):
        # properties only: no stage-0 / TPP file needed
        overrides.update(backbone_weights=None, init="standard", allow_random_backbone=True, reuse_decoder=False)
    if "evaluate.json" in configs:
        overrides.update(evaluation_ckpt_dir(tmp_path))
    wf = workflow(configs, workflow_type=workflow_type, **overrides)
    assert not wf.check_properties()


def _pipeline(tmp: Path, datalist: str, peft: dict | None = None) -> dict:
    """Stage 0 -> TPP -> train (init tpp) -> evaluate -> inference, one epoch each."""
    common = stage_overrides(tmp, datalist)
    if peft is not None:
        common["peft"] = peft
    pre = {k: v for k, v in common.items() if k != "peft"}
    run(PRETRAIN, output_dir=str(tmp / "logs" / "pretrain"), **pre)
    tpp = run(TPP, output_dir=str(tmp / "logs" / "tpp"), **common)
    train = run(TRAIN, output_dir=str(tmp / "logs" / "train"), init="tpp", **common)
    evaluate = run(EVALUATE, output_dir=str(tmp / "eval"), **common)
    images = tmp / "images"
    images.mkdir()
    for item in load_datalist(datalist)["test"][:3]:
        (images / Path(item["image"]).name).write_bytes(Path(item["image"]).read_bytes())
    infer_overrides = {"input_dir": str(images), "output_dir": str(tmp / "pred"), "ckpt_dir": str(tmp / "models")}
    if peft is not None:
        infer_overrides["peft"] = peft
    run(INFERENCE, workflow_type="infer", **infer_overrides)
    return {"tpp": tpp, "train": train, "evaluate": evaluate}


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a predictions CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _check_outputs(tmp: Path, datalist: str, num_images: int = 3) -> None:
    models = tmp / "models"
    for name in ("backbone.pt", "tpp_target_parameters.safetensors", "model.pt", "target_parameters.safetensors"):
        assert (models / name).is_file(), name
    classes = ["normal", "benign", "malignant"]
    report = json.loads((tmp / "eval" / "classification_report.json").read_text())
    assert set(report["per_class"]) == set(classes)
    assert 0.0 <= report["accuracy"] <= 1.0 and 0.0 <= report["macro_auc"] <= 1.0
    # inference: its own file, a header, the predicted class by name, the argmax of the probabilities
    header, rows = _csv_rows(tmp / "pred" / "predictions.csv")
    assert header == ["image", "predicted_class", "p_normal", "p_benign", "p_malignant"] and len(rows) == num_images
    for row in rows:
        probs = [float(row[f"p_{c}"]) for c in classes]
        assert abs(sum(probs) - 1) < 1e-4 and row["predicted_class"] == classes[probs.index(max(probs))]
    # evaluation: test_predictions.csv beside the report, one row per test image, and the confusion matrix agrees
    test = load_datalist(datalist)["test"]
    header, rows = _csv_rows(tmp / "eval" / "test_predictions.csv")
    assert header == ["image", "predicted_class", "p_normal", "p_benign", "p_malignant", "true_class"]
    assert sorted(r["image"] for r in rows) == sorted(item["image"] for item in test)
    assert not (tmp / "eval" / "predictions.csv").exists()
    truth = {item["image"]: classes[item["label"]] for item in test}
    assert all(r["true_class"] == truth[r["image"]] for r in rows)
    counts = report["confusion_matrix"]["counts"]
    assert sum(map(sum, counts)) == len(test) == report["num_samples"]
    assert counts == [[sum(r["true_class"] == t and r["predicted_class"] == p for r in rows) for p in classes] for t in classes]
    assert (tmp / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    # TPP and fine-tuning saw the same frozen backbone
    assert read_manifest(models / "tpp_target_parameters.safetensors")["backbone"]["fingerprint"] == \
        read_manifest(models / "target_parameters.safetensors")["backbone"]["fingerprint"]


def _strict_load_into_network_def(tmp: Path, peft: dict | None) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / c) for c in INFERENCE])
    parser["bundle_root"] = str(BUNDLE)
    if peft is not None:
        parser["peft"] = peft
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(tmp / "models" / "model.pt", weights_only=True), strict=True)
    return net


def test_pipeline_lora_on_synthetic_data(demo_datalist, tmp_path):
    workflows = _pipeline(tmp_path, demo_datalist)
    _check_outputs(tmp_path, demo_datalist)
    # evaluation speaks of test metrics: no key metric to improve on ("new best metric"), the report's as test_*
    evaluator = workflows["evaluate"].parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.key_metric_name is None
    assert sorted(evaluator.state.metrics) == ["test_accuracy", "test_balanced_accuracy", "test_macro_auc"]
    report = json.loads((tmp_path / "eval" / "classification_report.json").read_text())
    assert evaluator.state.metrics["test_macro_auc"] == report["macro_auc"]
    net = _strict_load_into_network_def(tmp_path, None)
    assert type(net).__name__ == "ViTClassifier"  # merged: plain network, no LoRA module left
    assert not any("lora" in k for k in net.state_dict())
    # the frozen backbone went through TPP and fine-tuning bit-identical: untouched tensors of
    # the merged model equal stage 0's
    backbone = torch.load(tmp_path / "models" / "backbone.pt", weights_only=True)
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    untouched = [k for k in backbone if ".attn." not in k]
    assert untouched and all(torch.equal(backbone[k], model[k]) for k in untouched)
    changed = [k for k in backbone if ".attn.qkv.weight" in k and not torch.equal(backbone[k], model[k])]
    assert changed, "the merged LoRA update did not reach the qkv weights"
    # the zoo's TorchScript export of the merged model gives the same outputs
    check_export(BUNDLE, INFERENCE, tmp_path / "models" / "model.pt", [2, 1, 64, 64], atol=1e-5)


def test_pipeline_adapter_saves_rebuildable_model(demo_datalist, tmp_path):
    peft = {"method": "adapter", "bottleneck": 8}
    _pipeline(tmp_path, demo_datalist, peft)
    _check_outputs(tmp_path, demo_datalist)
    net = _strict_load_into_network_def(tmp_path, peft)
    assert any(".adapter." in k for k in net.state_dict())


def test_init_switch_changes_only_the_target_parameters_and_each_init_keeps_its_model(demo_datalist, tmp_path):
    common = stage_overrides(tmp_path, demo_datalist)
    run(PRETRAIN, output_dir=str(tmp_path / "pre"), **common)
    run(TPP, output_dir=str(tmp_path / "tpp"), **common)
    nets = {}
    for init in ("tpp", "standard"):
        nets[init] = workflow(TRAIN, init=init, **common).parser.get_parsed_content("network")
    tpp_state, std_state = nets["tpp"].state_dict(), nets["standard"].state_dict()
    assert tpp_state.keys() == std_state.keys()
    differ = {k for k in tpp_state if not torch.equal(tpp_state[k], std_state[k])}
    assert differ and all(".lora_" in k for k in differ), sorted(differ)
    assert all(not std_state[k].any() for k in std_state if ".lora_B." in k)  # LoRA's standard init: B = 0
    # fine-tuning from either start into one ckpt_dir: the default init's run writes model.pt, the other its own
    # model_<init>.pt and target parameters; evaluation reads the model of the init it is given
    models = Path(common["ckpt_dir"])
    for init in ("tpp", "standard"):
        run(TRAIN, output_dir=str(tmp_path / f"train_{init}"), init=init, **common)
    tuned = {n: torch.load(models / n, weights_only=True) for n in ("model.pt", "model_standard.pt")}
    assert tuned["model.pt"].keys() == tuned["model_standard.pt"].keys()
    assert any(not torch.equal(tuned["model.pt"][k], tuned["model_standard.pt"][k]) for k in tuned["model.pt"])
    assert {"target_parameters.safetensors", "target_parameters_standard.safetensors"} <= {p.name for p in models.iterdir()}
    for init, name in (("tpp", "model.pt"), ("standard", "model_standard.pt")):
        wf = run(EVALUATE, output_dir=str(tmp_path / f"eval_{init}"), init=init, **common)
        assert wf.parser.get_parsed_content("model_file") == str(models / name)
        assert (tmp_path / f"eval_{init}" / "classification_report.json").is_file()


def test_tpp_resumes_from_its_checkpoint(demo_datalist, tmp_path):
    common = stage_overrides(tmp_path, demo_datalist)
    run(PRETRAIN, output_dir=str(tmp_path / "pre"), **common)
    logs = str(tmp_path / "tpp")
    first = run(TPP, output_dir=logs, **common)
    iters = first.parser.get_parsed_content("train#trainer").state.iteration
    resumed = run(TPP, output_dir=logs, resume=True, **{**common, "num_epochs": 2})
    state = resumed.parser.get_parsed_content("train#trainer").state
    assert state.epoch == 2 and state.iteration == 2 * iters
    assert (tmp_path / "tpp" / "tpp_checkpoint_epoch=2.pt").is_file()


def test_bad_target_parameters_are_refused(demo_datalist, tmp_path):
    common = stage_overrides(tmp_path, demo_datalist)
    run(PRETRAIN, output_dir=str(tmp_path / "pre"), **common)
    run(TPP, output_dir=str(tmp_path / "tpp"), **common)
    with pytest.raises(RuntimeError) as err:
        workflow(TRAIN, init="tpp", peft={"method": "lora", "r": 4, "alpha": 16, "target_modules": "attention"},
                 **common).parser.get_parsed_content("network")
    # MONAI wraps the component's error: the cause names the file and the differing value
    assert isinstance(err.value.__cause__, TargetParameterError)
    assert "r: saved 8 vs network 4" in str(err.value.__cause__)


def test_pipeline_on_real_busi(tmp_path):
    busi = require_data("busi_classification")
    full = load_datalist(prepare_busi(data_dir=str(busi), output=str(tmp_path / "full.json"), seed=0))
    # a stratified slice of the real split keeps the test to seconds
    small = {**full, **{s: [d for c in range(3) for d in [x for x in full[s] if x["label"] == c][:n]]
                        for s, n in (("training", 8), ("validation", 3), ("test", 3))}}
    datalist = str(write_datalist(small, tmp_path / "busi_small.json"))
    _pipeline(tmp_path / "run", datalist)
    _check_outputs(tmp_path / "run", datalist)


def test_stage0_keeps_the_best_epochs_backbone_and_decoder(demo_datalist, tmp_path):
    """Lower pretext loss is better: backbone.pt and pretext_decoder.pt are the lowest-loss epoch's."""
    from ignite.engine import Events

    from tpp_components.handlers import BackboneState, PretextDecoderState

    wf = workflow(PRETRAIN, **stage_overrides(tmp_path, demo_datalist, num_epochs=4), output_dir=str(tmp_path / "logs"))
    network_def, pretext = wf.parser.get_parsed_content("network_def"), wf.parser.get_parsed_content("pretext#model")
    heads = wf.parser.get_parsed_content("head_modules")
    history: list[tuple[float, dict, dict]] = []

    def record(engine):
        history.append((float(engine.state.metrics["val_pretext_loss"]), BackboneState(network_def, heads).state_dict(),
                        PretextDecoderState(pretext).state_dict()))

    wf.parser.get_parsed_content("validate#evaluator").add_event_handler(Events.EPOCH_COMPLETED, record)
    wf.run()
    wf.finalize()
    losses = [h[0] for h in history]
    best, worst = losses.index(min(losses)), losses.index(max(losses))
    assert len(losses) == 4 and best != worst, losses
    saved = torch.load(tmp_path / "models" / "backbone.pt", weights_only=True)
    decoder = torch.load(tmp_path / "models" / "pretext_decoder.pt", weights_only=True)
    for state, expected in ((saved, history[best][1]), (decoder, history[best][2])):
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state), f"not the best epoch's ({losses})"
    assert any(not torch.equal(saved[k], history[worst][1][k]) for k in saved)


def test_tpp_starts_from_the_stage0_decoder_or_a_fresh_one(demo_datalist, tmp_path):
    from tpp_components.pretext import PretextDecoderError, decoder_state_dict

    common = stage_overrides(tmp_path, demo_datalist)
    run(PRETRAIN, output_dir=str(tmp_path / "pre"), **common)
    saved = torch.load(tmp_path / "models" / "pretext_decoder.pt", weights_only=True)
    reused = decoder_state_dict(workflow(TPP, **common).parser.get_parsed_content("pretext#model"))
    assert reused.keys() == saved.keys() and all(torch.equal(reused[k], saved[k]) for k in saved)
    fresh = decoder_state_dict(workflow(TPP, reuse_decoder=False, **common).parser.get_parsed_content("pretext#model"))
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)
    # a missing decoder is an error naming the file, not a silent fresh start
    with pytest.raises(RuntimeError) as err:
        workflow(TPP, pretext_decoder=str(tmp_path / "nowhere.pt"), **common).parser.get_parsed_content("pretext#model")
    assert isinstance(err.value.__cause__, PretextDecoderError) and "nowhere.pt" in str(err.value.__cause__)


@pytest.mark.parametrize("switch, in_channels", [(None, 3), (VIT, 1)])
def test_inference_network_and_peft_equal_train(switch, in_channels):
    """inference.json runs alone (MONAI Label, the zoo's checks): its network and peft must be train.json's, for the
    default network (LiteMedSAM's TinyViT) and under the own-ViT switch."""
    train, infer = ConfigParser(), ConfigParser()
    train.read_config([str(CONFIGS / c) for c in ["train.json", switch] if c])
    infer.read_config([str(CONFIGS / c) for c in ["inference.json", switch] if c])
    for parser in (train, infer):
        parser["bundle_root"] = str(BUNDLE)
    for key in ("peft", "freeze_backbone", "pooling", "head_norm", "image_size", "patch_size", "num_classes", "class_names"):
        assert train.get_parsed_content(key) == infer.get_parsed_content(key), key
    resolved = [p.get_parsed_content("backbone", instantiate=False).get_config() for p in (train, infer)]
    assert resolved[0] == resolved[1] and resolved[0]["in_channels"] == in_channels
    assert train["preprocessing"] == infer["preprocessing"]["transforms"]


def test_inference_reads_class_folders_keeps_an_earlier_file_and_refuses_an_empty_folder(demo_datalist, tmp_path):
    from tpp_components.data import DatalistError

    common = stage_overrides(tmp_path, demo_datalist)
    run(PRETRAIN, output_dir=str(tmp_path / "pre"), **common)
    run(TRAIN, output_dir=str(tmp_path / "train"), init="standard", **common)
    images = tmp_path / "images"
    test = load_datalist(demo_datalist)["test"]
    # a folder of class folders (the converters' layout), upper-case extensions, an image at the top level too
    written = [images / "normal" / "case 0.Jpg", images / "benign" / "deeper" / "case 1.PNG", images / "case 2.png"]
    for path, item in zip(written, test):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(Path(item["image"]).read_bytes())
    for mask in ("normal/case 0_mask.png", "normal/case 0_mask_1.png", "benign/case 1_Annotation.png"):  # masks: skipped
        (images / mask).write_bytes(Path(test[0]["image"]).read_bytes())
    # the standard init's run wrote model_standard.pt (model.pt is the default init's): inference is given it
    infer = {"workflow_type": "infer", "output_dir": str(tmp_path / "pred"), "model_file": str(tmp_path / "models" / "model_standard.pt")}
    run(INFERENCE, input_dir=str(images), **infer)
    header, rows = _csv_rows(tmp_path / "pred" / "predictions.csv")
    assert header[:2] == ["image", "predicted_class"] and sorted(r["image"] for r in rows) == sorted(map(str, written))
    first = (tmp_path / "pred" / "predictions.csv").read_text()
    # a second run into the same folder keeps the first run's file under a stamped name
    run(INFERENCE, input_dir=str(images / "normal"), **infer)
    assert [r["image"] for r in _csv_rows(tmp_path / "pred" / "predictions.csv")[1]] == [str(written[0])]
    kept = list((tmp_path / "pred").glob("predictions.*.csv"))
    assert len(kept) == 1 and kept[0].read_text() == first
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RuntimeError) as err:
        run(INFERENCE, workflow_type="infer", input_dir=str(empty), output_dir=str(tmp_path / "pred2"), model_file=infer["model_file"])
    assert isinstance(err.value.__cause__, DatalistError) and str(empty) in str(err.value.__cause__)


def test_backbone_state_honours_strict(tmp_path):
    from tpp_components.handlers import BackboneState

    net = ConfigParser.load_config_files([str(CONFIGS / c) for c in TRAIN])
    parser = ConfigParser(net)
    backbone = parser.get_parsed_content("backbone")
    view = BackboneState(backbone, ["classification_head"])
    state = view.state_dict()
    assert not any(k.startswith("classification_head") for k in state)
    partial = {k: v for k, v in state.items() if not k.startswith("blocks.0.")}
    with pytest.raises(KeyError, match="missing keys"):
        view.load_state_dict(partial, strict=True)
    with pytest.raises(KeyError, match="unexpected keys"):
        view.load_state_dict({**state, "decoder_pred.weight": torch.zeros(1)}, strict=True)
    view.load_state_dict(partial, strict=False)
    view.load_state_dict(state, strict=True)
