"""Optimizers by name (with per-layer learning-rate multipliers), and learning-rate schedules stepped once per
iteration: "poly" decay, or "step" decay (x0.1 every N iterations, the FCN/DeepLab-v1 Caffe solvers), each after an
optional linear warm-up."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .options import parse_schedule

__all__ = ["PolyLR", "StepDecayLR", "poly_factor", "build_optimizer", "build_schedule", "parse_schedule", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    optimizer: str | torch.optim.Optimizer,
    model: nn.Module,
    lr: float,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    lr_mult: Mapping[str, float] | None = None,
) -> torch.optim.Optimizer:
    """An optimizer instance is returned as is; ``"sgd"`` (momentum, weight decay) or ``"adamw"`` builds one.

    ``lr_mult`` maps a parameter-name prefix to a learning-rate multiplier, e.g. ``{"classifier": 10}`` for
    DeepLab-v1's 10x rate on its new classifier (the Caffe solvers' ``lr_mult``): those parameters get their own
    param group at ``lr * mult`` (the schedules scale every group by its own base rate); the rest are group 0, at
    ``lr``. A prefix that matches no parameter is a ValueError naming the model's top-level modules.
    """
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    groups = param_groups(model, lr, lr_mult or {})
    name = str(optimizer).lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)} (or pass an instance)")


def param_groups(model: nn.Module, lr: float, lr_mult: Mapping[str, float]) -> list[dict]:
    """The trainable parameters in groups: the rest at ``lr`` first, then one group per ``lr_mult`` prefix (the
    longest matching prefix wins), each with ``lr = lr * mult`` and its ``lr_mult`` recorded."""
    for prefix, mult in lr_mult.items():
        if not (isinstance(mult, int | float) and math.isfinite(mult) and mult > 0):
            raise ValueError(f"lr_mult[{prefix!r}] must be a number > 0, got {mult!r}")
    prefixes = sorted(lr_mult, key=len, reverse=True)
    rest: list[nn.Parameter] = []
    by_prefix: dict[str, list[nn.Parameter]] = {p: [] for p in lr_mult}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = next((p for p in prefixes if name == p or name.startswith(p + ".")), None)
        (rest if match is None else by_prefix[match]).append(param)
    empty = [p for p, params in by_prefix.items() if not params]
    if empty:
        modules = ", ".join(name for name, _ in model.named_children())
        raise ValueError(f"lr_mult prefix {', '.join(map(repr, empty))} matches no trainable parameter; the model's "
                         f"top-level modules are: {modules} (a prefix is a parameter name up to a dot)")  # fmt: skip
    groups = [{"params": rest, "lr": lr, "lr_mult": 1.0}] if rest else []
    return groups + [{"params": by_prefix[p], "lr": lr * lr_mult[p], "lr_mult": float(lr_mult[p])} for p in lr_mult]


def build_schedule(
    schedule: str, optimizer: Optimizer, total_iters: int, power: float = 0.9, warmup_iters: int = 0
) -> PolyLR | StepDecayLR:
    """The per-iteration scheduler ``schedule`` names (:func:`parse_schedule`) over ``total_iters`` iterations."""
    name, every, gamma = parse_schedule(schedule)
    if name == "step":
        return StepDecayLR(optimizer, every, gamma, warmup_iters=warmup_iters)
    power = 0.0 if name == "fixed" else power  # (1 - t/T) ** 0 == 1: one rate throughout, after the warm-up
    return PolyLR(optimizer, total_iters=total_iters, power=power, warmup_iters=warmup_iters)


def _warmup(step: int, warmup_iters: int, warmup_ratio: float) -> float:
    """The linear warm-up's multiplier at ``step``: from ``warmup_ratio`` up to 1 over ``warmup_iters``, then 1."""
    return warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters if step < warmup_iters else 1.0


def poly_factor(
    step: int, total_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 1e-3
) -> float:
    """Multiplier of the base learning rate at iteration ``step`` (0-based).

    ``(1 - step / total_iters) ** power``, clamped at 0 after ``total_iters``; during the first ``warmup_iters``
    iterations it is further scaled by a ramp that rises linearly from ``warmup_ratio`` to 1 (as mmsegmentation's
    linear warm-up, applied on top of the poly value).
    """
    if total_iters < 1:
        raise ValueError(f"total_iters must be >= 1, got {total_iters}")
    t = min(max(step, 0), total_iters)
    factor = (1.0 - t / total_iters) ** power
    return factor * _warmup(step, warmup_iters, warmup_ratio)


class PolyLR(LRScheduler):
    """``lr = base_lr * (1 - t / total_iters) ** power`` after an optional linear warm-up; call ``step()`` per batch.

    The poly policy of "ParseNet: Looking Wider to See Better" (https://arxiv.org/abs/1506.04579), used with
    ``power=0.9`` by DeepLab ("DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous
    Convolution, and Fully Connected CRFs", https://arxiv.org/abs/1606.00915) and every later model here.
    The value is computed in closed form each step (no drift from chained multiplications), and the scheduler's
    ``state_dict`` holds only numbers, so checkpoints load with ``torch.load(weights_only=True)``.

    Args:
        optimizer: the wrapped optimizer; each param group's ``initial_lr`` is its base learning rate.
        total_iters: iterations until the learning rate reaches 0 (epochs * batches per epoch).
        power: the poly exponent (0.9 in the papers).
        warmup_iters: length of the linear warm-up in iterations (0: none).
        warmup_ratio: the warm-up's starting fraction of the poly value.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_iters: int,
        power: float = 0.9,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-3,
        last_epoch: int = -1,
    ) -> None:
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        if warmup_iters < 0 or not 0.0 <= warmup_ratio <= 1.0:
            raise ValueError(f"need warmup_iters >= 0 and 0 <= warmup_ratio <= 1, got {warmup_iters}, {warmup_ratio}")
        self.total_iters = total_iters
        self.power = power
        self.warmup_iters = warmup_iters
        self.warmup_ratio = warmup_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        f = poly_factor(self.last_epoch, self.total_iters, self.power, self.warmup_iters, self.warmup_ratio)
        return [base * f for base in self.base_lrs]

    def set_total_iters(self, total_iters: int) -> None:
        """Give the schedule a new length now: the next step's learning rate is already the new schedule's."""
        if total_iters < 1:
            raise ValueError(f"total_iters must be >= 1, got {total_iters}")
        self.total_iters = total_iters
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]


class StepDecayLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_iters)`` after an optional linear warm-up; call ``step()`` per batch.

    The "step" policy of the Caffe solvers behind FCN and DeepLab-v1 (DeepLab-v1: x0.1 every 2000 iterations, 6000
    in all, at batch 20). Closed form per step, and a ``state_dict`` of numbers only, as :class:`PolyLR`. The
    schedule does not depend on the run's length, so :meth:`set_total_iters` (a planned run) changes nothing.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        step_iters: int,
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-3,
        last_epoch: int = -1,
    ) -> None:
        if step_iters < 1 or not 0 < gamma < 1:
            raise ValueError(f"need step_iters >= 1 and 0 < gamma < 1, got {step_iters}, {gamma}")
        self.step_iters, self.gamma = step_iters, gamma
        self.warmup_iters, self.warmup_ratio = warmup_iters, warmup_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        t = max(self.last_epoch, 0)
        f = self.gamma ** (t // self.step_iters) * _warmup(t, self.warmup_iters, self.warmup_ratio)
        return [base * f for base in self.base_lrs]

    def set_total_iters(self, total_iters: int) -> None:
        """Nothing to change: the step schedule has no end (see the class docstring)."""
