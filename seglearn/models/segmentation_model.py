"""``SegmentationModel``, the assembly every model but SegNet shares: pad, backbone, head, resize, output dict.

Also the helpers around it: ``resize_to`` (the one resize of logits and features), ``pad_to_multiple``,
``logits_of`` and ``count_parameters``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pad_to_multiple(x: Tensor, divisor: int, value: float = 0.0) -> Tensor:
    """Pad (N, C, H, W) on the bottom/right so H and W are multiples of ``divisor``."""
    if divisor <= 1:
        return x
    h, w = x.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    if ph == 0 and pw == 0 and not torch.jit.is_tracing():  # a traced graph (ONNX) must pad at every size
        return x
    return F.pad(x, (0, pw, 0, ph), value=value)


def resize_to(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` (align_corners=False, as torchvision's heads); a no-op at size."""
    if tuple(x.shape[-2:]) == tuple(size) and not torch.jit.is_tracing():  # traced (ONNX): resize at every size
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class SegmentationModel(nn.Module):
    """``backbone(x) -> [features fine..coarse]``; ``head(features) -> logits or dict``; optional aux head.

    Args:
        backbone: module returning a list of stage features (fine to coarse).
        head: module taking that list and returning logits (N, C, h, w) or a dict with ``"out"`` and extras.
        aux_head: optional module taking ``features[aux_index]`` and returning logits (N, C, h', w').
        aux_index: which stage feeds the auxiliary head (``-2``: the stage before the last, as torchvision).
        size_divisor: inputs are padded to a multiple of this inside ``forward`` and logits cropped back, so any
            input size works (1: no padding; logits are interpolated to the input size directly).
        crop_offset: None (the default) resizes the logits to the input bilinearly; an int instead crops them at
            that offset, for heads whose own upsampling already puts each score on its pixel (FCN-VGG's Caffe nets).

    Shapes: ``x`` (N, 3, H, W) -> ``{"out": (N, C, H, W), "aux": (N, C, H, W)?, ...extras}``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        aux_index: int = -2,
        size_divisor: int = 1,
        crop_offset: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head
        self.aux_index = aux_index
        self.size_divisor = size_divisor
        self.crop_offset = crop_offset

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.size_divisor)
        feats = self.backbone(xp)
        head_out = self.head(feats)
        result = dict(head_out) if isinstance(head_out, dict) else {"out": head_out}
        result["out"] = self._to_input(result["out"], xp.shape[-2:], (h, w))
        if self.aux_head is not None:
            result["aux"] = self._to_input(self.aux_head(feats[self.aux_index]), xp.shape[-2:], (h, w))
        return result

    def _to_input(self, logits: Tensor, padded: torch.Size, size: tuple[int, int]) -> Tensor:
        """Logits at the padded input's size, then the padding cropped off: (N, C, h, w) -> (N, C, H, W)."""
        if self.crop_offset is not None:
            o = self.crop_offset
            return logits[..., o : o + size[0], o : o + size[1]]
        return resize_to(logits, padded)[..., : size[0], : size[1]]


def accept_legacy_keys(model: nn.Module, renames: dict[str, str]) -> nn.Module:
    """Let ``model.load_state_dict`` read files written before the model was a :class:`SegmentationModel`.

    ``renames`` maps an old top-level child name to its new path (``{"inc": "backbone.inc"}``); keys already in the
    new layout are left alone, so both layouts load.
    """

    def rename(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            first, _, rest = key[len(prefix) :].partition(".")
            if first in renames:
                state_dict[f"{prefix}{renames[first]}.{rest}"] = state_dict.pop(key)

    model.register_load_state_dict_pre_hook(rename)
    return model


def logits_of(output: Tensor | dict[str, Tensor]) -> Tensor:
    """The main logits of a model output (a dict with ``"out"`` or a bare tensor)."""
    return output["out"] if isinstance(output, dict) else output


@torch.no_grad()
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
