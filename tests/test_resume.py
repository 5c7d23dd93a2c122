"""Exact resume: a run stopped (cleanly, or by SIGKILL mid-epoch) and resumed ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from seglearn.engine import fit
from seglearn.models import create_model

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


# The child trains tinyfcn on tiny random tensors and SIGKILLs itself when the train set serves its k-th item
# (mid-epoch, nothing flushed). The test process then loads the same file as a module to resume that run and to
# train the same job uninterrupted, with the same single thread.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from torch.utils.data import DataLoader, Dataset
    from seglearn.engine import fit
    from seglearn.models import create_model

    class Scenes(Dataset):
        def __init__(self, n, seed, kill_at=0):
            g = torch.Generator().manual_seed(seed)
            self.masks = torch.randint(0, 3, (n, 6, 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
            self.images = torch.eye(3)[self.masks].permute(0, 3, 1, 2) + 0.5 * torch.randn(n, 3, 48, 64, generator=g)
            self.served, self.kill_at = 0, kill_at

        def __len__(self):
            return len(self.masks)

        def __getitem__(self, i):
            self.served += 1
            if self.served == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return self.images[i], self.masks[i]

    def run(ckpt, resume, kill_at=0):
        torch.manual_seed(123 if resume else 0)  # a resumed run must not depend on its fresh initial weights
        model = create_model("tinyfcn", 3, width=8)
        train = DataLoader(Scenes(8, 0, kill_at), batch_size=2, shuffle=True)
        val = DataLoader(Scenes(4, 1), batch_size=2)
        h = fit(model, train, val, epochs=3, lr=0.1, seed=5, device="cpu", checkpoint_dir=ckpt, resume=resume,
                progress=False, recipe={"run": "child"})
        return model.state_dict(), h

    if __name__ == "__main__":
        torch.set_num_threads(1)  # as the test process, which resumes this run
        run(sys.argv[1], resume=False, kill_at=int(sys.argv[2]))
        sys.exit("the run was meant to be killed")
    """
)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO_ROOT)}
    # 8 train images per epoch: the 21st served item is the 5th of epoch 3 (two epochs are checkpointed).
    killed = subprocess.run(
        [sys.executable, str(script), str(ckpt), "21"], env=env, capture_output=True, text=True, timeout=240
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(ckpt / "last.pt", weights_only=True)["epoch"] == 2
    assert not [p for p in ckpt.iterdir() if p.suffix == ".tmp"]  # no half-written files left behind

    child = runpy.run_path(str(script), run_name="child")
    state, resumed = child["run"](ckpt, resume=True)
    straight_state, straight = child["run"](tmp_path / "straight", resume=False)
    assert resumed.epochs == straight.epochs == 3 and resumed.val_epochs == [1, 2, 3]
    assert resumed.train_loss == pytest.approx(straight.train_loss, rel=0, abs=1e-6)
    for a, b in zip(resumed.val, straight.val, strict=True):
        np.testing.assert_allclose(a.iou, b.iou, rtol=0, atol=1e-6)
        assert a.miou == pytest.approx(b.miou, rel=0, abs=1e-6)
    for key, value in straight_state.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=1e-6, msg=key)


# ---------------------------------------------------------------- in process: augmentations and own generators


@pytest.fixture(scope="module")
def scenes():
    from seglearn.data import SyntheticScenes, eval_transforms, train_transforms

    train = SyntheticScenes(6, size=(40, 56), seed=0, transforms=train_transforms((32, 48), scale=(0.75, 1.25)))
    val = SyntheticScenes(2, size=(32, 48), seed=1, transforms=eval_transforms())
    return train, val


def _run(scenes, ckpt, epochs=3, resume=False, init_seed=0, loader_kw=None, **kw):
    train, val = scenes
    torch.manual_seed(init_seed)
    model = create_model("tinyfcn", train.num_classes, width=8)
    loader = DataLoader(train, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(9),
                        **(loader_kw or {}))  # fmt: skip
    h = fit(model, loader, DataLoader(val, batch_size=2), epochs=epochs, lr=0.05, seed=3, device="cpu",
            checkpoint_dir=ckpt, resume=resume, progress=False, **kw)  # fmt: skip
    return model, h


def test_stop_on_time_budget_then_resume_is_exact_with_augmentations(scenes, tmp_path):
    straight_model, straight = _run(scenes, tmp_path / "a")
    _, first = _run(scenes, tmp_path / "b", time_budget_s=0.0)
    assert first.epochs == 1 and first.stopped_early
    model, h = _run(scenes, tmp_path / "b", resume=True, init_seed=99)
    assert h.epochs == 3 and not h.stopped_early
    assert h.train_loss == straight.train_loss  # the albumentations and loader generators were restored
    assert [s.miou for s in h.val] == [s.miou for s in straight.val]
    for (k, a), b in zip(model.state_dict().items(), straight_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _step_clock(monkeypatch):
    """The budget's clock reads 1, 2, 3, ... at its successive checks (one after every step but an epoch's last, one
    after each epoch's validation): a budget of b stops at the first check that reads >= b."""
    import seglearn.partial

    ticks = iter(range(10_000))
    monkeypatch.setattr(seglearn.partial, "_clock", lambda: float(next(ticks)))


def _run_on_step_clock(scenes, ckpt, monkeypatch, **kw):
    _step_clock(monkeypatch)
    return _run(scenes, ckpt, **kw)


def test_time_budget_stops_at_the_first_step_past_it_mid_epoch(scenes, tmp_path, monkeypatch):
    # 6 images in batches of 2: 3 steps an epoch. Checks: epoch 1 after steps 1, 2 (1, 2) and after it (3);
    # epoch 2 after steps 1, 2 (4, 5). A budget of 4.5 runs out during epoch 2's second step.
    _, h = _run_on_step_clock(scenes, tmp_path / "mid", monkeypatch, time_budget_s=4.5)
    assert h.stopped_early and h.partial_steps == 2 and h.epochs == 2
    assert h.train_images == [6, 4]  # one finished epoch, then two steps of the next
    assert h.val_epochs == [1, 2] and h.best_epoch == 1  # the unfinished epoch is scored, never best
    state = torch.load(tmp_path / "mid" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["partial"]["steps"] == 2 and state["scheduler"]["last_epoch"] == 5
    best = torch.load(tmp_path / "mid" / "best.pt", weights_only=True)
    assert best["epoch"] == 1 and best["partial"] is None
    # at an epoch's last step the epoch finishes: the budget is checked after it, as before
    _, h = _run_on_step_clock(scenes, tmp_path / "end", monkeypatch, time_budget_s=2.5)
    assert h.stopped_early and h.partial_steps == 0 and h.epochs == 1 and h.train_images == [6]


@pytest.mark.parametrize("budget", [0.5, 4.5], ids=["epoch1_step1", "epoch2_step2"])
def test_resume_after_a_mid_epoch_budget_stop_is_exact(scenes, tmp_path, monkeypatch, budget):
    straight_model, straight = _run(scenes, tmp_path / "straight")
    _run_on_step_clock(scenes, tmp_path / "stopped", monkeypatch, time_budget_s=budget)
    model, h = _run(scenes, tmp_path / "stopped", resume=True, init_seed=99)
    assert h.epochs == 3 and not h.stopped_early and h.partial_steps == 0
    assert h.train_loss == straight.train_loss and h.train_images == straight.train_images == [6, 6, 6]
    assert h.lr == straight.lr and h.val_epochs == straight.val_epochs == [1, 2, 3]
    assert [s.miou for s in h.val] == [s.miou for s in straight.val]
    for (k, a), b in zip(model.state_dict().items(), straight_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_resume_mid_epoch_with_loader_workers_is_exact(scenes, tmp_path, monkeypatch):
    # worker processes draw the augmentations: the replayed epoch must give them the same seeds
    loader_kw = {"num_workers": 1}
    straight_model, straight = _run(scenes, tmp_path / "straight", epochs=2, loader_kw=loader_kw)
    _run_on_step_clock(scenes, tmp_path / "stopped", monkeypatch, epochs=2, time_budget_s=4.5, loader_kw=loader_kw)
    model, h = _run(scenes, tmp_path / "stopped", epochs=2, resume=True, init_seed=99, loader_kw=loader_kw)
    assert h.train_loss == straight.train_loss
    for a, b in zip(model.state_dict().values(), straight_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_stopped_epoch_counts_towards_the_epochs_a_resume_may_ask_for(scenes, tmp_path, monkeypatch):
    _run_on_step_clock(scenes, tmp_path, monkeypatch, time_budget_s=4.5)  # 1 epoch and 2 steps of the second
    with pytest.raises(ValueError, match=r"holds 2 epochs but epochs=1: pass epochs >= 2"):
        _run(scenes, tmp_path, epochs=1, resume=True)


def test_a_loader_shorter_than_the_stopped_epoch_is_refused(scenes, tmp_path, monkeypatch):
    _run_on_step_clock(scenes, tmp_path, monkeypatch, time_budget_s=1.5)  # stops after epoch 1's second step
    train, val = scenes
    model = create_model("tinyfcn", train.num_classes, width=8)
    short = DataLoader(torch.utils.data.Subset(train, range(2)), batch_size=2, shuffle=True,
                       generator=torch.Generator().manual_seed(9))  # fmt: skip
    with pytest.raises(ValueError, match=r"stopped after 2 steps of an epoch, but the train loader now ends after 1"):
        fit(model, short, epochs=3, lr=0.05, seed=3, device="cpu", checkpoint_dir=tmp_path, resume=True,
            progress=False)  # fmt: skip


def test_each_epoch_iterates_the_loader_once(scenes):
    # tqdm.auto's bar calls iter() on what it wraps, and std tqdm iterates it again: given a DataLoader, that made a
    # second iterator per epoch (worker processes prefetching for nothing, and a draw from the loader's generator)
    train, val = scenes

    class Counting(DataLoader):
        iterators = 0

        def __iter__(self):
            Counting.iterators += 1
            return super().__iter__()

    model = create_model("tinyfcn", train.num_classes, width=8)
    fit(model, Counting(train, batch_size=2), Counting(val, batch_size=2), epochs=2, lr=0.05, device="cpu",
        progress=True)  # fmt: skip
    assert Counting.iterators == 4  # two epochs, each: one train pass and one validation


def test_resume_of_a_finished_run_returns_its_history_and_may_add_epochs(scenes, tmp_path):
    _, h = _run(scenes, tmp_path, epochs=1)
    model, again = _run(scenes, tmp_path, epochs=1, resume=True, init_seed=5)
    assert again.train_loss == h.train_loss and again.val_epochs == [1]
    _, longer = _run(scenes, tmp_path, epochs=2, resume=True)  # more epochs is the same recipe, continued
    assert longer.epochs == 2 and longer.train_loss[0] == h.train_loss[0]


def test_resume_without_a_checkpoint_warns_and_starts_fresh(scenes, tmp_path):
    with pytest.warns(UserWarning, match="starting from scratch"):
        _, h = _run(scenes, tmp_path / "empty", epochs=1, resume=True)
    assert h.epochs == 1


SPEC = {"model": "tinyfcn", "num_classes": 11, "model_kwargs": {"width": 8}}


def test_resume_with_another_model_is_refused(scenes, tmp_path):
    train, _ = scenes
    _run(scenes, tmp_path, epochs=1, model_spec=SPEC)
    loader = DataLoader(train, batch_size=2)
    wider = create_model("tinyfcn", train.num_classes, width=16)
    with pytest.raises(ValueError, match=r"was written for model .*'width': 8.*not .*'width': 16"):
        fit(wider, loader, epochs=2, lr=0.05, checkpoint_dir=tmp_path, resume=True, progress=False,
            model_spec={**SPEC, "model_kwargs": {"width": 16}})  # fmt: skip
    wider.model_spec = None  # no spec to compare: the state dict's shapes still tell
    with pytest.raises(ValueError, match=r"shape mismatches: .*\(8, 3, 3, 3\) in the checkpoint vs \(16, 3, 3, 3\)"):
        fit(wider, loader, epochs=2, lr=0.05, checkpoint_dir=tmp_path, resume=True, progress=False)


def test_resume_with_another_recipe_names_the_keys_and_the_folder(scenes, tmp_path):
    train, _ = scenes
    _run(scenes, tmp_path, epochs=1, recipe={"run": "a", "crop": (32, 48)})
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["recipe"] == {"lr": 0.05, "optimizer": "sgd", "weight_decay": 1e-4, "momentum": 0.9,
                               "poly_power": 0.9, "warmup_iters": 0, "run": "a", "crop": (32, 48)}  # fmt: skip
    loader = DataLoader(train, batch_size=2)
    same = create_model("tinyfcn", train.num_classes, width=8)
    with pytest.raises(ValueError, match=rf"{tmp_path}.*run: 'a' there, 'b' here.*delete the folder {tmp_path}"):
        fit(same, loader, epochs=2, lr=0.05, checkpoint_dir=tmp_path, resume=True, progress=False,
            recipe={"run": "b", "crop": [32, 48]})  # fmt: skip
    with pytest.raises(ValueError, match=r"lr: 0.05 there, 0.1 here; optimizer: 'sgd' there, 'adamw' here"):
        fit(same, loader, epochs=2, lr=0.1, optimizer="adamw", checkpoint_dir=tmp_path, resume=True,
            progress=False, recipe={"run": "a", "crop": [32, 48]})  # fmt: skip
    with pytest.raises(ValueError, match=r"recipe .* is not plain data"):
        fit(same, loader, epochs=1, lr=0.05, progress=False, recipe={"loss": torch.nn.CrossEntropyLoss()})
