"""``tinyfcn``: a few strided convolutions and a 1x1 classifier — chapter 00's baseline, not a paper's model."""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model
from .shell import SegmentationModel


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TinyEncoder(nn.Module):
    """Three stride-2 stages: (N, 3, H, W) -> [(N, w, H/2, W/2), (N, 2w, H/4, W/4), (N, 4w, H/8, W/8)]."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.channels = [width, 2 * width, 4 * width]
        self.stages = nn.ModuleList(
            [
                nn.Sequential(_conv_bn_relu(3, width, 2), _conv_bn_relu(width, width)),
                nn.Sequential(_conv_bn_relu(width, 2 * width, 2), _conv_bn_relu(2 * width, 2 * width)),
                nn.Sequential(_conv_bn_relu(2 * width, 4 * width, 2), _conv_bn_relu(4 * width, 4 * width)),
            ]
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


@register_model("tinyfcn")
def tinyfcn(
    num_classes: int, *, pretrained_backbone: bool = False, aux_loss: bool = False, width: int = 32
) -> SegmentationModel:
    """A ~0.3 M-parameter FCN-style baseline that trains on a CPU in seconds (no pretrained weights exist)."""
    if pretrained_backbone:
        raise ValueError("tinyfcn has no pretrained backbone; pass pretrained_backbone=False")
    encoder = TinyEncoder(width)
    aux = nn.Conv2d(encoder.channels[-2], num_classes, 1) if aux_loss else None
    return SegmentationModel(encoder, TinyHead(encoder.channels[-1], num_classes), aux_head=aux)
