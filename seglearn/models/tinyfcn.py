"""``tinyfcn``: a few strided convolutions and a 1x1 classifier — chapter 00's baseline, not a paper's model."""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import ConvBNReLU
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel


class TinyEncoder(nn.Module):
    """Three stride-2 stages: (N, 3, H, W) -> [(N, w, H/2, W/2), (N, 2w, H/4, W/4), (N, 4w, H/8, W/8)]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.channels = [width, 2 * width, 4 * width]
        cin = [3, width, 2 * width]
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNReLU(a, b, stride=2), ConvBNReLU(b, b)) for a, b in zip(cin, self.channels, strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class TinyHead(nn.Module):
    """1x1 classifier on the coarsest features: (N, 4w, H/8, W/8) -> (N, C, H/8, W/8)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(feats[-1])


@register_model(
    "tinyfcn",
    paper="seglearn's baseline (chapter 00): a few strided convolutions, the baseline every model must beat",
    chapter="00_data_and_metrics",
    aux_loss=True,  # a 1x1 classifier on the middle stage, for trying the auxiliary loss on a small net
    quick=Recipe(16, 3e-3, "adamw", crop=(120, 160), note="ch. 00 QUICK: 120x160 frames"),
    full=(Recipe(60, 1e-3, "adamw", row="tinyfcn", note="ch. 00 baseline, 0.3 M parameters"),),
    compare=True,
)
def tinyfcn(num_classes: int, *, aux_loss: bool = False, width: int = 32) -> SegmentationModel:
    """A small FCN-style baseline that trains on a CPU in seconds (no pretrained weights exist)."""
    encoder = TinyEncoder(width)
    aux = nn.Conv2d(encoder.channels[-2], num_classes, 1) if aux_loss else None
    return SegmentationModel(encoder, TinyHead(encoder.channels[-1], num_classes), aux_head=aux)
