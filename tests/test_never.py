"""What may never happen: unpickling, network access at run time, a frozen backbone that moves.

Every stage of one 2D bundle (breast-ultrasound classification, ViT) and one 3D bundle (spleen CT,
SwinUNETR) runs in-process with ``torch.load`` allowed only with ``weights_only=True``,
``pickle.load(s)`` forbidden and sockets blocked; the frozen backbone is compared bit for bit with
stage 0's ``backbone.pt`` after TPP, fine-tuning and a resumed fine-tuning. Then every PEFT method
of the registry runs TPP and fine-tuning on every backbone kind of the bundles, hashing the frozen
parameters and buffers (BatchNorm running statistics included) before and after.
"""

from __future__ import annotations

import pickle
import socket
from collections import Counter
from pathlib import Path

import pytest
import torch
from ignite.engine import Events

from bundle_utils import run, workflow
from cases import METHODS
from conftest import ROOT, needs_weights
from test_spleen_ct_segmentation_bundle import write_synthetic_ct
from tools.make_demo_data import make_demo_dataset
from tools.prepare_busi import main as prepare_busi
from tools.prepare_image_mask_pairs import main as prepare_pairs
from tools.prepare_nifti_pairs import main as prepare_nifti
from tpp_components.data import load_datalist
from tpp_components.peft import available_methods, backbone_parameters
from volume_bundles import SMALL_SWIN, SMALL_UNETR, UNETR

CLASSIFICATION = ROOT / "bundles" / "breast_us_classification"
SEGMENTATION = ROOT / "bundles" / "breast_us_segmentation"
SPLEEN = ROOT / "bundles" / "spleen_ct_segmentation"


@pytest.fixture
def guards(monkeypatch) -> Counter:
    """No unpickling and no network for the duration of a test; counts the (allowed) weights-only loads."""
    counts: Counter = Counter()
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        if kwargs.get("weights_only") is not True:
            raise AssertionError(f"torch.load without weights_only=True: {args[:1]} {kwargs}")
        counts["torch.load"] += 1
        return real_load(*args, **kwargs)

    def no_pickle(*args, **kwargs):
        raise AssertionError("pickle.load / pickle.loads called")

    def no_network(*args, **kwargs):
        counts["network"] += 1  # counted too, in case a library swallows the error
        raise OSError(f"network access blocked in this test: {args[1:2] or args[:1]}")

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(torch.serialization, "load", weights_only_load)
    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    return counts


def test_the_guards_refuse(guards, tmp_path):
    torch.save({"x": torch.ones(1)}, tmp_path / "a.pt")
    with pytest.raises(AssertionError, match="weights_only"):
        torch.load(tmp_path / "a.pt")
    with pytest.raises(AssertionError, match="weights_only"):
        torch.load(tmp_path / "a.pt", weights_only=False)
    assert torch.load(tmp_path / "a.pt", weights_only=True)["x"].item() == 1.0 and guards["torch.load"] == 1
    with pytest.raises(AssertionError, match="pickle"):
        pickle.loads(pickle.dumps(1))
    with pytest.raises(OSError, match="blocked"):
        socket.create_connection(("example.org", 80), timeout=1)
    with pytest.raises(OSError, match="blocked"):
        socket.getaddrinfo("example.org", 80)
    assert guards["network"] == 2


@pytest.fixture(scope="module")
def classification_datalist(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("never_cls")
    data = make_demo_dataset(tmp / "data", num_per_class=5, image_size=64, seed=0)
    return str(prepare_busi(data_dir=str(data), output=str(tmp / "datalist.json"), seed=0))


@pytest.fixture(scope="module")
def segmentation_datalist(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("never_seg")
    data = make_demo_dataset(tmp / "data", num_per_class=5, image_size=64, seed=0, masks=True)
    return prepare_pairs(str(data), str(tmp / "datalist.json"), near_duplicates=False)


@pytest.fixture(scope="module")
def spleen_datalist(tmp_path_factory) -> str:
    tmp = tmp_path_factory.mktemp("never_spleen")
    ct, seg = write_synthetic_ct(tmp / "data", 3)  # one volume per split
    return prepare_nifti(str(tmp / "datalist.json"), images_dir=str(ct), labels_dir=str(seg), foreground=1,
                         foreground_name="spleen", val_fraction=0.34, test_fraction=0.34)


def _frozen(wf) -> dict[str, torch.Tensor]:
    """The workflow's frozen backbone (canonical names, parameters and buffers), copied."""
    net = wf.parser.get_parsed_content("network_def")
    return {k: v.detach().clone() for k, v in backbone_parameters(net, wf.parser.get_parsed_content("head_modules")).items()}


def _moved(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    assert set(before) == set(after), sorted(set(before) ^ set(after))[:5]
    return [k for k in before if not torch.equal(before[k], after[k])]


def _run_checked(configs: list[str], bundle: Path, reference: dict[str, torch.Tensor] | None = None, kill_in_epoch_2=False,
                 **overrides) -> dict[str, torch.Tensor]:
    """Run a stage; its frozen backbone must not move (and must equal ``reference``, stage 0's backbone)."""
    wf = workflow(configs, bundle=bundle, **overrides)
    before = _frozen(wf)
    if reference is not None:
        assert set(reference) <= set(before)
        assert [k for k in reference if not torch.equal(reference[k], before[k])] == [], "the stage-0 backbone did not load"
    if kill_in_epoch_2:  # stop dead after the first iteration of epoch 2, as kill -9 would
        trainer = wf.parser.get_parsed_content("train#trainer")
        per_epoch = len(wf.parser.get_parsed_content("train#dataloader"))

        def kill(engine):
            raise KeyboardInterrupt("killed")

        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=per_epoch + 1), kill)
        with pytest.raises(KeyboardInterrupt):
            wf.run()
    else:
        wf.run()
        wf.finalize()
    assert _moved(before, _frozen(wf)) == [], f"{configs}: frozen backbone moved"
    return before


def _every_stage(bundle: Path, datalist: str, tmp: Path, inference_input: str, switches: tuple[str, ...] = (),
                 **small) -> None:
    """Stage 0, TPP, fine-tuning (interrupted, then resumed), evaluation and inference into ``tmp``; ``switches``
    go after train.json / inference.json (a network with stage 0)."""
    common = {"datalist": datalist, "ckpt_dir": str(tmp / "models"), "num_epochs": 1, **small}
    base = ["train.json", *switches]
    run([*base, "pretrain.json"], bundle=bundle, output_dir=str(tmp / "logs" / "pretrain"), **common)
    stage0 = torch.load(tmp / "models" / "backbone.pt", weights_only=True)
    _run_checked([*base, "tpp.json"], bundle, stage0, output_dir=str(tmp / "logs" / "tpp"), **common)
    train = {**common, "output_dir": str(tmp / "logs" / "train"), "init": "tpp", "num_epochs": 2}
    _run_checked(base, bundle, stage0, kill_in_epoch_2=True, **train)
    _run_checked(base, bundle, stage0, resume=True, **train)
    run([*base, "evaluate.json"], bundle=bundle, output_dir=str(tmp / "eval"), **common)
    run(["inference.json", *switches], bundle=bundle, workflow_type="infer", input_dir=inference_input, output_dir=str(tmp / "pred"),
        ckpt_dir=str(tmp / "models"), **{k: v for k, v in small.items() if not k.startswith("train#")})
    assert any((tmp / "pred").rglob("*")), "inference wrote nothing"


@pytest.mark.slow
def test_2d_bundle_every_stage_without_pickle_or_network(guards, classification_datalist, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for item in load_datalist(classification_datalist)["test"][:2]:
        (images / Path(item["image"]).name).write_bytes(Path(item["image"]).read_bytes())
    _every_stage(CLASSIFICATION, classification_datalist, tmp_path, str(images), ("vit.json",),
                 **{"train#dataloader#batch_size": 8})
    # checkpoints, the stage-0 backbone and decoder, resume and evaluation all loaded (weights only)
    assert guards["torch.load"] >= 5 and guards["network"] == 0, guards


@pytest.mark.slow
def test_3d_bundle_every_stage_without_pickle_or_network(guards, spleen_datalist, tmp_path):
    _every_stage(SPLEEN, spleen_datalist, tmp_path, str(Path(spleen_datalist).parent / "data" / "ct"), **SMALL_SWIN,
                 **{"train#num_samples": 1})
    assert guards["torch.load"] >= 5 and guards["network"] == 0, guards


@needs_weights
def test_pretrained_weights_load_without_pickle(guards, segmentation_datalist):
    """LiteMedSAM's packaged checkpoint (the default backbone of two bundles) loads weights-only."""
    net = workflow(["train.json"], bundle=SEGMENTATION, datalist=segmentation_datalist, init="standard").parser.get_parsed_content("network")
    assert sum(p.numel() for p in net.parameters()) > 1_000_000 and guards["torch.load"] >= 1 and guards["network"] == 0


# ---------------------------------------------------------------- every method x every backbone kind

#: one configuration per registered method, plus DoRA (LoRA's variant with its own magnitude vectors)
METHOD_CASES = {"lora": METHODS["lora"], "dora": METHODS["dora"], "adapter": METHODS["adapter"],
                "prompt": METHODS["prompt_deep"], "ssf": METHODS["ssf"], "bitfit": METHODS["bitfit"]}

#: LiteMedSAM's TinyViT layout (conv stage with BatchNorm, windowed stages), scaled down and random: the
#: kind of network is what matters here (its packaged weights load in the test above)
SMALL_TINYVIT = {"backbone#embed_dims": [8, 16, 16, 32], "backbone#depths": [1, 1, 2, 1], "backbone#num_heads": [1, 2, 2, 4],
                 "backbone#window_sizes": [3, 3, 5, 3]}

#: the backbone kinds of the bundles: (bundle, switches, small-size overrides); every frozen backbone is random
BACKBONES = {
    "vit_2d": (CLASSIFICATION, ["vit.json"], {}),
    "tinyvit_2d": (CLASSIFICATION, [], {"image_size": 64, **SMALL_TINYVIT}),
    "unetr_2d": (SEGMENTATION, [UNETR], {"backbone#hidden_size": 48, "backbone#mlp_dim": 96, "backbone#feature_size": 8,
                                         "pretext#decoder_hidden": 16, "pretext#decoder_layers": 1, "pretext#decoder_heads": 2}),
    "tinyvit_segmenter_2d": (SEGMENTATION, [], {**SMALL_TINYVIT, "backbone#decoder_channels": 8}),
    "swinunetr_3d": (SPLEEN, [], {**SMALL_SWIN, "train#num_samples": 1}),
    "unetr_3d": (SPLEEN, [UNETR], {**SMALL_UNETR, "train#num_samples": 1}),
}

#: VPT needs a plain token sequence: windowed attention (Swin, TinyViT) refuses it (tested in test_peft_grid)
GRID = [(b, m) for b in BACKBONES for m in METHOD_CASES
        if not (m == "prompt" and b.startswith(("swinunetr", "tinyvit")))]


def test_grid_covers_every_registered_method():
    assert {c["method"] for c in METHOD_CASES.values()} == set(available_methods())


@pytest.mark.slow
@pytest.mark.parametrize("backbone,method", GRID)
def test_frozen_backbone_bit_identical_through_tpp_and_finetuning(backbone, method, request, tmp_path):
    bundle, switches, small = BACKBONES[backbone]
    datalist = request.getfixturevalue(
        {CLASSIFICATION: "classification_datalist", SEGMENTATION: "segmentation_datalist", SPLEEN: "spleen_datalist"}[bundle])
    # a random frozen backbone: bit-identity is what is tested, not what it learned
    common = {"datalist": datalist, "ckpt_dir": str(tmp_path / "models"), "num_epochs": 1, "peft": METHOD_CASES[method],
              "reuse_decoder": False, "backbone_weights": None, "allow_random_backbone": True, **small}
    if bundle != SPLEEN:
        common["train#dataloader#batch_size"] = 4
    base = ["train.json", *switches]
    tpp = _run_checked(base + ["tpp.json"], bundle, output_dir=str(tmp_path / "tpp"), init="standard", **common)
    assert any(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in tpp) or backbone not in (
        "tinyvit_2d", "tinyvit_segmenter_2d"), "BatchNorm statistics are not part of the compared state"
    _run_checked(base, bundle, tpp, output_dir=str(tmp_path / "train"), init="tpp", **common)
