"""Optimizers by name, and learning-rate schedules stepped once per iteration: "poly" decay with a linear warm-up."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["PolyLR", "poly_factor", "build_optimizer", "OPTIMIZERS"]

OPTIMIZERS = ("sgd", "adamw")


def build_optimizer(
    optimizer: str | torch.optim.Optimizer,
    model: nn.Module,
    lr: float,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """An optimizer instance is returned as is; ``"sgd"`` (momentum, weight decay) or ``"adamw"`` builds one."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    name = str(optimizer).lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {optimizer!r}; choose one of: {', '.join(OPTIMIZERS)} (or pass an instance)")


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
    if step < warmup_iters:
        factor *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_iters
    return factor


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
