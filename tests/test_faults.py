"""Runs that go wrong stop before anything wrong is saved, and say where the last good state is (issue 21)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from seglearn.checkpoint import load_checkpoint, save_checkpoint
from seglearn.engine import evaluate, fit, predict
from seglearn.model_file import save_model
from seglearn.models import create_model


def _data(n: int = 4, label: int | None = None) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (n, 16, 24), generator=g)
    masks[:, 0, :4] = 255  # ignore_index is fine anywhere
    if label is not None:
        masks[-1, 5, 5] = label
    images = torch.eye(3)[masks.clamp(max=2)].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, 16, 24, generator=g)
    return TensorDataset(images.contiguous(), masks)


def _model():
    torch.manual_seed(0)
    return create_model("tinyfcn", 3, width=8)


def _fit(model, data=None, **kw):
    kw = {"epochs": 2, "lr": 0.05, "device": "cpu", "progress": False, **kw}
    return fit(model, DataLoader(data or _data(), batch_size=2), **kw)


class PoisonedSGD(torch.optim.SGD):
    """SGD whose ``at``-th step leaves NaN in the first weight, as a run that diverges between loss checks."""

    def __init__(self, params, at: int):
        super().__init__(params, lr=0.05)
        self.at, self.calls = at, 0

    def step(self, closure=None):
        super().step(closure)
        self.calls += 1
        if self.calls == self.at:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(math.nan)


@pytest.mark.parametrize("lr", [math.nan, math.inf, -0.1, 0.0])
def test_fit_refuses_a_non_finite_or_non_positive_lr(lr, tmp_path):
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        _fit(_model(), lr=lr, checkpoint_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_weights_gone_non_finite_at_an_epoch_end_are_never_saved(tmp_path):
    model = _model()
    opt = PoisonedSGD(model.parameters(), at=4)  # 2 steps an epoch: the last step of epoch 2
    with pytest.raises(FloatingPointError) as info:
        _fit(model, optimizer=opt, epochs=3, checkpoint_dir=tmp_path)
    msg = str(info.value)
    assert "the model after epoch 2 holds NaN or infinite weights" in msg
    assert f"{tmp_path / 'last.pt'} holds epoch 1 with finite weights" in msg
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_a_non_finite_loss_names_the_epoch_step_and_last_good_checkpoint(tmp_path):
    model = _model()
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 2, step 2.*last.pt holds epoch 1 with finite"):
        _fit(model, optimizer=PoisonedSGD(model.parameters(), at=3), epochs=3, checkpoint_dir=tmp_path)
    model = _model()
    with pytest.raises(FloatingPointError, match=r"nothing was saved \(no checkpoint_dir\)"):
        _fit(model, optimizer=PoisonedSGD(model.parameters(), at=1))


def test_a_checkpoint_not_written_by_this_run_is_not_called_good(tmp_path):
    _fit(_model(), epochs=1, checkpoint_dir=tmp_path)  # an older run's last.pt, good or not
    model = _model()
    with pytest.raises(FloatingPointError, match="no checkpoint of this run holds good weights yet"):
        _fit(model, optimizer=PoisonedSGD(model.parameters(), at=2), checkpoint_dir=tmp_path)


def test_a_last_pt_with_nan_weights_is_not_resumed(tmp_path):
    _fit(_model(), epochs=1, checkpoint_dir=tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    next(iter(ckpt["model"].values())).fill_(math.nan)  # as written before seglearn checked weights
    save_checkpoint(ckpt, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="holds NaN or infinite weights.*cannot be resumed; delete it"):
        _fit(_model(), epochs=2, checkpoint_dir=tmp_path, resume=True)


def test_save_model_refuses_nan_weights(tmp_path):
    model = _model()
    with torch.no_grad():
        next(model.parameters()).fill_(math.inf)
    with pytest.raises(FloatingPointError, match="holds NaN or infinite weights"):
        save_model(tmp_path / "model.pt", model)
    assert not list(tmp_path.iterdir())


def test_labels_of_no_class_are_refused_naming_the_batch():
    with pytest.raises(ValueError, match=r"masks of epoch 1, step 2 hold labels 7, outside 0..2 and not ignore_index"):
        _fit(_model(), _data(label=7))
    with pytest.raises(ValueError, match=r"hold labels -1"):
        _fit(_model(), _data(label=-1))


def test_an_empty_val_loader_is_an_error_not_nan_miou():
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 16, 24), torch.zeros(0, 16, 24, dtype=torch.long)))
    with pytest.raises(ValueError, match="val_loader yields no batches"):
        _fit(_model(), val_loader=empty)
    with pytest.raises(ValueError, match="the evaluation loader yielded no batches"):
        evaluate(_model(), empty, 3, device="cpu")


def test_predict_refuses_nan_input():
    x = torch.zeros(1, 3, 16, 24)
    x[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="predict got images holding NaN or infinity"):
        predict(_model(), x)


def test_resume_refuses_fewer_epochs_than_done_and_another_lr(tmp_path):
    _fit(_model(), epochs=2, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"holds 2 epochs but epochs=1: pass epochs >= 2"):
        _fit(_model(), epochs=1, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"another recipe \(lr: 0.05 there, 0.1 here\)"):
        _fit(_model(), epochs=3, lr=0.1, checkpoint_dir=tmp_path, resume=True)


class Wrapped(Dataset):
    """A user's wrapper that keeps the dataset under a name seglearn has never heard of."""

    def __init__(self, inner, rng=None):
        self.inner_scenes, self.rng = inner, rng

    def __len__(self):
        return len(self.inner_scenes)

    def __getitem__(self, i):
        return self.inner_scenes[i]


def _augmented_run(ckpt, **kw):
    from seglearn.data import SyntheticScenes, train_transforms

    train = SyntheticScenes(6, size=(40, 56), seed=0, transforms=train_transforms((32, 48), scale=(0.75, 1.25)))
    torch.manual_seed(7 if kw.get("resume") else 0)
    model = create_model("tinyfcn", train.num_classes, width=8)
    loader = DataLoader(Wrapped(train), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(9))
    h = fit(model, loader, epochs=2, lr=0.05, seed=3, device="cpu", checkpoint_dir=ckpt, progress=False, **kw)
    return model, h


def test_resume_is_exact_whatever_the_wrapper_calls_the_dataset(tmp_path):
    straight, h_straight = _augmented_run(tmp_path / "a")
    _, first = _augmented_run(tmp_path / "b", time_budget_s=0.0)
    assert first.epochs == 1
    resumed, h = _augmented_run(tmp_path / "b", resume=True)
    assert h.train_loss == h_straight.train_loss  # the augmentations of epoch 2 were the same
    for (k, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_a_dataset_generator_a_checkpoint_cannot_hold_is_reported(tmp_path):
    loader = DataLoader(Wrapped(_data(), rng=np.random.default_rng(0)), batch_size=2)
    with pytest.warns(UserWarning, match=r"resume from these checkpoints will not be exact: dataset.rng"):
        fit(_model(), loader, epochs=1, lr=0.05, device="cpu", progress=False, checkpoint_dir=tmp_path)
