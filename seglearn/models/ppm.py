"""Pyramid Pooling Module (PSPNet), as used on the last stage of UPerNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .blocks import ConvBNReLU, check_batch_norm_batch
from .segmentation_model import resize_to


class PyramidPooling(nn.Module):
    """Pyramid Pooling Module from "Pyramid Scene Parsing Network" (Zhao et al., 2017, https://arxiv.org/abs/1612.01105).

    For each bin size b: adaptive average pool to b x b -> 1x1 conv (BN, ReLU) to ``channels`` -> bilinear upsample
    to the input size; the input and the pooled maps are concatenated and fused by a 3x3 conv (BN, ReLU). Laid out
    as mmsegmentation's ``UPerHead.psp_modules`` + ``bottleneck``.

    Shapes: (N, in_channels, h, w) -> (N, channels, h, w). In training mode the bin-1 branch normalizes a 1x1 map,
    so BatchNorm needs a batch of at least 2 (as torchvision's ASPP pooling).
    """

    def __init__(self, in_channels: int, channels: int = 512, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), ConvBNReLU(in_channels, channels, kernel_size=1)) for b in bins
        )
        self.bottleneck = ConvBNReLU(in_channels + len(self.bins) * channels, channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        if 1 in self.bins:
            check_batch_norm_batch(x, self.stages[self.bins.index(1)][1][1], "the pyramid pooling's 1x1 bin")
        size = x.shape[-2:]
        pooled = [resize_to(stage(x), size) for stage in self.stages]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))  # (N, in + len(bins) * channels, h, w) fused
