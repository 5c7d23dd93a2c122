"""fit(plan_epochs=True): the epochs that fit a time budget, planned from the first epoch's pace, kept on resume."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from seglearn.engine import fit
from seglearn.models import create_model
from seglearn.partial import planned_epochs

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


class Clock:
    """The budget's clock, advanced only by loading: each image served costs ``per_image`` seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedScenes(Dataset):
    """Six tiny three-class scenes; serving one advances ``clock`` by half a second (a step of two: one second)."""

    def __init__(self, clock: Clock | None, n: int = 6) -> None:
        g = torch.Generator().manual_seed(0)
        self.masks = torch.randint(0, 3, (n, 4, 6), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
        self.images = torch.eye(3)[self.masks].permute(0, 3, 1, 2) + 0.3 * torch.randn(n, 3, 32, 48, generator=g)
        self.clock = clock

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int):
        if self.clock is not None:
            self.clock.now += 0.5
        return self.images[i], self.masks[i]


@pytest.fixture
def clock(monkeypatch):
    import seglearn.partial

    c = Clock()
    monkeypatch.setattr(seglearn.partial, "_clock", c)
    return c


def _run(clock, ckpt, budget, epochs=20, resume=False, init_seed=0):
    """tinyfcn on 3 steps an epoch (one second each on ``clock``), at most ``epochs``, planned for ``budget``."""
    torch.manual_seed(init_seed)
    model = create_model("tinyfcn", 3, width=8)
    train = DataLoader(TimedScenes(clock), batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(4))
    val = DataLoader(TimedScenes(None, 2), batch_size=2)
    h = fit(model, train, val, epochs=epochs, lr=0.05, seed=3, device="cpu", checkpoint_dir=ckpt, resume=resume,
            time_budget_s=budget, plan_epochs=True, val_every=100, progress=False)  # fmt: skip
    return model, h


def test_the_first_epoch_sets_how_many_epochs_fit_the_budget(clock, tmp_path):
    # epoch 1 takes 3 s: a 10 s budget holds 3 epochs, and the poly decay is planned to end with the third
    _, h = _run(clock, tmp_path, budget=10.0)
    assert h.planned_epochs == 3 and h.epochs == 3 and not h.stopped_early and h.partial_steps == 0
    assert h.val_epochs == [3]  # validated once, at the planned end (val_every=100)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["scheduler"]["total_iters"] == 9 and state["scheduler"]["last_epoch"] == 9
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # the decay reached zero at the budget
    assert h.lr[-1] > 0 and state["recipe"]["plan_epochs"] is True


def test_the_plan_never_exceeds_epochs_and_needs_a_budget(clock, tmp_path):
    _, h = _run(clock, tmp_path / "cap", budget=100.0, epochs=2)
    assert h.planned_epochs == 2 and h.epochs == 2
    with pytest.raises(ValueError, match="plan_epochs=True plans the epochs that fit a time budget"):
        fit(create_model("tinyfcn", 3, width=8), DataLoader(TimedScenes(None), batch_size=2), epochs=2, lr=0.05,
            plan_epochs=True, progress=False)  # fmt: skip


@pytest.mark.parametrize(
    ("budget", "first", "most", "planned"),
    [(900, 30, 200, 30), (900, 31, 200, 29), (900, 34, 200, 26), (900, 1000, 200, 1), (900, 1, 200, 200)],
)
def test_planned_epochs_is_the_nearest_whole_number_within_bounds(budget, first, most, planned):
    assert planned_epochs(budget, first, most) == planned


def test_a_resumed_run_keeps_its_plan_and_stays_exact(clock, tmp_path):
    straight_model, straight = _run(clock, tmp_path / "straight", budget=6.5)  # plans round(6.5 / 3) = 2 epochs
    assert straight.planned_epochs == 2 and not straight.stopped_early
    # A 5 s budget plans the same 2 epochs and stops 2 steps into the second; the resumed run (a new budget of its
    # own) finishes that epoch and stops there: the plan, not --epochs 20, is the run's length.
    _, stopped = _run(clock, tmp_path / "stopped", budget=5.0)
    assert stopped.planned_epochs == 2 and stopped.stopped_early and stopped.partial_steps == 2
    model, h = _run(clock, tmp_path / "stopped", budget=5.0, resume=True, init_seed=99)
    assert h.epochs == 2 and h.planned_epochs == 2 and not h.stopped_early
    assert h.train_loss == straight.train_loss and h.lr == straight.lr
    for (k, a), b in zip(model.state_dict().items(), straight_model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # once finished, resuming again trains nothing more
    _, again = _run(clock, tmp_path / "stopped", budget=5.0, resume=True)
    assert again.epochs == 2 and again.train_loss == straight.train_loss
