"""SegNet: a VGG16-BN encoder whose max-pooling indices drive the unpooling of a mirrored decoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import VGGBackbone
from .blocks import ConvBNReLU
from .registry import Recipe, register_model
from .segmentation_model import pad_to_multiple


def max_unpool2x2(x: Tensor, indices: Tensor) -> Tensor:
    """``F.max_unpool2d(x, indices, 2, 2)``: each value back at the position its 2x2 maximum came from, zeros
    elsewhere. (N, C, h, w) -> (N, C, 2h, 2w).

    Written as a scatter into the flattened (2h * 2w) plane, where ``max_pool2d`` indices point: the same values and
    gradients, and ONNX export can trace it (torch's own unpooling checks its output size with Python bools).
    """
    n, c, h, w = x.shape
    out = x.new_zeros(n, c, 4 * h * w)
    return out.scatter(2, indices.flatten(2), x.flatten(2)).view(n, c, 2 * h, 2 * w)


def encode_decode(encoder: nn.ModuleList, decoder: nn.ModuleList, x: Tensor) -> Tensor:
    """Run encoder stages, each followed by a 2x2 max-pool that keeps its argmax indices, then decoder stages, each
    preceded by a max-unpool with the mirrored encoder's indices: values return to where their maxima came from.
    (N, C, H, W) with H, W multiples of 2**len(encoder) -> (N, C', H, W)."""
    indices = []
    for stage in encoder:
        x, idx = F.max_pool2d(stage(x), 2, 2, return_indices=True)
        indices.append(idx)
    for stage, idx in zip(decoder, reversed(indices), strict=True):
        x = stage(max_unpool2x2(x, idx))
    return x


class SegNet(nn.Module):
    """SegNet with the 13 convolutions of VGG16-BN as encoder and their mirror image as decoder.

    Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
    Segmentation", TPAMI 2017, https://arxiv.org/abs/1511.00561

    Each encoder stage ends in a 2x2 max-pool that keeps its argmax indices; the matching decoder stage starts
    with ``MaxUnpool2d`` (values back at those positions, zeros elsewhere) followed by 3x3 conv-BN-ReLU layers
    that densify the sparse map. The decoder's last convolution maps 64 channels to ``num_classes`` (no BN/ReLU).

    Shapes: (N, 3, H, W) -> padded to multiples of 32 -> bottleneck (N, 512, H/32, W/32) ->
    ``{"out": (N, num_classes, H, W)}``.
    """

    # Convolutions per stage (VGG16) and channels of each stage, encoder order.
    depths = (2, 2, 3, 3, 3)
    widths = (64, 128, 256, 512, 512)

    def __init__(self, num_classes: int, pretrained_backbone: bool = False) -> None:
        super().__init__()
        vgg = VGGBackbone("vgg16_bn", pretrained=pretrained_backbone, keep_classifier=False)
        # torchvision's stages without their trailing MaxPool2d: pooling with indices happens in forward.
        self.encoder = nn.ModuleList(nn.Sequential(*list(vgg.stage(i))[:-1]) for i in range(5))
        decoder = []
        for i in reversed(range(5)):
            width, out = self.widths[i], self.widths[i - 1] if i > 0 else 64
            layers = [ConvBNReLU(width, width, bias=True) for _ in range(self.depths[i] - 1)]
            if i > 0:
                layers.append(ConvBNReLU(width, out, bias=True))
            else:
                layers.append(nn.Conv2d(width, num_classes, 3, padding=1))
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, 32)
        x = encode_decode(self.encoder, self.decoder, x)
        return {"out": x[..., :h, :w]}


class SegNetBasic(nn.Module):
    """SegNet-Basic, the paper's small analysis model: 4 encoders and 4 decoders of 64 channels, 7x7 kernels.

    Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image
    Segmentation", TPAMI 2017, https://arxiv.org/abs/1511.00561 (§4.1; Caffe ``segnet_basic_train.prototxt``)

    Input -> local response normalisation -> 4 x (7x7 conv-BN-ReLU, 2x2 max-pool with indices) ->
    4 x (unpool, 7x7 conv-BN, no ReLU in the decoder) -> 1x1 classifier.
    Shapes: (N, 3, H, W) -> bottleneck (N, 64, H/16, W/16) -> ``{"out": (N, num_classes, H, W)}``.
    """

    def __init__(self, num_classes: int, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.norm = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        chans = [in_channels, width, width, width, width]
        self.encoder = nn.ModuleList(ConvBNReLU(chans[i], width, 7, bias=True) for i in range(4))
        self.decoder = nn.ModuleList(ConvBNReLU(width, width, 7, bias=True, relu=False) for _ in range(4))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = self.norm(pad_to_multiple(x, 16))
        x = encode_decode(self.encoder, self.decoder, x)
        return {"out": self.classifier(x)[..., :h, :w]}


SEGNET_PAPER = (
    'Badrinarayanan, Kendall, Cipolla, "SegNet: A Deep Convolutional Encoder-Decoder Architecture for Image '
    'Segmentation", TPAMI 2017'
)
SEGNET_URL = "https://arxiv.org/abs/1511.00561"


@register_model(
    "segnet",
    paper=SEGNET_PAPER,
    url=SEGNET_URL,
    chapter="02_segnet",
    pretrained_backbone=True,
    backbones=("vgg16_bn",),
    quick=Recipe(3, 1e-3, "adamw", crop=(96, 128), batch_size=4, note="ch. 02 QUICK"),
    full=(Recipe(60, 1e-2, pretrained_backbone=True, row="segnet", note="ch. 02, VGG16-BN encoder"),),
    compare=True,
)
def segnet(num_classes: int, *, backbone: str = "vgg16_bn", pretrained_backbone: bool = False) -> SegNet:
    """SegNet: the VGG16-BN encoder (ImageNet weights with ``pretrained_backbone``) and its mirrored decoder.

    ``backbone`` can only be ``"vgg16_bn"`` (create_model refuses others): it is taken so the name can be spelled out.
    """
    return SegNet(num_classes, pretrained_backbone=pretrained_backbone)


@register_model(
    "segnet_basic",
    paper=SEGNET_PAPER + " (SegNet-Basic, §4.1)",
    url=SEGNET_URL,
    chapter="02_segnet",
    full=(
        Recipe(60, 1e-2, class_weights="median", row="segnet-basic",
               note="the paper's SegNet-Basic, median-frequency weights"),
    ),
)  # fmt: skip
def segnet_basic(num_classes: int, *, width: int = 64, in_channels: int = 3) -> SegNetBasic:
    """SegNet-Basic: 4 stages of 64-channel 7x7 convolutions, the paper's analysis model (trained from scratch)."""
    return SegNetBasic(num_classes, width=width, in_channels=in_channels)
