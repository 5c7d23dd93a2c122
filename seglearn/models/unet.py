"""U-Net: a contracting path, an expanding path, and skip connections that concatenate the two."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBNReLU
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel, accept_legacy_keys

UP_MODES = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv (padding 1, no bias) -> BN -> ReLU: (N, in_channels, h, w) -> (N, out_channels, h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        # flat children 0..5 (conv, BN, ReLU, conv, BN, ReLU): the layout of the common re-implementations
        super().__init__(*ConvBNReLU(in_channels, out_channels), *ConvBNReLU(out_channels, out_channels))


class Up(nn.Module):
    """2x "up-convolution" halving the channels, concatenation with the skip, then :class:`DoubleConv`.

    ``up_mode="transpose"``: a learned 2x2 transposed convolution (stride 2); ``"bilinear"``: bilinear upsampling
    followed by a 1x1 convolution. Shapes: x (N, in_channels, h, w), skip (N, in_channels/2, 2h, 2w) ->
    (N, out_channels, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int, up_mode: str = "transpose") -> None:
        super().__init__()
        if up_mode == "transpose":
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2)
        else:
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                nn.Conv2d(in_channels, in_channels // 2, 1),
            )
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNetEncoder(nn.Module):
    """U-Net's contracting path: :class:`DoubleConv` stages, each after a 2x2 max-pool but the first.

    Stage ``i`` has ``base_channels * 2**i`` channels. Shapes: (N, in_channels, H, W), H and W multiples of
    2**depth -> [(N, base, H, W), (N, 2 base, H/2, W/2), ..., (N, base * 2**depth, H/2**depth, W/2**depth)].
    """

    def __init__(self, in_channels: int = 3, depth: int = 4, base_channels: int = 64) -> None:
        super().__init__()
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be >= 1, got depth={depth}, base_channels={base_channels}")
        self.channels = [base_channels * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, self.channels[0])
        self.down = nn.ModuleList(DoubleConv(self.channels[i], self.channels[i + 1]) for i in range(depth))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.inc(x)]
        for down in self.down:
            feats.append(down(F.max_pool2d(feats[-1], 2)))
        return feats


class UNetDecoder(nn.Module):
    """U-Net's expanding path: one :class:`Up` per skip, coarse to fine, then a 1x1 classifier.

    Shapes: the encoder's features [(N, c0, H, W) .. (N, c_depth, H/2**depth, W/2**depth)] -> (N, num_classes, H, W).
    """

    def __init__(self, channels: list[int], num_classes: int, up_mode: str = "transpose") -> None:
        super().__init__()
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}")
        self.up = nn.ModuleList(Up(channels[i + 1], channels[i], up_mode) for i in reversed(range(len(channels) - 1)))
        self.classifier = nn.Conv2d(channels[0], num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = feats[-1]  # the bottom of the U
        for up, skip in zip(self.up, reversed(feats[:-1]), strict=True):
            x = up(x, skip)
        return self.classifier(x)


@register_model(
    "unet",
    paper='Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015',
    url="https://arxiv.org/abs/1505.04597",
    chapter="03_unet",
    quick=Recipe(16, 1e-3, "adamw", model_kwargs={"base_channels": 16}, crop=(96, 128), batch_size=4,
                 note="ch. 03 QUICK, 16 base channels"),
    full=(
        Recipe(80, 1e-2, row="unet", note="ch. 03, 64 base channels, plain CE"),
        Recipe(80, 1e-2, class_weights="median", row="unet-mfb", note="ch. 03, median-frequency weights"),
    ),
    compare=True,
)  # fmt: skip
def unet(
    num_classes: int,
    *,
    in_channels: int = 3,
    depth: int = 4,
    base_channels: int = 64,
    up_mode: str = "transpose",
) -> SegmentationModel:
    """U-Net with ``depth`` down-steps, trained from scratch (it has no pretrained backbone).

    Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015,
    https://arxiv.org/abs/1505.04597

    As in most re-implementations, convolutions are padded (the paper's are not, so its output is smaller than its
    input) and followed by BatchNorm (the paper predates it). Defaults are the paper's: 64 channels, 4 down-steps,
    1024 channels at the bottom.

    Shapes: (N, in_channels, H, W) -> padded to a multiple of 2**depth -> bottom (N, base * 2**depth, H/2**depth,
    W/2**depth) -> ``{"out": (N, num_classes, H, W)}``.
    """
    encoder = UNetEncoder(in_channels, depth, base_channels)
    decoder = UNetDecoder(encoder.channels, num_classes, up_mode)
    model = SegmentationModel(encoder, decoder, size_divisor=2**depth)
    # model files written when U-Net was a module of its own (inc, down, up, classifier) still load
    renames = {"inc": "backbone.inc", "down": "backbone.down", "up": "head.up", "classifier": "head.classifier"}
    return accept_legacy_keys(model, renames)
