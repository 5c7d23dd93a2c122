"""Checkpoints: atomic writes, weights_only loading, what fit stores, clear mismatch errors, History's two forms."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seglearn.checkpoint import Checkpointer, TrainingState, check_state_dict, load_checkpoint, save_checkpoint
from seglearn.engine import fit
from seglearn.history import History
from seglearn.metrics import ConfusionMatrix
from seglearn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1, "w": torch.ones(3)}, tmp_path / "sub" / "last.pt")
    assert path == tmp_path / "sub" / "last.pt"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as torch.save would leave it, not mkstemp's 0600

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the previous file is intact
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 2, (8, 16, 16), generator=g)
    images = masks[:, None].float().repeat(1, 3, 1, 1) + 0.3 * torch.randn(8, 3, 16, 16, generator=g)
    data = TensorDataset(images, masks)
    torch.manual_seed(0)
    model = create_model("tinyfcn", 2, width=8)
    spec = {"model": "tinyfcn", "num_classes": 2, "model_kwargs": {"width": 8}}
    fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4), epochs=2, lr=0.1,
        device="cpu", checkpoint_dir=d, progress=False, model_spec=spec, recipe={"run": "fixture"})  # fmt: skip
    return d, model, spec


RECIPE = {"lr": 0.1, "optimizer": "sgd", "weight_decay": 1e-4, "momentum": 0.9, "poly_power": 0.9, "warmup_iters": 0}


def test_fit_checkpoint_loads_with_weights_only_and_holds_everything(fitted):
    d, model, spec = fitted
    state = torch.load(d / "last.pt", weights_only=True)
    keys = {"epoch", "model", "optimizer", "scheduler", "scaler", "rng", "history", "num_classes", "model_spec"}
    assert set(state) == keys | {"recipe", "partial"} and state["partial"] is None
    assert state["epoch"] == 2 and state["num_classes"] == 2 and state["model_spec"] == spec
    assert state["recipe"] == {**RECIPE, "run": "fixture"}
    assert set(state["rng"]) >= {"torch", "cuda", "numpy", "python", "loader"}
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k
    assert state["scheduler"]["last_epoch"] == 4  # 2 epochs x 2 batches, stepped per iteration
    h = History.from_dict(state["history"])
    assert h.epochs == 2 and h.val_epochs == [1, 2]
    best = torch.load(d / "best.pt", weights_only=True)
    assert best["epoch"] == h.best_epoch


def test_load_checkpoint_restores_model_and_optimizer(fitted):
    d, model, spec = fitted
    fresh = create_model("tinyfcn", 2, width=8)
    opt = torch.optim.SGD(fresh.parameters(), lr=1.0, momentum=0.9)
    state = load_checkpoint(d / "last.pt", fresh, opt, recipe={**RECIPE, "run": "fixture"}, model_spec=spec)
    assert state["epoch"] == 2
    for (k, a), b in zip(fresh.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert all("momentum_buffer" in s for s in opt.state.values())


def test_another_model_is_named_in_the_error(fitted):
    d, _, spec = fitted
    with pytest.raises(ValueError, match=r"shape mismatches: .*\(2, 32, 1, 1\) in the checkpoint vs \(5, 32, 1, 1\)"):
        load_checkpoint(d / "last.pt", create_model("tinyfcn", 5, width=8))
    with pytest.raises(
        ValueError, match=r"saved from model spec .*missing keys: 0\.weight, 0\.bias; unexpected keys: b"
    ):
        load_checkpoint(d / "last.pt", nn.Sequential(nn.Conv2d(3, 2, 1)))
    with pytest.raises(ValueError, match="was written for model"):
        load_checkpoint(d / "last.pt", create_model("tinyfcn", 2, width=8), model_spec={**spec, "num_classes": 4})
    with pytest.raises(ValueError, match=rf"{d} holds a run of another recipe \(run: 'fixture' there, unset here\)"):
        load_checkpoint(d / "last.pt", recipe=RECIPE)


def test_missing_or_foreign_files_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt", nn.Conv2d(1, 1, 1))
    torch.save({"weights": torch.ones(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a seglearn training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_check_state_dict_accepts_a_match_and_sees_through_ddp_names():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    check_state_dict(model.state_dict(), model)
    bad = {f"module.{k}": v for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing keys: 0\.weight, 0\.bias, 1\.weight \(\+\d+ more\)"):
        check_state_dict(bad, model)


def test_history_round_trip_keeps_nan_and_arrays():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    h = History(train_loss=[1.5, 1.0], lr=[0.1, 0.05], epoch_time=[2.0, 2.1], train_time=[1.5, 1.5],
                train_images=[30, 30])  # fmt: skip
    assert h.record_val(2, cm.compute())
    assert not h.record_val(3, cm.compute())  # equal is not better
    back = History.from_dict(h.to_dict())
    assert back.train_loss == h.train_loss and back.val_epochs == [2, 3] and back.best_epoch == 2
    np.testing.assert_array_equal(back.val[0].iou, h.val[0].iou)  # NaN for the absent class survives
    assert math.isnan(back.val[0].iou[2]) and back.val[0].miou == h.val[0].miou
    assert back.best is back.val[0]
    assert back.train_images == [30, 30] and back.images_per_s == 20.0
    assert History().best is None and math.isnan(History().best_miou) and math.isnan(History().images_per_s)
    old = {k: v for k, v in h.to_dict().items() if k not in ("train_time", "train_images")}
    assert History.from_dict(old).train_time == []  # a checkpoint from before throughput was recorded still loads

    assert History.from_dict(h.to_dict()).to_dict().keys() == h.to_dict().keys()


def test_history_as_json_is_plain_and_keeps_every_record():
    cm = ConfusionMatrix(3)
    cm.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 1, 0]]))
    h = History()
    h.record_train(1.5, 30, 1.5, 0.1)
    h.record_val(1, cm.compute())
    h.epoch_time.append(2.0)
    h.record_memory(100.0, "process peak RSS")
    h.record_memory(90.0, "process peak RSS")  # the peak is kept
    d = json.loads(json.dumps(h.as_json()))
    assert d["train_loss"] == [1.5] and d["train_images"] == [30] and d["lr"] == [0.1] and d["val_epochs"] == [1]
    assert d["val"][0] == json.loads(json.dumps(cm.compute().as_dict()))
    assert math.isnan(d["val"][0]["iou"][2])  # the absent class: NaN, as scores.json writes it
    assert d["best_epoch"] == 1 and d["peak_memory_mib"] == 100.0 and d["memory_kind"] == "process peak RSS"
    assert set(d) >= {"epoch_time", "train_time", "best_miou", "stopped_early"}


def test_checkpointer_writes_last_and_best_and_restores_the_state(fitted, tmp_path):
    d, model, spec = fitted
    net = create_model("tinyfcn", 2, width=8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    state = TrainingState(net, opt, sched, None, None, model_spec=spec)
    assert Checkpointer(d).restore(state)  # fitted's last.pt (recipe=None: not compared)
    assert state.epoch == 2 and state.history.epochs == 2 and state.num_classes == 2
    for (k, a), b in zip(net.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    out = Checkpointer(tmp_path / "out")
    out.save(state)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["last.pt"]
    out.save(state, best=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best.pt", "last.pt"]
    Checkpointer(tmp_path / "rank1", write=False).save(state, best=True)
    assert not (tmp_path / "rank1").exists()
    with pytest.warns(UserWarning, match="starting from scratch"):
        assert not Checkpointer(tmp_path / "none").restore(state)
    with pytest.raises(ValueError, match="model_spec .* is not plain data"):
        TrainingState(net, opt, sched, None, None, model_spec={"model": nn.Conv2d})


def test_a_checkpoint_from_before_backbone_and_head_still_loads(tmp_path):
    torch.manual_seed(0)
    unet = create_model("unet", 2, base_channels=8)
    old_names = {k.removeprefix("backbone.").removeprefix("head."): v for k, v in unet.state_dict().items()}
    save_checkpoint({"epoch": 3, "model": old_names}, tmp_path / "last.pt")
    fresh = create_model("unet", 2, base_channels=8)
    assert load_checkpoint(tmp_path / "last.pt", fresh)["epoch"] == 3
    for (k, a), b in zip(fresh.state_dict().items(), unet.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
