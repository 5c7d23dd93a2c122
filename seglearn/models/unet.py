"""U-Net: a contracting path, an expanding path, and skip connections that concatenate the two."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import register_model
from .shell import pad_to_multiple

UP_MODES = ("transpose", "bilinear")


class DoubleConv(nn.Sequential):
    """Two 3x3 conv (padding 1, no bias) -> BN -> ReLU: (N, in_channels, h, w) -> (N, out_channels, h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


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


class UNet(nn.Module):
    """U-Net with ``depth`` down-steps; stage ``i`` has ``base_channels * 2**i`` channels.

    Ronneberger, Fischer, Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015,
    https://arxiv.org/abs/1505.04597

    As in most re-implementations, convolutions are padded (the paper's are not, so its output is smaller than its
    input) and followed by BatchNorm (the paper predates it). Defaults are the paper's: 64 channels, 4 down-steps,
    1024 channels at the bottom; 31.04 M parameters for 2 classes.

    Shapes: (N, in_channels, H, W) -> padded to a multiple of 2**depth -> bottom (N, base * 2**depth, H/2**depth,
    W/2**depth) -> ``{"out": (N, num_classes, H, W)}``.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        depth: int = 4,
        base_channels: int = 64,
        up_mode: str = "transpose",
    ) -> None:
        super().__init__()
        if up_mode not in UP_MODES:
            raise ValueError(f"up_mode must be one of {UP_MODES}, got {up_mode!r}")
        if depth < 1 or base_channels < 1:
            raise ValueError(f"depth and base_channels must be >= 1, got depth={depth}, base_channels={base_channels}")
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.depth = depth
        self.inc = DoubleConv(in_channels, widths[0])
        self.down = nn.ModuleList(DoubleConv(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(Up(widths[i + 1], widths[i], up_mode) for i in reversed(range(depth)))
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        x = self.inc(pad_to_multiple(x, 2**self.depth))
        skips = []
        for down in self.down:
            skips.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, skip in zip(self.up, reversed(skips), strict=True):
            x = up(x, skip)
        return {"out": self.classifier(x)[..., :h, :w]}


@register_model("unet")
def unet(
    num_classes: int,
    *,
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    in_channels: int = 3,
    depth: int = 4,
    base_channels: int = 64,
    up_mode: str = "transpose",
) -> UNet:
    """The paper's U-Net (trained from scratch: it has no pretrained backbone)."""
    if aux_loss:
        raise ValueError("U-Net has no auxiliary head; pass aux_loss=False")
    if pretrained_backbone:
        raise ValueError("U-Net has no pretrained backbone; pass pretrained_backbone=False")
    return UNet(num_classes, in_channels=in_channels, depth=depth, base_channels=base_channels, up_mode=up_mode)
