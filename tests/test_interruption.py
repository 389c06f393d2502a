"""Interrupted stages: atomic checkpoints, kill -9 then --resume, a fresh run beside an older run's
checkpoints, the best model kept across a resume, and NaN / inf losses."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver

from bundle_utils import BUNDLE, run, workflow
from bundle_utils import VIT_TPP as TPP
from bundle_utils import VIT_TRAIN as TRAIN
from conftest import ROOT
from tools import kill_resume_check
from tpp_components.handlers import (
    AtomicCheckpointSaver,
    NonFiniteLossError,
    RunSettings,
    latest_checkpoint,
    resume_checkpoint,
    supersede_checkpoints,
)
from tpp_components.handlers.checkpoints import SUPERSEDED_SUFFIX

#: a random ViT is fine here: nothing is asserted about learning. No TPP file either: ``standard`` is these runs'
#: default ``init``, so fine-tuning writes ``model.pt`` (another init would write ``model_<init>.pt``)
RANDOM_BACKBONE = {"backbone_weights": None, "default_init": "standard", "init": "standard", "allow_random_backbone": True}


def _stage(tmp: Path, datalist: str, **extra) -> dict:
    return {"datalist": datalist, "ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "logs"),
            "train#dataloader#batch_size": 4, **RANDOM_BACKBONE, **extra}


# ---------------------------------------------------------------- atomic checkpoints


def _two_epochs_second_save_dies(saver, monkeypatch) -> None:
    """Epoch 1 saved normally; the save of epoch 2 dies half-way through writing, as a kill would."""
    real_save, calls = torch.save, []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(f)
        real_save(obj, f, *args, **kwargs)
        if len(calls) == 2:
            with open(f, "r+b") as handle:  # truncated
                handle.truncate(10)
            raise RuntimeError("killed")

    monkeypatch.setattr(torch, "save", dying_save)
    engine = Engine(lambda e, b: None)
    saver.attach(engine)
    with pytest.raises(RuntimeError, match="killed"):
        engine.run([0], max_epochs=2)
    monkeypatch.setattr(torch, "save", real_save)


def test_atomic_saver_keeps_the_last_checkpoint_when_a_write_dies(tmp_path, monkeypatch):
    kwargs = dict(save_dict={"net": nn.Linear(2, 2)}, file_prefix="t", save_interval=1, n_saved=1, epoch_level=True)
    _two_epochs_second_save_dies(AtomicCheckpointSaver(save_dir=str(tmp_path / "atomic"), **kwargs), monkeypatch)
    files = sorted(p.name for p in (tmp_path / "atomic").iterdir())
    assert files == ["t_net_epoch=1.pt"], files  # the old one, whole; no partial file left
    assert set(torch.load(tmp_path / "atomic" / files[0], weights_only=True)) == {"weight", "bias"}
    # MONAI's own saver removes the old checkpoint first and writes into the final name: nothing loadable is left
    _two_epochs_second_save_dies(CheckpointSaver(save_dir=str(tmp_path / "stock"), **kwargs), monkeypatch)
    stock = sorted((tmp_path / "stock").iterdir())
    assert [p.name for p in stock] == ["t_net_epoch=2.pt"]
    with pytest.raises(Exception):
        torch.load(stock[0], weights_only=True)


def test_atomic_saver_fixed_name_and_stale_temporaries(tmp_path):
    (tmp_path / ".model.pt.abcd1234.tmp").write_bytes(b"partial")  # left by a killed run
    saver = AtomicCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": nn.Linear(2, 2)}, save_key_metric=True,
                                  key_metric_name="acc", key_metric_filename="model.pt")
    assert not (tmp_path / ".model.pt.abcd1234.tmp").exists()
    scores = iter([0.5, 0.7, 0.6])
    engine = Engine(lambda e, b: e.state.metrics.update(acc=next(scores)))
    saver.attach(engine)
    engine.run([0], max_epochs=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert [priority for priority, _ in saver.state_dict()["_saved"]] == [0.7]


# ---------------------------------------------------------------- fresh runs and resumed runs


def test_fresh_run_supersedes_an_earlier_runs_checkpoints(tmp_path):
    for epoch in (3, 30):
        (tmp_path / f"train_checkpoint_epoch={epoch}.pt").write_bytes(b"old")
    (tmp_path / "tpp_checkpoint_epoch=5.pt").write_bytes(b"other stage")
    assert resume_checkpoint(tmp_path, "train", resume=True) == str(tmp_path / "train_checkpoint_epoch=30.pt")
    assert resume_checkpoint(tmp_path, "train", resume=False) is None
    assert len(list(tmp_path.iterdir())) == 3  # the query renames nothing
    assert supersede_checkpoints(tmp_path, "train") == ["train_checkpoint_epoch=3.pt", "train_checkpoint_epoch=30.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tpp_checkpoint_epoch=5.pt", f"train_checkpoint_epoch=3.pt{SUPERSEDED_SUFFIX}", f"train_checkpoint_epoch=30.pt{SUPERSEDED_SUFFIX}"]
    assert latest_checkpoint(tmp_path, "train") is None and resume_checkpoint(tmp_path, "train", resume=True) is None
    with pytest.raises(TypeError, match="'resume' must be true or false, got 'yes'"):
        resume_checkpoint(tmp_path, "train", resume="yes")


def test_resume_with_other_settings_is_refused():
    saved = RunSettings({"seed": 0, "peft": {"method": "lora", "r": 8}}).state_dict()
    RunSettings({"peft": {"r": 8, "method": "lora"}, "seed": 0}).load_state_dict(saved)  # key order does not matter
    with pytest.raises(ValueError, match=r"seed: checkpoint 0 vs this run 1"):
        RunSettings({"seed": 1, "peft": {"method": "lora", "r": 8}}).load_state_dict(saved)


def _killed_in_epoch_2(wf) -> None:
    """Run ``wf`` and stop it dead after the first iteration of epoch 2 (what ``kill -9`` leaves: the
    epoch-1 checkpoint and best model, nothing of epoch 2)."""
    trainer = wf.parser.get_parsed_content("train#trainer")
    per_epoch = len(wf.parser.get_parsed_content("train#dataloader"))

    def kill(engine: Engine) -> None:
        raise KeyboardInterrupt("killed")

    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=per_epoch + 1), kill)
    with pytest.raises(KeyboardInterrupt):
        wf.run()


def _final(tmp: Path, prefix: str = "train") -> dict:
    return torch.load(latest_checkpoint(tmp / "logs", prefix), weights_only=True)


@pytest.mark.parametrize("configs,prefix", [(TRAIN, "train"), (TPP, "tpp")])
def test_resumed_run_equals_uninterrupted_run(configs, prefix, small_demo_datalist, tmp_path):
    """Same seed: stopping after epoch 1 and resuming to 3 gives bit-identical weights, optimizer state and
    random states (augmentations, shuffling, pretext masks replay exactly), and the same best model."""
    extra = {"reuse_decoder": False} if configs == TPP else {}
    run(configs, num_epochs=3, **_stage(tmp_path / "whole", small_demo_datalist, **extra))
    _killed_in_epoch_2(workflow(configs, num_epochs=3, **_stage(tmp_path / "cut", small_demo_datalist, **extra)))
    resumed = run(configs, num_epochs=3, resume=True, **_stage(tmp_path / "cut", small_demo_datalist, **extra))
    assert resumed.parser.get_parsed_content("train#trainer").state.iteration == 3 * len(
        resumed.parser.get_parsed_content("train#dataloader"))
    whole, cut = _final(tmp_path / "whole", prefix), _final(tmp_path / "cut", prefix)
    assert whole["trainer"] == cut["trainer"] and whole["best"] == cut["best"]
    for key in whole["trainable"]:
        assert torch.equal(whole["trainable"][key], cut["trainable"][key]), key
    assert torch.equal(whole["random"]["torch"], cut["random"]["torch"])
    products = ["model.pt"] if configs == TRAIN else []
    for name in products:
        a, b = (torch.load(t / "models" / name, weights_only=True) for t in (tmp_path / "whole", tmp_path / "cut"))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_best_model_survives_a_resume(small_demo_datalist, tmp_path):
    """After a resume, a validation worse than the best before the interruption must not replace models/model.pt."""
    common = _stage(tmp_path, small_demo_datalist)
    run(TRAIN, num_epochs=1, **common)
    ckpt = Path(latest_checkpoint(tmp_path / "logs", "train"))
    state = torch.load(ckpt, weights_only=True)
    (saver,) = state["best"]["savers"]
    assert state["best"]["best_metric_epoch"] == 1 and [p for p, _ in saver["_saved"]] == [pytest.approx(state["best"]["best_metric"])]
    # pretend epoch 1 scored perfectly: nothing later can beat it
    state["best"]["best_metric"] = 2.0
    saver["_saved"] = [(2.0, name) for _, name in saver["_saved"]]
    torch.save(state, ckpt)
    model, targets = tmp_path / "models" / "model.pt", tmp_path / "models" / "target_parameters.safetensors"
    before = {p: p.read_bytes() for p in (model, targets)}
    resumed = run(TRAIN, num_epochs=2, resume=True, **common)
    evaluator = resumed.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.epoch == 2 and evaluator.state.best_metric_epoch == 1 and evaluator.state.best_metric == 2.0
    assert all(p.read_bytes() == data for p, data in before.items()), "the resumed run overwrote the best model"


# ---------------------------------------------------------------- NaN / inf loss


class _NonFiniteFrom:
    """A loss that becomes NaN (or inf) from its ``n``-th call on."""

    def __init__(self, n: int, value: float = float("nan")) -> None:
        self.n, self.calls, self.value = n, 0, value

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        loss = pred.float().pow(2).mean()
        return loss * self.value if self.calls >= self.n else loss


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(value, small_demo_datalist, tmp_path):
    common = _stage(tmp_path, small_demo_datalist)
    per_epoch = len(workflow(TRAIN, **common).parser.get_parsed_content("train#dataloader"))
    with pytest.raises(RuntimeError) as err:  # MONAI's config expression wraps the handler's error
        run(TRAIN, num_epochs=3, loss=_NonFiniteFrom(per_epoch + 1, value), **common)
    assert isinstance(err.value.__cause__, NonFiniteLossError)
    assert f"at epoch 2, iteration {per_epoch + 1}" in str(err.value.__cause__)
    assert "last good checkpoint is " + str(tmp_path / "logs" / "train_checkpoint_epoch=1.pt") in str(err.value.__cause__)
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.pt")) == ["train_checkpoint_epoch=1.pt"]
    state = torch.load(tmp_path / "logs" / "train_checkpoint_epoch=1.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["trainable"].values())
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in model.values() if t.is_floating_point())


def test_non_finite_loss_exits_non_zero(small_demo_datalist, tmp_path):
    """``monai.bundle run`` must not report success for a diverged stage."""
    overrides = {**_stage(tmp_path, small_demo_datalist), "num_epochs": 1, "loss": "$lambda pred, label: pred.float().mean() * float('nan')"}
    cmd = kill_resume_check.command(BUNDLE, "train", overrides, resume=False)
    done = subprocess.run(cmd, capture_output=True, text=True, env=kill_resume_check.environment(), cwd=ROOT, timeout=600)
    assert done.returncode != 0
    assert "NonFiniteLossError: non-finite loss" in done.stderr + done.stdout and "at epoch 1, iteration 1" in done.stderr + done.stdout


# ---------------------------------------------------------------- kill -9


@pytest.mark.slow
def test_kill_and_resume_every_stage(tmp_path):
    """kill -9 at random moments of stage 0, TPP and fine-tuning, resume until finished: the runs finish, every
    file in models/ loads after every kill, and the results equal an uninterrupted run's bit for bit."""
    results = kill_resume_check.main(workdir=str(tmp_path / "kill"), trials=1, epochs=2, seed=1)
    for stage in kill_resume_check.STAGES:
        assert results[stage]["finished"] == "1/1" and results[stage]["kills"] >= 1, results[stage]
        assert results[stage]["max_abs_diff"] == 0.0, results[stage]
