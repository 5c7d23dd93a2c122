"""DeepLabv3's "going deeper with atrous convolution" model (arXiv:1706.05587 §3.2, Fig. 3, Tables 1-3).

Copies of ResNet's block4 are appended in cascade as block5..block7. Until the output stride is reached every block
halves the resolution; after it, each block keeps the resolution and doubles the atrous rate instead, and from block4
on unit ``i`` of a block uses the block's rate times ``multi_grid[i]``. The cascaded model has no ASPP: a 1x1
classifier predicts from the last block. ``deeplabv3(cascade_blocks=1..3)`` builds it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .backbones import ResNetBackbone

MAX_CASCADE_BLOCKS = 3  # block5, block6, block7: the deepest model of the paper's Tables 1-3


def cascade_output_strides(cascade_blocks: int) -> tuple[int, ...]:
    """Output strides reachable with ``cascade_blocks`` extra blocks: 8, 16, ..., 32 * 2**cascade_blocks."""
    return tuple(2**k for k in range(3, 6 + cascade_blocks))


def block_like(layer4: nn.Sequential, channels: int) -> nn.Sequential:
    """A new block with layer4's layout (same unit type and count, ``channels`` in and out), initialized as
    torchvision initializes a ResNet: (N, channels, h, w) -> (N, channels, h / stride, w / stride).

    The first unit's shortcut is a parameter-free subsample (a 1x1 max pool with the unit's stride), as in the
    paper's TF-slim ResNet where a unit keeps its depth. torchvision would add a strided 1x1 projection only when the
    block strides, so the parameters would depend on the output stride and a model could not switch it in place.
    """
    unit = type(layer4[0])
    planes = channels // unit.expansion
    units = [unit(channels, planes, downsample=nn.MaxPool2d(1, 1))]
    units += [unit(channels, planes) for _ in range(len(layer4) - 1)]
    block = nn.Sequential(*units)
    for m in block.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return block


def set_unit(unit: nn.Module, stride: int, dilation: int) -> None:
    """Set a residual unit's stride and atrous rate in place (padding = rate, so 3x3 convs keep the size)."""
    # Bottleneck strides in conv2 (its 3x3), BasicBlock in conv1; every 3x3 conv of the unit carries the rate.
    spatial = unit.conv2 if hasattr(unit, "conv3") else unit.conv1
    for conv in (unit.conv1, unit.conv2):
        if conv.kernel_size == (3, 3):
            conv.dilation, conv.padding = (dilation, dilation), (dilation, dilation)
    spatial.stride = (stride, stride)
    shortcut = unit.downsample
    if isinstance(shortcut, nn.MaxPool2d):
        shortcut.stride = stride
    elif shortcut is not None:  # torchvision's projection: 1x1 conv -> BN
        shortcut[0].stride = (stride, stride)


class CascadedResNetBackbone(ResNetBackbone):
    """ResNet with ``cascade_blocks`` (1-3) copies of block4 appended as ``layer5``..``layer7`` (block5..block7).

    Returns ``[layer1, layer2, layer3, last block]``, the same four stages as :class:`ResNetBackbone` (so the aux
    head stays on layer3): (N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/min(16, OS), .), (N, C4, H/OS, W/OS),
    with ``OS`` any of :func:`cascade_output_strides` (Table 1 goes up to 256 with block7).

    Rates as Fig. 3(b): at OS16 with block7, block4..block7 have rates 2, 4, 8, 16; with multi-grid (1, 2, 4) block4's
    three units have 2, 4, 8. ``multi_grid`` applies to every block from block4 on (None: (1, 1, 1)); layer2/layer3
    keep torchvision's layout, in which the first unit of a dilated layer keeps the previous rate. The appended
    blocks start from random weights, also with ``pretrained=True`` (ImageNet has no block5).
    """

    cascade_blocks = 0  # until __init__ has appended the blocks (the parent's __init__ may call set_output_stride)

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        cascade_blocks: int = MAX_CASCADE_BLOCKS,
    ) -> None:
        if not 1 <= cascade_blocks <= MAX_CASCADE_BLOCKS:
            raise ValueError(f"cascade_blocks must be 1 to {MAX_CASCADE_BLOCKS}, got {cascade_blocks}")
        super().__init__(name, pretrained=pretrained, output_stride=32)  # strides rewritten below
        for j in range(5, 5 + cascade_blocks):
            self.add_module(f"layer{j}", block_like(self.layer4, self.channels[-1]))
        self.cascade_blocks = cascade_blocks
        self.set_output_stride(output_stride, multi_grid)

    @property
    def layers(self) -> list[nn.Sequential]:
        """``[layer1, ..., layer(4 + cascade_blocks)]``: the paper's block1..block7."""
        return [getattr(self, f"layer{j}") for j in range(1, 5 + self.cascade_blocks)]

    def set_output_stride(self, output_stride: int, multi_grid: Sequence[int] | None | str = "keep") -> None:
        """Switch to any reachable output stride in place (same weights); ``"keep"`` keeps the multi-grid."""
        if isinstance(multi_grid, str):
            if multi_grid != "keep":
                raise ValueError(f"multi_grid must be a sequence of unit rates, None or 'keep', got {multi_grid!r}")
            multi_grid = self.multi_grid
        strides = cascade_output_strides(self.cascade_blocks)
        if output_stride not in strides:
            raise ValueError(
                f"output_stride must be one of {', '.join(map(str, strides))} with {self.cascade_blocks} cascaded "
                f"blocks, got {output_stride}"
            )
        grid = tuple(multi_grid) if multi_grid is not None else (1,)
        reached, rate = 4, 1  # the stem's reduction; rates start at 1
        for j, layer in enumerate(self.layers[1:], start=2):
            previous, stride = rate, 2
            if reached < output_stride:
                reached *= 2
            else:  # the target is reached: dilate instead of striding, the rate doubling per block
                rate, stride = rate * 2, 1
            for i, unit in enumerate(layer):
                d = rate * grid[i % len(grid)] if j >= 4 else (previous if i == 0 else rate)
                set_unit(unit, stride if i == 0 else 1, d)
        self.output_stride = output_stride
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return [*feats[:3], feats[-1]]


class LastBlockClassifier(nn.Conv2d):
    """The cascaded model's head: a 1x1 classifier on the last block, ``feats[-1]`` (N, C, h, w) -> (N, K, h, w)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:  # type: ignore[override]
        return super().forward(feats[-1])
