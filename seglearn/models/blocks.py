"""Small building blocks shared by several heads."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """``k x k`` convolution (no bias) -> BatchNorm -> ReLU; padding keeps the size (times ``dilation``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1) -> None:
        padding = dilation * (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FCNHead(nn.Sequential):
    """torchvision's FCN head (also the auxiliary head of FCN/DeepLabv3/EncNet/UPerNet).

    3x3 conv to ``in_channels // 4`` -> BN -> ReLU -> Dropout(0.1) -> 1x1 classifier.
    Shapes: (N, in_channels, h, w) -> (N, num_classes, h, w). Layer indices match torchvision's ``FCNHead`` so its
    state dict loads unchanged.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(
            nn.Conv2d(in_channels, inter, 3, padding=1, bias=False),
            nn.BatchNorm2d(inter),
            nn.ReLU(inplace=True),
            nn.Dropout(0.1),
            nn.Conv2d(inter, num_classes, 1),
        )


class LastFeature(nn.Module):
    """Adapts a single-tensor head to the feature-list interface: applies ``head`` to ``feats[index]``."""

    def __init__(self, head: nn.Module, index: int = -1) -> None:
        super().__init__()
        self.head = head
        self.index = index

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(feats[self.index])
