"""What :func:`seglearn.engine.fit` records per epoch: its plain-data form for checkpoints, and its JSON form."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from .metrics import SegScores

__all__ = ["History"]


def _scores_to_dict(scores: SegScores) -> dict[str, Any]:
    # Arrays become float64 tensors: plain enough for torch.load(weights_only=True), and NaN survives the round trip.
    out: dict[str, Any] = {}
    for f in fields(scores):
        value = getattr(scores, f.name)
        out[f.name] = torch.from_numpy(np.array(value, dtype=np.float64)) if isinstance(value, np.ndarray) else value
    return out


def _scores_from_dict(d: dict[str, Any]) -> SegScores:
    kwargs = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in d.items()}
    return SegScores(**kwargs)


@dataclass
class History:
    """Per-epoch record of a training run (epochs are counted from 1).

    Attributes:
        train_loss: mean training loss of each epoch (weighted by batch size).
        val: the :class:`~seglearn.metrics.SegScores` of each validation, in order.
        val_epochs: the epoch each entry of ``val`` belongs to.
        lr: learning rate of the last iteration of each epoch (first param group).
        epoch_time: wall-clock seconds of each epoch, validation included (checkpoint writing not).
        train_time: wall-clock seconds of each epoch's training loop alone (data loading included, validation not).
        train_images: images trained on in each epoch (summed over ranks).
        peak_memory_mib, memory_kind: peak memory of the run and what was measured (seglearn.memory.peak_memory_mib).
        best_miou: best validation mIoU so far (NaN before any validation).
        best_epoch: the epoch that reached ``best_miou`` (0 before any validation).
        stopped_early: True when ``time_budget_s`` ended the run before ``epochs``.
        partial_steps: steps of the last recorded epoch when the time budget stopped it midway (its entries and its
            validation then describe an unfinished epoch, which never counts as best); 0 when every epoch finished.
        planned_epochs: the epochs ``fit(plan_epochs=True)`` planned after the first one to fit its time budget; 0
            when the run was not planned.
    """

    train_loss: list[float] = field(default_factory=list)
    val: list[SegScores] = field(default_factory=list)
    val_epochs: list[int] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    epoch_time: list[float] = field(default_factory=list)
    train_time: list[float] = field(default_factory=list)
    train_images: list[int] = field(default_factory=list)
    peak_memory_mib: float = math.nan
    memory_kind: str = ""
    best_miou: float = math.nan
    best_epoch: int = 0
    stopped_early: bool = False
    partial_steps: int = 0
    planned_epochs: int = 0

    @property
    def epochs(self) -> int:
        """Number of recorded epochs (the last one unfinished when ``partial_steps``)."""
        return len(self.train_loss)

    @property
    def images_per_s(self) -> float:
        """Training throughput over the whole run: images trained on / seconds in the training loops (NaN if none)."""
        seconds = sum(self.train_time)
        return sum(self.train_images) / seconds if seconds > 0 else math.nan

    @property
    def best(self) -> SegScores | None:
        """The scores of the best validation epoch, or None before any validation."""
        if self.best_epoch in self.val_epochs:
            return self.val[self.val_epochs.index(self.best_epoch)]
        return None

    def record_train(self, loss: float, images: int, seconds: float, lr: float) -> None:
        """Append one epoch's training: mean loss, images trained on, seconds in the loop, lr of its last step."""
        self.train_loss.append(float(loss))
        self.train_images.append(int(images))
        self.train_time.append(float(seconds))
        self.lr.append(float(lr))

    def record_memory(self, peak_mib: float, kind: str) -> None:
        """Keep the larger of the recorded and the new peak (a resumed run keeps the peak of its earlier part)."""
        self.peak_memory_mib = peak_mib if math.isnan(self.peak_memory_mib) else max(self.peak_memory_mib, peak_mib)
        self.memory_kind = kind

    def record_val(self, epoch: int, scores: SegScores, partial: bool = False) -> bool:
        """Append a validation result; returns True when it is a new best mIoU (NaN never is, nor is the
        validation of an unfinished epoch: ``best.pt`` holds finished epochs)."""
        self.val.append(scores)
        self.val_epochs.append(epoch)
        improved = not partial and not math.isnan(scores.miou)
        improved = improved and (math.isnan(self.best_miou) or scores.miou > self.best_miou)
        if improved:
            self.best_miou, self.best_epoch = float(scores.miou), epoch
        return improved

    def drop_partial(self) -> None:
        """Remove the unfinished last epoch (its training entries and its validation): a resumed run records the
        whole epoch when it has finished it, so its history reads as an uninterrupted run's."""
        if not self.partial_steps:
            return
        if self.val_epochs[-1:] == [self.epochs]:
            self.val.pop()
            self.val_epochs.pop()
        for entries in (self.train_loss, self.train_images, self.train_time, self.lr, self.epoch_time):
            entries.pop()
        self.partial_steps, self.stopped_early = 0, False

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, numbers and tensors only, so ``torch.load(..., weights_only=True)`` reads it back."""
        return self._plain(_scores_to_dict)

    def as_json(self) -> dict[str, Any]:
        """Plain Python lists and numbers for ``json.dumps`` (scores via :meth:`SegScores.as_dict`; NaN stays NaN)."""
        return self._plain(SegScores.as_dict)

    def _plain(self, scores: Callable[[SegScores], dict[str, Any]]) -> dict[str, Any]:
        """Every field as plain data; the two forms differ only in how a :class:`SegScores` is written."""
        return {
            "train_loss": [float(x) for x in self.train_loss],
            "val": [scores(s) for s in self.val],
            "val_epochs": [int(e) for e in self.val_epochs],
            "lr": [float(x) for x in self.lr],
            "epoch_time": [float(x) for x in self.epoch_time],
            "train_time": [float(x) for x in self.train_time],
            "train_images": [int(x) for x in self.train_images],
            "peak_memory_mib": float(self.peak_memory_mib),
            "memory_kind": self.memory_kind,
            "best_miou": float(self.best_miou),
            "best_epoch": int(self.best_epoch),
            "stopped_early": bool(self.stopped_early),
            "partial_steps": int(self.partial_steps),
            "planned_epochs": int(self.planned_epochs),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            train_loss=list(d["train_loss"]),
            val=[_scores_from_dict(s) for s in d["val"]],
            val_epochs=list(d["val_epochs"]),
            lr=list(d["lr"]),
            epoch_time=list(d["epoch_time"]),
            train_time=list(d.get("train_time", [])),  # absent from checkpoints written before it was recorded
            train_images=list(d.get("train_images", [])),
            peak_memory_mib=float(d.get("peak_memory_mib", math.nan)),
            memory_kind=str(d.get("memory_kind", "")),
            best_miou=float(d.get("best_miou", math.nan)),
            best_epoch=int(d.get("best_epoch", 0)),
            stopped_early=bool(d.get("stopped_early", False)),
            partial_steps=int(d.get("partial_steps", 0)),
            planned_epochs=int(d.get("planned_epochs", 0)),
        )
