"""Checkpoints: atomic writes, weights_only loading, clear mismatch errors, RNG capture/restore, History round trip."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seglearn.checkpoint import (
    capture_rng_state,
    check_state_dict,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from seglearn.engine import fit
from seglearn.history import History
from seglearn.metrics import ConfusionMatrix
from seglearn.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


def test_save_is_atomic_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = save_checkpoint({"epoch": 1, "w": torch.ones(3)}, tmp_path / "sub" / "last.pt")
    assert path == tmp_path / "sub" / "last.pt"

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
    cfg = {"name": "tinyfcn", "num_classes": 2, "width": 8}
    fit(model, DataLoader(data, batch_size=4, shuffle=True), DataLoader(data, batch_size=4), epochs=2, lr=0.1,
        device="cpu", checkpoint_dir=d, progress=False, model_config=cfg)  # fmt: skip
    return d, model, cfg


def test_fit_checkpoint_loads_with_weights_only_and_holds_everything(fitted):
    d, model, cfg = fitted
    state = torch.load(d / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "rng", "history", "model_config", "num_classes"):
        assert key in state, key
    assert state["epoch"] == 2 and state["num_classes"] == 2 and state["model_config"] == cfg
    assert set(state["rng"]) >= {"torch", "cuda", "numpy", "python", "loader"}
    for k, v in model.state_dict().items():
        assert torch.equal(state["model"][k], v), k
    assert state["scheduler"]["last_epoch"] == 4  # 2 epochs x 2 batches, stepped per iteration
    h = History.from_dict(state["history"])
    assert h.epochs == 2 and h.val_epochs == [1, 2]
    best = torch.load(d / "best.pt", weights_only=True)
    assert best["epoch"] == h.best_epoch


def test_load_checkpoint_restores_model_and_optimizer(fitted):
    d, model, cfg = fitted
    fresh = create_model("tinyfcn", 2, width=8)
    opt = torch.optim.SGD(fresh.parameters(), lr=1.0, momentum=0.9)
    state = load_checkpoint(d / "last.pt", fresh, opt, model_config=cfg)
    assert state["epoch"] == 2
    for (k, a), b in zip(fresh.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert all("momentum_buffer" in s for s in opt.state.values())


def test_another_model_is_named_in_the_error(fitted):
    d, _, cfg = fitted
    with pytest.raises(ValueError, match=r"shape mismatches: .*\(2, 32, 1, 1\) in the checkpoint vs \(5, 32, 1, 1\)"):
        load_checkpoint(d / "last.pt", create_model("tinyfcn", 5, width=8))
    with pytest.raises(
        ValueError, match=r"saved from model config .*missing keys: 0\.weight, 0\.bias; unexpected keys: b"
    ):
        load_checkpoint(d / "last.pt", nn.Sequential(nn.Conv2d(3, 2, 1)))
    with pytest.raises(ValueError, match="was written for model config"):
        load_checkpoint(d / "last.pt", create_model("tinyfcn", 2, width=8), model_config={**cfg, "width": 4})


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


def _draws(loader, compose) -> tuple:
    order = [int(batch[0]) for batch in loader]
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    augmented = [compose(image=image)["image"].tolist() for _ in range(4)]
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], order, augmented


def test_rng_capture_restores_every_generator_an_epoch_uses(tmp_path):
    import albumentations as A

    class Augmented(TensorDataset):
        transforms = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)])

    data = Augmented(torch.arange(16))
    loader = DataLoader(data, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(1))
    save_checkpoint({"rng": capture_rng_state(loader)}, tmp_path / "rng.pt")
    first = _draws(loader, data.transforms)
    assert _draws(loader, data.transforms) != first  # every generator moved on
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], loader)
    assert _draws(loader, data.transforms) == first
    other = DataLoader(data, batch_size=1, shuffle=True)  # no generator of its own: cannot take this state
    with pytest.raises(ValueError, match="train loader differs"):
        restore_rng_state(capture_rng_state(loader), other)


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


def test_worker_seeding_gives_each_worker_and_epoch_its_own_reproducible_augmentations():
    import albumentations as A

    from seglearn.checkpoint import seed_worker_transforms

    class Draws(torch.utils.data.Dataset):
        transforms = A.Compose([A.HorizontalFlip(p=0.5)])

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor(self.transforms.transforms[0].random_generator.random())

    def epochs(seed: int) -> list[list[float]]:
        loader = DataLoader(Draws(), batch_size=2, num_workers=2, worker_init_fn=seed_worker_transforms,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return [torch.cat(list(loader)).tolist() for _ in range(2)]

    first = epochs(0)
    assert len({round(x, 12) for e in first for x in e}) == 8  # no worker or epoch repeats another's draws
    assert epochs(0) == first and epochs(1) != first
