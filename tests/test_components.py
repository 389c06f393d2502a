"""Atomic writes, the classification metrics, the head-norm statistics and the pretext modules' contracts."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events

from cases import make_backbone
from tpp_components.handlers import HeadNormStatistics
from tpp_components.handlers.classification_report import classification_metrics
from tpp_components.io import atomic_path
from tpp_components.networks import build_network
from tpp_components.peft import TargetParameterError, load_target_parameters, save_target_parameters
from tpp_components.pretext import MaskedAutoencoder, SimMIM
from tpp_components.pretext.patches import patchify


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "model.pt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_manifest_problems_are_named(tmp_path):
    """The manifest lives in the file's header (one atomic file); an earlier file's manifest beside it still reads."""
    from safetensors.torch import load_file, save_file

    from tpp_components.peft import read_manifest

    net = build_network(make_backbone("vit", 2), peft={"method": "lora", "r": 2}, allow_random_backbone=True)
    path = save_target_parameters(net, tmp_path / "tp.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["tp.safetensors"]
    manifest = read_manifest(path)
    assert manifest["method"] == "lora" and load_target_parameters(net, path) is net
    # an earlier file: tensors without a manifest in the header, the manifest beside them
    earlier = tmp_path / "earlier.safetensors"
    save_file(load_file(str(path)), str(earlier), metadata={"format": manifest["format"]})
    earlier.with_suffix(".json").write_text(json.dumps(manifest))
    assert read_manifest(earlier) == manifest and load_target_parameters(net, earlier) is net
    earlier.with_suffix(".json").write_text("{not json")
    with pytest.raises(TargetParameterError, match="earlier.json' is not valid JSON"):
        load_target_parameters(net, earlier)
    earlier.with_suffix(".json").unlink()
    with pytest.raises(TargetParameterError, match="have no manifest: none in the file's header, no '.*earlier.json'"):
        load_target_parameters(net, earlier)
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TargetParameterError, match="garbage.safetensors' cannot be read as safetensors"):
        read_manifest(tmp_path / "garbage.safetensors")
    with pytest.raises(ValueError, match="safetensors"):
        save_target_parameters(net, tmp_path / "tp.pt")


def test_classification_metrics_known_values():
    probs = torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    labels = torch.tensor([0, 1, 2, 2])
    report = classification_metrics(probs, labels, ["a", "b", "c"])
    assert report["accuracy"] == pytest.approx(0.75)
    assert report["balanced_accuracy"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert report["majority_rate"] == pytest.approx(0.5)
    assert report["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert report["per_class"]["a"]["precision"] == pytest.approx(0.5)
    assert report["per_class"]["b"]["auc"] == pytest.approx(1.0)
    json.dumps(report)


@pytest.mark.parametrize("dims", [2, 3])
def test_patchify_matches_conv_patch_embedding_order(dims):
    vit = make_backbone("vit", dims)
    x = torch.rand(1, 1, *(32,) * dims)
    conv = vit.patch_embedding.patch_embeddings
    with torch.no_grad():
        tokens = conv(x).flatten(2).transpose(1, 2)
        flat_weight = conv.weight.reshape(conv.weight.shape[0], -1)  # (hidden, c * p^d) in (c, p...) order
        by_hand = patchify(x, 8) @ flat_weight.T + conv.bias  # in_channels = 1, so (p..., c) == (c, p...)
    assert torch.allclose(tokens, by_hand, atol=1e-5)


@pytest.mark.parametrize("kind,dims", [("vit", 2), ("unetr", 3), ("swinunetr", 2)])
def test_pretext_losses_decrease_on_a_fixed_batch(kind, dims):
    torch.manual_seed(0)
    net = make_backbone(kind, dims)
    size = 64 if kind == "swinunetr" else 32
    pretext = MaskedAutoencoder(net, decoder_hidden=16, decoder_layers=1, decoder_heads=2) if kind != "swinunetr" else SimMIM(net, dims, 1)
    x = torch.rand(2, 1, *(size,) * dims)
    opt = torch.optim.Adam(pretext.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # same masks every step: the loss must go down
        loss = pretext(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_class_weights_inverse_frequency_and_empty_class():
    from tpp_components.data import class_weights

    weights = class_weights([{"label": 0}] * 6 + [{"label": 1}] * 2 + [{"label": 2}] * 4, 3)
    assert torch.allclose(weights, torch.tensor([12 / 18, 12 / 6, 12 / 12]))
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have no training item"):
        class_weights([{"label": 0}, {"label": 2}], 3)


def test_head_norm_statistics_are_the_last_epochs():
    """The cumulative head norm describes the last epoch's features once HeadNormStatistics resets it each epoch."""
    head, frozen = nn.BatchNorm1d(3, affine=False, momentum=None), nn.BatchNorm1d(3)
    net = nn.ModuleDict({"backbone_norm": frozen, "head": head}).train()
    data = [torch.randn(8, 3) for _ in range(3)]
    shift = {1: 5.0, 2: -5.0}  # the features drift between epochs, as they do under PEFT

    def step(engine, batch):
        with torch.no_grad():
            for norm in (frozen, head):
                norm(batch + shift[engine.state.epoch])

    epochs = torch.stack(data).flatten(0, 1)
    last_epoch, both_epochs = (epochs + shift[2]).mean(0), (epochs + (shift[1] + shift[2]) / 2).mean(0)
    for reset, wanted in ((True, last_epoch), (False, both_epochs)):
        for norm in (frozen, head):
            norm.reset_running_stats()
        engine = Engine(step)
        if reset:
            handler = HeadNormStatistics(net)
            handler.attach(engine)
            assert handler.norms() == [head]  # the backbone's norm (it has a momentum) is left alone
        engine.run(data, max_epochs=2)
        assert torch.allclose(head.running_mean, wanted, atol=1e-4), (reset, head.running_mean, wanted)
        assert int(frozen.num_batches_tracked) == 6


def test_curves_plotter_writes_the_training_loss_and_every_validation_metric(tmp_path):
    from PIL import Image

    from tpp_components.handlers import CurvesPlotter

    validator = Engine(lambda e, b: None)
    trainer = Engine(lambda e, b: {"loss": torch.tensor(float(b))})

    @trainer.on(Events.EPOCH_COMPLETED)
    def _validate(engine):  # what ValidationHandler does: run the validator for this epoch
        validator.run([0], max_epochs=engine.state.epoch) if engine.state.epoch % 2 == 0 else None
        validator.state.metrics = {"val_mean_dice": 0.1 * engine.state.epoch, "note": "text is skipped"}

    plotter = CurvesPlotter(tmp_path / "run", validator=validator)
    plotter.attach(trainer)
    trainer.run([1.0, 3.0], max_epochs=4)
    assert plotter.train_loss == [(1, 2.0), (2, 2.0), (3, 2.0), (4, 2.0)]
    assert plotter.metrics == {"val_mean_dice": [(2, 0.2), (4, 0.4)]}  # validated every 2nd epoch only
    image = Image.open(tmp_path / "run" / "curves.png")
    assert image.format == "PNG" and image.size[0] > 2 * image.size[1]  # two panels side by side
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["curves.png"]  # no temporary file left


def test_atomic_path_gives_the_file_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644
