"""SegNet: a VGG16-BN encoder whose max-pooling indices drive the unpooling of a mirrored decoder."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import VGGBackbone
from .registry import register_model
from .shell import pad_to_multiple


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, relu: bool = True) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm2d(out_channels),
    ]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def encode_decode(encoder: nn.ModuleList, decoder: nn.ModuleList, x: Tensor) -> Tensor:
    """Run encoder stages, each followed by a 2x2 max-pool that keeps its argmax indices, then decoder stages, each
    preceded by a max-unpool with the mirrored encoder's indices: values return to where their maxima came from.
    (N, C, H, W) with H, W multiples of 2**len(encoder) -> (N, C', H, W)."""
    indices = []
    for stage in encoder:
        x, idx = F.max_pool2d(stage(x), 2, 2, return_indices=True)
        indices.append(idx)
    for stage, idx in zip(decoder, reversed(indices), strict=True):
        x = stage(F.max_unpool2d(x, idx, 2, 2))
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
            layers = [_conv_bn_relu(width, width) for _ in range(self.depths[i] - 1)]
            if i > 0:
                layers.append(_conv_bn_relu(width, out))
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
        self.encoder = nn.ModuleList(_conv_bn_relu(chans[i], width, 7) for i in range(4))
        self.decoder = nn.ModuleList(_conv_bn_relu(width, width, 7, relu=False) for _ in range(4))
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = self.norm(pad_to_multiple(x, 16))
        x = encode_decode(self.encoder, self.decoder, x)
        return {"out": self.classifier(x)[..., :h, :w]}


@register_model("segnet")
def segnet(
    num_classes: int,
    *,
    backbone: str = "vgg16_bn",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    variant: str = "full",
) -> nn.Module:
    """SegNet (``variant="full"``, VGG16-BN encoder, 29.4 M parameters) or SegNet-Basic (``variant="basic"``)."""
    if aux_loss:
        raise ValueError("SegNet has no auxiliary head; pass aux_loss=False")
    if variant == "basic":
        if pretrained_backbone:
            raise ValueError("SegNet-Basic is trained from scratch; pass pretrained_backbone=False")
        return SegNetBasic(num_classes)
    if variant != "full":
        raise ValueError(f"variant must be 'full' or 'basic', got {variant!r}")
    if backbone != "vgg16_bn":
        raise ValueError(f"SegNet's encoder is VGG16-BN (backbone='vgg16_bn'), got {backbone!r}")
    return SegNet(num_classes, pretrained_backbone=pretrained_backbone)


@register_model("segnet_basic")
def segnet_basic(num_classes: int, *, pretrained_backbone: bool = False, aux_loss: bool = False) -> SegNetBasic:
    """SegNet-Basic: 4 stages of 64-channel 7x7 convolutions (the paper's analysis model, 1.4 M parameters)."""
    return segnet(num_classes, pretrained_backbone=pretrained_backbone, aux_loss=aux_loss, variant="basic")
