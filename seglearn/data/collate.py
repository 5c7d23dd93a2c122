"""Batching images of different sizes for evaluation (PASCAL VOC's images range from 500x500 to 500x112).

Training crops every image to one size, so the default collate stacks them. Evaluation scores every image at its
own size: padding them to a common size would change what a convolution sees at the padded edges (so the scores
would depend on the batch size), and resizing would change the labels. :func:`eval_collate` stacks a batch whose
images share a size and otherwise returns lists; :func:`same_size_groups` then runs the model once per size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

__all__ = ["eval_collate", "same_size_groups"]


def eval_collate(batch: Sequence[tuple[Any, Any]]) -> tuple[Any, Any]:
    """``[(image (3, H_i, W_i), mask (H_i, W_i)), ...]`` -> stacked tensors when every H_i, W_i is the same, else
    ``(list of images, list of masks)`` in the batch's order."""
    shapes = {tuple(getattr(image, "shape", ())) for image, _ in batch}
    if len(shapes) <= 1:
        return default_collate(batch)
    return [torch.as_tensor(image) for image, _ in batch], [torch.as_tensor(mask) for _, mask in batch]


def same_size_groups(
    images: Tensor | Sequence[Tensor], masks: Tensor | Sequence[Tensor]
) -> Iterator[tuple[Tensor, Tensor]]:
    """Stacked ``(images (n, 3, H, W), masks (n, H, W))`` per image size of a batch: a stacked batch as it is; lists
    (from :func:`eval_collate`) grouped by size, in the order each size first appears."""
    if isinstance(images, Tensor):
        yield images, masks  # type: ignore[misc]
        return
    if len(images) != len(masks):
        raise ValueError(f"a batch of {len(images)} images has {len(masks)} masks: yield one mask per image")
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    for index in groups.values():
        yield torch.stack([images[i] for i in index]), torch.stack([masks[i] for i in index])
