"""Segmentation scores from one dataset-wide confusion matrix: pixel accuracy, mean accuracy, IoU, mIoU, fwIoU.

Scores are always computed from the matrix summed over the whole dataset (and over processes), never averaged over
batches: a batch with few pixels of a class would otherwise weigh as much as a batch full of it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["ConfusionMatrix", "SegScores", "majority_baseline"]


def _nanmean(x: np.ndarray) -> float:
    """Mean over the finite entries; NaN (without a warning) when there are none."""
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


def _fmt(x: float) -> str:
    return "-" if np.isnan(x) else f"{100 * x:.2f}"


@dataclass(eq=False)
class SegScores:
    """Scores of one evaluation, all fractions in [0, 1], as defined in "Fully Convolutional Networks for Semantic
    Segmentation" (Long, Shelhamer and Darrell, https://arxiv.org/abs/1411.4038, section 5).

    Attributes:
        pixel_acc: correct pixels / labelled pixels.
        mean_acc: mean over classes of the per-class recall ``acc``.
        iou: (C,) float64 intersection over union per class; NaN for a class absent from both truth and prediction.
        miou: mean of ``iou`` over the classes where it is defined.
        fwiou: IoU weighted by each class's share of the labelled pixels.
        acc: (C,) float64 recall per class (correct / truth pixels); NaN for a class absent from the truth.
    """

    pixel_acc: float
    mean_acc: float
    iou: np.ndarray
    miou: float
    fwiou: float
    acc: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.iou = np.asarray(self.iou, dtype=np.float64)
        self.acc = np.full_like(self.iou, np.nan) if self.acc is None else np.asarray(self.acc, dtype=np.float64)

    def __eq__(self, other: object) -> bool:
        # Field by field with NaN == NaN (absent classes), so a checkpoint round trip compares equal.
        if not isinstance(other, SegScores):
            return NotImplemented
        return all(
            np.array_equal(np.asarray(getattr(self, f)), np.asarray(getattr(other, f)), equal_nan=True)
            for f in ("pixel_acc", "mean_acc", "iou", "miou", "fwiou", "acc")
        )

    @property
    def num_classes(self) -> int:
        return int(self.iou.shape[0])

    def as_dict(self) -> dict[str, float | list[float]]:
        """Plain Python floats and lists (JSON- and logger-friendly)."""
        return {
            "pixel_acc": float(self.pixel_acc),
            "mean_acc": float(self.mean_acc),
            "miou": float(self.miou),
            "fwiou": float(self.fwiou),
            "iou": [float(v) for v in self.iou],
            "acc": [float(v) for v in self.acc],
        }

    def table(self, class_names: list[str] | tuple[str, ...] | None = None) -> str:
        """Per-class IoU and accuracy (percent; ``-`` where undefined), then the summary scores."""
        names = [str(i) for i in range(self.num_classes)] if class_names is None else [str(n) for n in class_names]
        if len(names) != self.num_classes:
            raise ValueError(f"got {len(names)} class names for {self.num_classes} classes: pass one name per class")
        width = max(12, *(len(n) for n in names))
        lines = [f"{'class':<{width}}  {'IoU %':>7}  {'Acc %':>7}", "-" * (width + 18)]
        rows = zip(names, self.iou, self.acc, strict=True)
        lines += [f"{n:<{width}}  {_fmt(i):>7}  {_fmt(a):>7}" for n, i, a in rows]
        lines.append("-" * (width + 18))
        for label, value in (
            ("mIoU", self.miou),
            ("pixel acc", self.pixel_acc),
            ("mean acc", self.mean_acc),
            ("fwIoU", self.fwiou),
        ):
            lines.append(f"{label:<{width}}  {_fmt(value):>7}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return (
            f"mIoU {_fmt(self.miou)} | pixel acc {_fmt(self.pixel_acc)} | "
            f"mean acc {_fmt(self.mean_acc)} | fwIoU {_fmt(self.fwiou)}"
        )


class ConfusionMatrix:
    """Dataset-wide confusion matrix ``mat[truth, prediction]`` (C, C) int64, accumulated with ``torch.bincount``.

    The counts behind the scores of "Fully Convolutional Networks for Semantic Segmentation" (Long et al.,
    https://arxiv.org/abs/1411.4038, section 5): ``n_ij`` pixels of class i predicted as j.

    Args:
        num_classes: number of classes C.
        ignore_index: target value excluded from counting (VOC boundaries, CamVid void).
        device: where the matrix lives; inputs are moved there (predictions after the argmax, so logits never travel).

    ``update(pred, target)`` takes labels (N, H, W) or logits (N, C, H, W) and a target (N, H, W). Matrices from
    several workers combine with ``merge`` / ``+`` or, under ``torch.distributed``, ``all_reduce()``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: torch.device | str | None = None) -> None:
        if int(num_classes) < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.mat = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.mat.device

    def to(self, device: torch.device | str) -> ConfusionMatrix:
        """Move the matrix (in place) and return self."""
        self.mat = self.mat.to(device)
        return self

    def reset(self) -> None:
        self.mat.zero_()

    def _labels(self, pred: Tensor, target: Tensor) -> Tensor:
        """Predicted labels with the target's shape, from labels or logits (argmax over dim 1)."""
        if pred.dim() == target.dim() + 1:
            if pred.shape[1] != self.num_classes or pred.shape[:1] + pred.shape[2:] != target.shape:
                raise ValueError(
                    f"logits {tuple(pred.shape)} do not match target {tuple(target.shape)} with "
                    f"{self.num_classes} classes: expected logits (N, {self.num_classes}, H, W) for a target (N, H, W)"
                )
            return pred.argmax(dim=1)
        if pred.shape != target.shape:
            raise ValueError(
                f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape: pass labels "
                "(N, H, W) or logits (N, C, H, W) at the target's size (resize the logits to the mask first)"
            )
        if pred.is_floating_point():
            raise TypeError("prediction labels must be integers: pass logits (N, C, H, W) or call .argmax(1) first")
        return pred

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> ConfusionMatrix:
        """Add a batch: ``pred`` labels (N, H, W) or logits (N, C, H, W), ``target`` (N, H, W). Returns self."""
        pred, target = torch.as_tensor(pred), torch.as_tensor(target)
        if target.is_floating_point():
            raise TypeError(f"target must hold integer class labels, got dtype {target.dtype}")
        labels = self._labels(pred, target).to(self.device, torch.int64).reshape(-1)
        target = target.to(self.device, torch.int64).reshape(-1)
        valid = target != self.ignore_index
        target, labels = target[valid], labels[valid]
        if target.numel() == 0:
            return self
        c = self.num_classes
        # One sync for both range checks: min/max of truth and prediction together.
        t_min, t_max, p_min, p_max = torch.stack([target.min(), target.max(), labels.min(), labels.max()]).tolist()
        if t_min < 0 or t_max >= c:
            bad = t_max if t_max >= c else t_min
            raise ValueError(
                f"target holds label {bad}, outside [0, {c}) and not ignore_index={self.ignore_index}: "
                "map void/unlabelled pixels to ignore_index or check num_classes"
            )
        if p_min < 0 or p_max >= c:
            bad = p_max if p_max >= c else p_min
            raise ValueError(f"prediction holds label {bad}, outside [0, {c}): check num_classes")
        self.mat += torch.bincount(target * c + labels, minlength=c * c).reshape(c, c)
        return self

    def _check_compatible(self, other: ConfusionMatrix) -> None:
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a matrix of {other.num_classes} classes (ignore_index={other.ignore_index}) into one "
                f"of {self.num_classes} classes (ignore_index={self.ignore_index})"
            )

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add ``other``'s counts into this matrix (in place) and return self."""
        self._check_compatible(other)
        self.mat += other.mat.to(self.device)
        return self

    def __add__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        self._check_compatible(other)
        out = ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)
        out.mat = self.mat + other.mat.to(self.device)
        return out

    def __radd__(self, other: object) -> ConfusionMatrix:
        # sum(matrices) starts from 0.
        if isinstance(other, int) and other == 0:
            return self + ConfusionMatrix(self.num_classes, self.ignore_index, device=self.device)
        return NotImplemented

    def all_reduce(self) -> ConfusionMatrix:
        """Sum the matrix over all ``torch.distributed`` ranks in place (no-op when not initialized); returns self.

        With the NCCL backend the matrix must be on the rank's GPU (``device=``); gloo takes CPU tensors.
        """
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> SegScores:
        """Scores of the accumulated matrix; classes absent from truth and prediction are left out of the means."""
        m = self.mat.double().cpu().numpy()
        tp = np.diag(m)
        truth, predicted = m.sum(axis=1), m.sum(axis=0)
        union = truth + predicted - tp
        total = m.sum()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(truth > 0, tp / truth, np.nan)
            pixel_acc = float(tp.sum() / total) if total > 0 else float("nan")
            fwiou = float(np.nansum(truth / total * iou)) if total > 0 else float("nan")
        return SegScores(pixel_acc=pixel_acc, mean_acc=_nanmean(acc), iou=iou, miou=_nanmean(iou), fwiou=fwiou, acc=acc)

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"device={self.device}, pixels={int(self.mat.sum())})"
        )


@torch.no_grad()
def majority_baseline(
    train: Iterable[tuple[Tensor, Tensor]],
    val: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    ignore_index: int = 255,
) -> tuple[int, SegScores]:
    """The floor every model must beat: the most frequent class of ``train``'s masks, predicted everywhere on ``val``.

    ``train`` and ``val`` yield ``(images, masks)`` batches with masks (N, H, W) (DataLoaders do; a val batch may hold
    a list of (H_i, W_i) masks, as ``make_loader`` gives for images of different sizes). Returns that class
    and its scores on ``val``; a trained model that does not beat them has learned nothing beyond the class prior.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for _, masks in train:
        masks = masks[masks != ignore_index].to(torch.int64)
        if masks.numel() and (masks.min() < 0 or masks.max() >= num_classes):
            raise ValueError(f"train masks hold labels outside [0, {num_classes}) and not ignore_index={ignore_index}")
        counts += torch.bincount(masks, minlength=num_classes).cpu()
    if counts.sum() == 0:
        raise ValueError("train yielded no labelled pixel: every mask is empty or ignore_index")
    majority = int(counts.argmax())
    cm = ConfusionMatrix(num_classes, ignore_index)
    for _, masks in val:
        for m in [masks] if isinstance(masks, Tensor) else masks:  # a list: VOC's images of different sizes
            cm.update(torch.full_like(m, majority), m)
    return majority, cm.compute()


def boundary_band(target: Tensor, width: int = 3, ignore_index: int = 255) -> Tensor:
    """Labelled pixels within ``width`` pixels of a change of label: (N, H, W) int -> (N, H, W) bool.

    Where a model's upsampling is coarse, its errors gather here: accuracy on this band measures how well the
    prediction follows object outlines (as in FCN's stride-32 vs stride-8 comparison). A pixel next to void counts
    as a boundary pixel too (void outlines objects in VOC); void pixels themselves never do.
    """
    if width < 1:
        raise ValueError(f"width={width} must be at least 1 pixel")
    t = target.float()[:, None]
    k = 2 * width + 1
    high = torch.nn.functional.max_pool2d(t, k, stride=1, padding=width)
    low = -torch.nn.functional.max_pool2d(-t, k, stride=1, padding=width)
    return (high != low)[:, 0] & (target != ignore_index)
