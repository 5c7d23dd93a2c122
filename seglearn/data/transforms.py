"""Albumentations 2 presets: image and mask move together, masks always nearest-neighbour, padding is ignore."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

# cv2.INTER_NEAREST samples at floor(x / scale), half a pixel off the pixel centres that INTER_LINEAR uses, so a
# nearest mask drifts against a bilinear image when resizing; INTER_NEAREST_EXACT samples at the centres.
MASK_INTERPOLATION = cv2.INTER_NEAREST_EXACT

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "train_transforms", "eval_transforms", "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _hw(size: int | Sequence[int], name: str) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"{name} must be a positive int or (H, W), got {size!r}")
    return int(h), int(w)


def train_transforms(
    crop_size: int | tuple[int, int],
    scale: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    ignore_index: int = 255,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: int = cv2.INTER_LINEAR,
    rotate: float = 0.0,
) -> A.Compose:
    """Random scale -> [random rotation] -> pad (image 0, mask ``ignore_index``) -> random crop -> horizontal flip ->
    normalize -> tensor.

    Output of ``preset(image=uint8 (H, W, 3), mask=uint8 (H, W))``: image float32 (3, h, w), mask (h, w) with
    ``(h, w) = crop_size``. ``interpolation`` is the image's; the mask is always nearest-neighbour (centre-aligned).
    An image smaller than the crop is padded (at a random position) with 0 and its mask with ``ignore_index``.
    ``rotate`` (degrees, 0 to 180): rotate by an angle drawn uniformly from [-rotate, rotate] about the centre,
    keeping the size; the corners it uncovers are 0 in the image and ``ignore_index`` in the mask (EncNet, Zhang et
    al. CVPR 2018, trains with ``rotate=10``). ``rotate=0`` adds no rotation step at all.
    """
    h, w = _hw(crop_size, "crop_size")
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale!r}")
    if not 0 <= rotate <= 180:
        raise ValueError(f"rotate is the largest absolute angle in degrees: pass 0 <= rotate <= 180, got {rotate!r}")
    steps = [
        A.RandomScale(
            scale_limit=(lo - 1, hi - 1), interpolation=interpolation, mask_interpolation=MASK_INTERPOLATION, p=1.0
        )
    ]
    if rotate:
        # Before pad and crop, so only the rotated image's own corners need a fill: ignore, never a class (a plain
        # rotation fills 0, which is VOC's background). cv2.warpAffine has no INTER_NEAREST_EXACT and needs none: its
        # nearest rounds the very source coordinate its bilinear interpolates at, so the mask stays on the image.
        steps.append(
            A.Rotate(
                limit=(-rotate, rotate),
                interpolation=cv2.INTER_NEAREST if interpolation == cv2.INTER_NEAREST_EXACT else interpolation,
                mask_interpolation=cv2.INTER_NEAREST,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=ignore_index,
                p=1.0,
            )
        )
    steps += [
        A.PadIfNeeded(
            min_height=h,
            min_width=w,
            position="random",
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=ignore_index,
        ),
        A.RandomCrop(height=h, width=w),
    ]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def eval_transforms(
    size: int | tuple[int, int] | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: int = cv2.INTER_LINEAR,
) -> A.Compose:
    """Optional resize to ``size`` (an int means (size, size); None keeps the image size) -> normalize -> tensor.

    Scores are usually computed at the label's own size: keep ``size=None`` for evaluation and resize only to save time.
    """
    steps = []
    if size is not None:
        h, w = _hw(size, "size")
        steps.append(A.Resize(height=h, width=w, interpolation=interpolation, mask_interpolation=MASK_INTERPOLATION))
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(steps)


def denormalize(
    image: torch.Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo ``Normalize`` for display: float (3, H, W) or (N, 3, H, W) -> uint8 (H, W, 3) or (N, H, W, 3)."""
    x = image.detach().cpu().float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"denormalize expects a (3, H, W) or (N, 3, H, W) image, got shape {tuple(x.shape)}")
    m = np.asarray(mean, np.float32)[:, None, None]
    s = np.asarray(std, np.float32)[:, None, None]
    x = (x * s + m) * 255.0
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(*range(x.ndim - 3), -2, -1, -3)
