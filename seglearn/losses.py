"""SegLoss: pixel-wise cross-entropy on the model's output dict, plus the auxiliary and SE-loss terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SegLoss", "presence_targets"]


def presence_targets(masks: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Which classes appear in each mask: (N, H, W) labels -> (N, C) float in {0, 1}; ``ignore_index`` is skipped.

    The targets of EncNet's semantic encoding loss (arXiv:1803.08904, section 3.2).
    """
    if masks.dim() < 2 or masks.is_floating_point():
        raise ValueError(f"masks must be integer labels (N, H, W), got {tuple(masks.shape)} of dtype {masks.dtype}")
    flat = masks.reshape(masks.shape[0], -1).long()
    valid = flat != ignore_index
    if valid.any():
        lo, hi = int(flat[valid].min()), int(flat[valid].max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"mask holds label {hi if hi >= num_classes else lo}, outside [0, {num_classes}) and not "
                f"ignore_index={ignore_index}: map void pixels to ignore_index or check num_classes"
            )
    # Ignored pixels scatter into an extra column C that is dropped.
    index = torch.where(valid, flat, torch.full_like(flat, num_classes))
    present = torch.zeros(flat.shape[0], num_classes + 1, device=masks.device)
    present.scatter_(1, index, 1.0)
    return present[:, :num_classes]


def _resize_labels(target: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """(N, H, W) labels -> (N, h, w) by nearest neighbour: every output pixel keeps one real label (or the void)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return F.interpolate(target[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


class SegLoss(nn.Module):
    """Cross-entropy with ``ignore_index`` on ``"out"``, + ``aux_weight`` x CE on ``"aux"``, + ``se_weight`` x SE-loss,
    + ``side_weight`` x the CE of every deep-supervision output in ``"side"``.

    The SE-loss is binary cross-entropy of the ``"se"`` class-presence logits (N, C) against
    ``presence_targets(target)``, from "Context Encoding for Semantic Segmentation" (Zhang et al., CVPR 2018,
    https://arxiv.org/abs/1803.08904), weight 0.2 as there; the auxiliary weight 0.4 is PSPNet's and EncNet's
    ("Pyramid Scene Parsing Network", https://arxiv.org/abs/1612.01105). ``"side"`` is a list of stage predictions
    (G-FRNet's coarse-to-fine outputs), at the input's size or at their own coarser one: each is scored against the
    target resized to its size by nearest neighbour (so labels stay labels and void stays void), and the stage losses
    are summed, as G-FRNet ("Gated Feedback Refinement Network for Dense Image Labeling", Islam et al., CVPR 2017)
    trains every stage.

    Args:
        ignore_index: target value that contributes nothing (VOC boundaries, CamVid void).
        aux_weight: weight of the auxiliary head's CE (used only when the output has ``"aux"``).
        se_weight: weight of the SE-loss (used only when the output has ``"se"``).
        side_weight: weight of each stage loss in ``"side"`` (used only when the output has it).
        class_weights: optional (C,) per-class CE weights (e.g. SegNet's median frequency balancing).

    Shapes: ``output`` a dict with ``"out"`` (N, C, H, W) [, ``"aux"`` (N, C, H, W), ``"se"`` (N, C), ``"side"``
    [(N, C, h_i, w_i), ...]] or a bare
    logits tensor; ``target`` (N, H, W) long -> scalar. A batch whose pixels are all ignored gives 0, not NaN.
    """

    def __init__(
        self,
        ignore_index: int = 255,
        aux_weight: float = 0.4,
        se_weight: float = 0.2,
        side_weight: float = 1.0,
        class_weights: Tensor | Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.aux_weight = float(aux_weight)
        self.se_weight = float(se_weight)
        self.side_weight = float(side_weight)
        weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        if weights is not None and (weights.dim() != 1 or (weights < 0).any()):
            raise ValueError(f"class_weights must be a 1-D sequence of C non-negative numbers, got {weights}")
        self.register_buffer("class_weights", weights, persistent=False)

    def cross_entropy(self, logits: Tensor, target: Tensor) -> Tensor:
        """Mean CE over the labelled pixels (weighted mean with ``class_weights``, as ``F.cross_entropy``)."""
        if logits.dim() != target.dim() + 1 or logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"logits {tuple(logits.shape)} do not match target {tuple(target.shape)}: expected (N, C, H, W) and "
                "(N, H, W) of the same size (resize the logits to the mask, as SegmentationModel does)"
            )
        weight = None
        if self.class_weights is not None:
            if self.class_weights.numel() != logits.shape[1]:
                raise ValueError(f"{self.class_weights.numel()} class_weights for {logits.shape[1]} classes")
            weight = self.class_weights.to(device=logits.device, dtype=logits.dtype)
        target = target.to(logits.device).long()
        # (N, H, W) per-pixel losses, 0 where ignored; summed in float32 so half-precision logits lose nothing.
        per_pixel = F.cross_entropy(logits, target, weight=weight, ignore_index=self.ignore_index, reduction="none")
        total = per_pixel.float().sum()
        valid = target != self.ignore_index
        if weight is None:
            denom = valid.sum().float()
        else:
            denom = weight.float()[torch.where(valid, target, 0)].mul(valid).sum()
        # sum / count as torch's "mean", but 0 (with a zero gradient) instead of 0/0 when every pixel is ignored.
        return total / denom.clamp_min(torch.finfo(torch.float32).tiny)

    def se_loss(self, se_logits: Tensor, target: Tensor) -> Tensor:
        """BCE-with-logits of (N, C) presence logits against the classes present in each (N, H, W) mask."""
        presence = presence_targets(target.to(se_logits.device), se_logits.shape[1], self.ignore_index)
        return F.binary_cross_entropy_with_logits(se_logits, presence.to(se_logits.dtype))

    def terms(self, output: Tensor | dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """The unweighted loss terms present in ``output``: ``"out"`` and, if present, ``"aux"`` and ``"se"``."""
        if not isinstance(output, dict):
            output = {"out": output}
        if "out" not in output:
            raise KeyError(f"model output has keys {sorted(output)}; SegLoss needs the logits under 'out'")
        terms = {"out": self.cross_entropy(output["out"], target)}
        if "aux" in output and self.aux_weight:
            terms["aux"] = self.cross_entropy(output["aux"], target)
        if "se" in output and self.se_weight:
            terms["se"] = self.se_loss(output["se"], target)
        if "side" in output and self.side_weight:
            terms["side"] = sum(self.cross_entropy(s, _resize_labels(target, s.shape[-2:])) for s in output["side"])
        return terms

    def forward(self, output: Tensor | dict[str, Tensor], target: Tensor) -> Tensor:
        weights = {"out": 1.0, "aux": self.aux_weight, "se": self.se_weight, "side": self.side_weight}
        return sum(weights[name] * value for name, value in self.terms(output, target).items())

    def extra_repr(self) -> str:
        weighted = self.class_weights is not None
        return (
            f"ignore_index={self.ignore_index}, aux_weight={self.aux_weight}, se_weight={self.se_weight}, "
            f"side_weight={self.side_weight}, "
            f"class_weights={'(C,)' if weighted else None}"
        )
