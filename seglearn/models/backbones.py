"""torchvision VGG and ResNet wrapped as feature-list backbones (fine -> coarse).

Weights come through torchvision's own weights API, so ``pretrained=True`` works offline from a warmed
``$TORCH_HOME/hub/checkpoints`` cache. Dilation for output stride 16/8 comes from torchvision's
``replace_stride_with_dilation``; :meth:`ResNetBackbone.set_output_stride` rewrites the same layout in place, so
weights trained at one output stride can be evaluated at another.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.error import URLError

import torch
import torchvision
from torch import Tensor, nn

RESNETS = {
    "resnet18": ("resnet18", "ResNet18_Weights"),
    "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"),
    "resnet101": ("resnet101", "ResNet101_Weights"),
}
VGGS = {"vgg16": ("vgg16", "VGG16_Weights"), "vgg16_bn": ("vgg16_bn", "VGG16_BN_Weights")}
# The ``backbones=`` of the ResNet models' registrations: ResNet-50 (the papers' choice) first, as the default.
RESNET_BACKBONES = ("resnet50", "resnet101", "resnet18", "resnet34")

_DILATE = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}


def _weights(enum_name: str, pretrained: bool):
    # IMAGENET1K_V1 everywhere: the weights the papers' era (and torchvision's segmentation models) used.
    return getattr(torchvision.models, enum_name).IMAGENET1K_V1 if pretrained else None


def _build(fn: str, enum_name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``torchvision.models.<fn>(weights=..., **kwargs)``; a failed weights download says how to go on offline."""
    weights = _weights(enum_name, pretrained)
    build: Callable[..., nn.Module] = getattr(torchvision.models, fn)
    try:
        return build(weights=weights, **kwargs)
    except (URLError, ConnectionError, TimeoutError) as err:  # no network (a GPU box, CI): the cache is empty
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise RuntimeError(
            f"could not download the ImageNet weights of {fn} ({err}). Either copy {weights.url} (fetched where "
            f"there is internet) to {cache}, or train from scratch: pretrained_backbone=False (notebooks: set "
            "SEGLEARN_PRETRAINED=0; CLI: leave out --pretrained-backbone)"
        ) from err


class ResNetBackbone(nn.Module):
    """ResNet-18/34/50/101 returning ``[layer1, layer2, layer3, layer4]`` features.

    Shapes for input (N, 3, H, W): layer1 (N, C1, H/4, W/4), layer2 (N, C2, H/8, W/8), layer3 and layer4 at
    H/16 and H/32 for output stride 32; at 16 layer4 stays at H/16 (dilated), at 8 layer3 and layer4 stay at H/8.
    ``channels`` gives (C1..C4): (64, 128, 256, 512) for ResNet-18/34, (256, 512, 1024, 2048) for 50/101.

    ``multi_grid`` (DeepLabv3, arXiv:1706.05587 §3.2): unit rates for layer4's three blocks, each multiplied by the
    layer's base dilation (2 at OS16, 4 at OS8). ``None`` keeps torchvision's layout, in which the first block of a
    dilated layer keeps the previous dilation.
    """

    def __init__(
        self,
        name: str = "resnet50",
        pretrained: bool = False,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of: {', '.join(RESNETS)}")
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        fn, weights = RESNETS[name]
        bottleneck = name in ("resnet50", "resnet101")
        # torchvision's BasicBlock refuses dilation > 1, so ResNet-18/34 are built at stride 32 and rewritten below.
        dilate = _DILATE[output_stride] if bottleneck else _DILATE[32]
        net = _build(fn, weights, pretrained, replace_stride_with_dilation=dilate)
        self.name = name
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)  # (N, 64, H/4, W/4)
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = 4 if bottleneck else 1
        self.channels = [64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion]
        self.output_stride = output_stride
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None
        if self.multi_grid is not None or not bottleneck:
            self.set_output_stride(output_stride, self.multi_grid)

    @property
    def reductions(self) -> list[int]:
        """Spatial reduction of each returned stage relative to the input."""
        os = self.output_stride
        return [4, 8, min(16, os), os]

    def set_output_stride(self, output_stride: int, multi_grid: Sequence[int] | None | str = "keep") -> None:
        """Switch to output stride 32, 16 or 8 in place (same weights): strides become dilations in layer3/4.

        ``multi_grid="keep"`` keeps the current unit rates; ``None`` means torchvision's layout.
        """
        if isinstance(multi_grid, str):
            if multi_grid != "keep":
                raise ValueError(f"multi_grid must be a sequence of unit rates, None or 'keep', got {multi_grid!r}")
            multi_grid = self.multi_grid
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        dilation = 1
        for layer, dilate in zip((self.layer2, self.layer3, self.layer4), _DILATE[output_stride], strict=True):
            previous, stride = dilation, 2
            if dilate:
                dilation, stride = dilation * 2, 1
            for i, block in enumerate(layer):
                d = previous if i == 0 else dilation
                if layer is self.layer4 and multi_grid is not None:
                    d = dilation * multi_grid[i % len(multi_grid)]
                # Bottleneck strides in conv2 (3x3), BasicBlock in conv1; both carry the dilation in the 3x3 conv.
                spatial = block.conv2 if hasattr(block, "conv3") else block.conv1
                three_by_three = [block.conv1, block.conv2]
                for conv in three_by_three:
                    if conv.kernel_size == (3, 3):
                        conv.dilation, conv.padding = (d, d), (d, d)
                spatial.stride = (stride, stride) if i == 0 else (1, 1)
                if i == 0 and block.downsample is not None:
                    block.downsample[0].stride = (stride, stride)
        self.output_stride = output_stride
        self.multi_grid = tuple(multi_grid) if multi_grid is not None else None

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        return [c1, c2, c3, c4]


class VGGBackbone(nn.Module):
    """VGG16 (optionally with BN) returning the output of each of its five pooling stages.

    Shapes for input (N, 3, H, W): pool1 (N, 64, H/2, W/2) ... pool5 (N, 512, H/32, W/32);
    ``channels`` = (64, 128, 256, 512, 512). ``features`` is torchvision's own ``Sequential`` (so its state-dict
    keys match), split into ``stages``; ``classifier`` keeps torchvision's fc6/fc7/fc8 so FCN can reshape them into
    convolutions and DeepLabv1 can decimate them.
    """

    def __init__(self, name: str = "vgg16", pretrained: bool = False, keep_classifier: bool = True) -> None:
        super().__init__()
        if name not in VGGS:
            raise ValueError(f"unknown VGG {name!r}; choose one of: {', '.join(VGGS)}")
        fn, weights = VGGS[name]
        net = _build(fn, weights, pretrained)
        self.name = name
        self.features = net.features
        self.classifier = net.classifier if keep_classifier else None
        self.channels = [64, 128, 256, 512, 512]
        self.reductions = [2, 4, 8, 16, 32]
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        starts = [0] + [p + 1 for p in pools[:-1]]
        self.stage_slices = [(s, p + 1) for s, p in zip(starts, pools, strict=True)]

    def stage(self, i: int) -> nn.Sequential:
        """The layers of stage ``i`` (0-based), ending with its max-pool (a view of ``features``)."""
        s, e = self.stage_slices[i]
        return self.features[s:e]

    def forward(self, x: Tensor) -> list[Tensor]:
        outs = []
        for i in range(len(self.stage_slices)):
            x = self.stage(i)(x)
            outs.append(x)
        return outs


def build_backbone(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``resnet*`` -> :class:`ResNetBackbone`, ``vgg16*`` -> :class:`VGGBackbone`."""
    if name in RESNETS:
        return ResNetBackbone(name, pretrained=pretrained, **kwargs)
    if name in VGGS:
        return VGGBackbone(name, pretrained=pretrained, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; choose one of: {', '.join([*RESNETS, *VGGS])}")
