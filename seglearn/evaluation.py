"""Scoring and inference: ``evaluate`` (a loader's scores from one confusion matrix) and ``predict`` (class
probabilities averaged over scales and flips), with the device helpers training shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed as D
from .checks import check_batch, check_scales, input_channels, split_batch
from .data.collate import same_size_groups
from .metrics import ConfusionMatrix, SegScores
from .models import logits_of, resize_to
from .progress import progress_bar

__all__ = ["evaluate", "predict", "default_device"]


def default_device() -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(images: Tensor, masks: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    return images, masks.to(device, non_blocking=True).long()


def _averaged_probs(net: nn.Module, x: Tensor, scales: Sequence[float], flip: bool) -> Tensor:
    """Softmax (N, C, H, W) at ``x``'s size, averaged over input ``scales`` and, with ``flip``, horizontal flips."""
    h, w = x.shape[-2:]
    total: Tensor | None = None
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            logits = logits_of(net(xs.flip(-1) if flipped else xs)).float()
            probs = resize_to(logits.flip(-1) if flipped else logits, (h, w)).softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int | None,
    device: str | torch.device | None = None,
    ignore_index: int = 255,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp: bool = True,
    channels_last: bool = False,
    progress: bool = False,
) -> SegScores:
    """Scores of ``model`` on every (image, mask) batch of ``loader``, from one dataset-wide confusion matrix.

    ``scales``/``flip`` as :func:`predict`: the prediction is the argmax of the softmax averaged over the input
    scales and, with ``flip``, horizontal flips (the default is the plain argmax of the logits).
    ``num_classes=None`` takes the model's output channels. Under torch.distributed the matrices of all ranks are
    summed before scoring (give each rank a disjoint shard, e.g. ``seglearn.distributed.eval_sampler``).
    """
    check_scales(scales)
    net = D.unwrap_model(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    was_training = net.training
    net.eval()
    amp_dtype = _amp_dtype(device, amp)
    in_channels = input_channels(net)
    plain = tuple(scales) == (1.0,) and not flip
    cm = ConfusionMatrix(num_classes, ignore_index, device=device) if num_classes is not None else None
    batches = 0
    try:
        for batch in progress_bar(loader, enabled=progress and D.get_rank() == 0, desc="eval", leave=False):
            for images, masks in same_size_groups(*split_batch(batch)):  # a VOC batch: one run per image size
                check_batch(images, masks, in_channels)
                images, masks = _to_device(images, masks, device, channels_last)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    scores = logits_of(net(images)) if plain else _averaged_probs(net, images, scales, flip)
                if cm is None:
                    cm = ConfusionMatrix(scores.shape[1], ignore_index, device=device)
                cm.update(scores.argmax(1), masks)
            batches += 1
    finally:
        net.train(was_training)
    total = D.all_reduce_sum(torch.tensor(float(batches), device=device))
    if cm is None or float(total) == 0:  # scores of no images would be NaN
        raise ValueError(
            "the evaluation loader yielded no batches (an empty val split, or fewer images than batch_size with "
            "drop_last=True?): pass a loader with images"
        )
    return cm.all_reduce().compute()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class probabilities (N, C, H, W), averaged over input ``scales`` and, with ``flip``, horizontal flips.

    ``images``: normalized float (N, 3, H, W) or (3, H, W) (a batch of one). Each scale resizes the input
    (bilinear), runs the model and resizes the logits back to (H, W) before the softmax; the result is on the
    device of ``images``.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim not in (3, 4):
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"predict expects a float tensor (N, 3, H, W) or (3, H, W), normalized; got {got}")
    check_scales(scales)
    if not bool(torch.isfinite(images).all()):
        raise ValueError("predict got images holding NaN or infinity: check how they were loaded and normalized")
    x = images[None] if images.ndim == 3 else images
    net = D.unwrap_model(model)
    was_training = net.training
    net.eval()
    try:
        probs = _averaged_probs(net, x.to(next(net.parameters()).device), scales, flip)
    finally:
        net.train(was_training)
    return probs.to(images.device)
