"""The checks ``fit``, ``train_one_epoch``, ``evaluate`` and ``predict`` run on what they are given, each a
ValueError saying what to do: batch shapes and dtypes, mask labels, scales, learning rates, empty loaders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["split_batch", "check_batch", "check_labels", "input_channels", "check_scales", "check_lr",
           "check_val_loader"]  # fmt: skip

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"the loader must yield (images, masks) pairs, got {type(batch).__name__}")


def check_batch(images: Tensor, masks: Tensor, in_channels: int | None) -> None:
    """Shape/dtype checks with advice; cheap (no device sync)."""
    c = in_channels or 3
    if not (isinstance(images, Tensor) and images.ndim == 4 and images.is_floating_point()):
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"expected images as a float tensor (N, {c}, H, W), got {got}; "
            "use a transforms preset (seglearn.data.train_transforms) that normalizes and converts to tensors"
        )
    if in_channels is not None and images.shape[1] != in_channels:
        raise ValueError(f"expected images (N, {in_channels}, H, W) for this model, got {tuple(images.shape)}")
    if not (isinstance(masks, Tensor) and masks.ndim == 3 and masks.dtype in _INT_DTYPES):
        got = f"{tuple(masks.shape)} {masks.dtype}" if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"expected masks as an integer tensor (N, H, W) of class indices, got {got}")
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"images {tuple(images.shape)} and masks {tuple(masks.shape)} disagree: "
            "need the same N and the same H, W (transform image and mask together)"
        )


def check_labels(masks: Tensor, num_classes: int, ignore_index: int, where: str) -> None:
    """Labels outside 0..C-1 that are not ``ignore_index`` would reach cross_entropy: a raw IndexError on a CPU,
    a device-side assert that ends the process on a GPU. Checked on the loader's (CPU) masks."""
    bad = (masks != ignore_index) & ((masks < 0) | (masks >= num_classes))
    if bool(bad.any()):
        values = torch.unique(masks[bad]).tolist()
        shown = ", ".join(map(str, values[:5])) + (", ..." if len(values) > 5 else "")
        raise ValueError(
            f"masks of {where} hold labels {shown}, outside 0..{num_classes - 1} and not ignore_index "
            f"({ignore_index}): map them to class indices (e.g. void -> {ignore_index}) or build the model with "
            f"num_classes > {max(values)}"
        )


def input_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def check_scales(scales: Sequence[float]) -> None:
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")


def check_lr(lr: float | torch.optim.Optimizer) -> Any:
    """``lr`` (a number, or an optimizer's param groups) when it is finite and > 0; else a ValueError."""
    rates = [g["lr"] for g in lr.param_groups] if isinstance(lr, torch.optim.Optimizer) else [lr]
    if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0 for r in rates):
        raise ValueError(f"lr must be a finite number > 0 (e.g. 0.01), got {rates[0] if len(rates) == 1 else rates}")
    return lr


def check_val_loader(val_loader: Any) -> None:
    if val_loader is not None and hasattr(val_loader, "__len__") and len(val_loader) == 0:
        raise ValueError(
            "val_loader yields no batches (an empty val split, or fewer images than batch_size with "
            "drop_last=True?): pass a loader with images, or val_loader=None to train without validation"
        )
