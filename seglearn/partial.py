"""An epoch that ``fit``'s time budget stopped at a step boundary, and how a resumed run finishes it exactly.

When ``time_budget_s`` runs out mid-epoch, ``fit`` stops after the step in progress and saves, beside the state at
that step (weights, optimizer, schedule, every random generator), a :class:`PartialEpoch`: the steps done, the loss
and image sums so far, and the random state the epoch *started* from. Resuming replays the loader from that start
state (the same shuffle order, the same worker seeds), discards the batches already trained on, then puts back the
random state of the stop, so the rest of the epoch draws what an uninterrupted run would have drawn. The replay
costs the loading of the skipped batches, not their forward and backward passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

from . import distributed as D
from .seeding import restore_rng_state

__all__ = ["PartialEpoch", "resumed_batches", "budget_stop", "planned_epochs", "EpochPlan"]


@dataclass
class PartialEpoch:
    """The unfinished epoch of a run stopped by its time budget (sums over all ranks)."""

    steps: int  # batches already trained on
    loss_sum: float  # sum of the batch losses times the batch sizes
    images: int
    seconds: float  # in the training loop so far
    lr: float  # of the last step taken
    epoch_rng: dict[str, Any]  # seeding.capture_rng_state(loader) when the epoch started
    stop_rng: dict[str, Any]  # and when it stopped (before the validation that follows, which draws loader seeds)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a checkpoint (read back with ``weights_only=True``)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # no deep copy of the RNG tensors

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PartialEpoch | None:
        return None if d is None else cls(**d)


def resumed_batches(loader: Any, partial: PartialEpoch) -> Iterator[Any]:
    """An iterator over ``loader`` positioned after ``partial.steps`` batches of the epoch ``partial`` started, with
    the random state of the moment it stopped put back before it is returned."""
    restore_rng_state(partial.epoch_rng, loader)
    batches = iter(loader)
    for done in range(partial.steps):
        try:
            next(batches)
        except StopIteration:
            raise ValueError(
                f"the checkpoint stopped after {partial.steps} steps of an epoch, but the train loader now ends "
                f"after {done}: build the loader as the run that wrote it did, or start a fresh checkpoint_dir"
            ) from None
    restore_rng_state(partial.stop_rng, loader)
    return batches


_clock = time.perf_counter  # a module attribute, so that a test can run a budget on a clock it advances


def budget_stop(time_budget_s: float | None, device: torch.device) -> Callable[[], bool] | None:
    """``stop()`` for :func:`seglearn.engine.train_one_epoch`: True once ``time_budget_s`` seconds have passed since
    this call, on any rank (so all ranks stop after the same step); None without a budget."""
    if time_budget_s is None:
        return None
    t_start = _clock()
    return lambda: D.any_rank(_clock() - t_start >= time_budget_s, device)


def planned_epochs(time_budget_s: float, first_epoch_s: float, most: int) -> int:
    """How many epochs fit in ``time_budget_s`` at the pace of a first epoch that took ``first_epoch_s`` (setup
    included): the nearest whole number, at least 1 and at most ``most``. Nearest rather than fewer: the budget
    stops an epoch that runs over, by then at a learning rate near zero, while flooring leaves up to an epoch unused."""
    return max(1, min(most, round(time_budget_s / max(first_epoch_s, 1e-9))))


class EpochPlan:
    """``fit(plan_epochs=True)``: once the first epoch is finished, the epochs that fit the budget at its pace
    (:func:`planned_epochs`), timed on the budget's clock from this object's creation. Under torch.distributed the
    pace is the mean over ranks, so every rank plans the same number of epochs."""

    def __init__(self, time_budget_s: float | None, device: torch.device, active: bool) -> None:
        self.budget, self.device, self.active = time_budget_s, device, active
        self.t_start = _clock() if active else 0.0  # only when planning: the clock a test steps is not read else

    def after(self, complete: bool, start: PartialEpoch | None, most: int) -> int | None:
        """The planned epochs after the first finished epoch (``start``: its part run before a resume); else None."""
        if not (self.active and complete and self.budget is not None):
            return None
        self.active = False
        first_s = torch.tensor(_clock() - self.t_start + (start.seconds if start else 0.0), device=self.device)
        return planned_epochs(self.budget, D.all_reduce_sum(first_s).item() / D.get_world_size(), most)
