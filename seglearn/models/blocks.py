"""Small building blocks shared by several models: conv-BN-ReLU, torchvision's FCN head, the batch-of-one check."""

from __future__ import annotations

from torch import Tensor, nn


class ConvBNReLU(nn.Sequential):
    """``k x k`` convolution -> BatchNorm -> ReLU (``relu=False``: no ReLU); padding keeps the size at stride 1.

    ``bias=False`` by default: the BatchNorm's shift makes a bias redundant (SegNet's Caffe layers keep theirs).
    Shapes: (N, in_channels, h, w) -> (N, out_channels, h / stride, w / stride). Children ``0`` conv, ``1`` BN,
    ``2`` ReLU, as torchvision's and mmsegmentation's state dicts expect.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        bias: bool = False,
        relu: bool = True,
    ) -> None:
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation=dilation, bias=bias),
            nn.BatchNorm2d(out_channels),
        ]
        super().__init__(*layers, *([nn.ReLU(inplace=True)] if relu else []))


def check_batch_norm_batch(x: Tensor, norm: nn.Module, where: str) -> None:
    """Refuse a training batch of one image for a BatchNorm that sees one value per channel per image.

    ``norm`` normalises a 1x1 map (image pooling, a 1x1 pyramid bin): with N = 1 in training mode there is nothing to
    normalise over, and torch's own error ("Expected more than 1 value per channel") does not say where or what to do.
    """
    if norm.training and x.shape[0] == 1:
        raise ValueError(
            f"{where} batch-normalizes one value per channel per image, so a training batch of one image cannot be "
            "normalized: use batch size >= 2 (and drop_last=True in the DataLoader so the last batch is never a "
            "single image), or call model.eval() to predict one image"
        )


class FCNHead(nn.Sequential):
    """torchvision's FCN head (also the auxiliary head of FCN/DeepLabv3/EncNet/UPerNet).

    3x3 conv to ``in_channels // 4`` -> BN -> ReLU -> Dropout(0.1) -> 1x1 classifier.
    Shapes: (N, in_channels, h, w) -> (N, num_classes, h, w). Layer indices match torchvision's ``FCNHead`` so its
    state dict loads unchanged.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        inter = in_channels // 4
        super().__init__(*ConvBNReLU(in_channels, inter), nn.Dropout(0.1), nn.Conv2d(inter, num_classes, 1))


class LastFeature(nn.Module):
    """Adapts a single-tensor head to the feature-list interface: applies ``head`` to ``feats[index]``."""

    def __init__(self, head: nn.Module, index: int = -1) -> None:
        super().__init__()
        self.head = head
        self.index = index

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.head(feats[self.index])
