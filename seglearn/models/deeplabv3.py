"""``deeplabv3``: dilated ResNet with multi-grid and Atrous Spatial Pyramid Pooling (ASPP) with image pooling.

Module layout and names follow torchvision's ``models/segmentation/deeplabv3.py`` so its state dict loads with two
renamed prefixes (see :func:`from_torchvision_deeplabv3`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backbones import RESNET_BACKBONES, ResNetBackbone
from .blocks import ConvBNReLU, FCNHead, check_batch_norm_batch
from .registry import Recipe, create_model, register_model
from .segmentation_model import SegmentationModel

PAPER_RATES_OS16 = (6, 12, 18)  # arXiv:1706.05587 §3.3; doubled at output stride 8


class ASPPConv(ConvBNReLU):
    """3x3 atrous conv (rate ``dilation``) -> BN -> ReLU: (N, C_in, h, w) -> (N, C_out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int) -> None:
        super().__init__(in_channels, out_channels, 3, dilation=dilation)


class ASPPPooling(nn.Sequential):
    """Image-level features: global average pool -> 1x1 conv -> BN -> ReLU, broadcast back to (N, C_out, h, w)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), *ConvBNReLU(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        check_batch_norm_batch(x, self[2], "DeepLabv3's image pooling")
        h, w = x.shape[-2:]
        for module in self:
            x = module(x)
        return x.expand(-1, -1, h, w)  # bilinear up-sampling of a 1x1 map is a broadcast


class ASPP(nn.Module):
    """Atrous Spatial Pyramid Pooling: a 1x1 branch, one 3x3 branch per rate and image pooling, concatenated and
    projected by 1x1 conv -> BN -> ReLU -> dropout. Shapes: (N, C_in, h, w) -> (N, out_channels, h, w)."""

    def __init__(
        self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [ASPPConv(in_channels, out_channels, r) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*ConvBNReLU(len(branches) * out_channels, out_channels, 1), nn.Dropout(dropout))

    @property
    def atrous_rates(self) -> tuple[int, ...]:
        return tuple(branch[0].dilation[0] for branch in self.convs if isinstance(branch, ASPPConv))

    def set_atrous_rates(self, atrous_rates: Sequence[int]) -> None:
        """Change the rates of the 3x3 branches in place (same weights), e.g. doubled when going from OS16 to OS8."""
        convs = [branch[0] for branch in self.convs if isinstance(branch, ASPPConv)]
        if len(atrous_rates) != len(convs):
            raise ValueError(f"this ASPP has {len(convs)} atrous branches, got {len(atrous_rates)} rates")
        for conv, r in zip(convs, atrous_rates, strict=True):
            conv.dilation, conv.padding = (int(r), int(r)), (int(r), int(r))

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))  # (N, 5*256, h, w) before


class DeepLabV3Head(nn.Sequential):
    """torchvision's ``DeepLabHead``: ASPP -> 3x3 conv -> BN -> ReLU -> 1x1 classifier, on ``feats[-1]``.

    Shapes: (N, in_channels, h, w) -> (N, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], dropout: float = 0.5) -> None:
        # flat children, as torchvision's DeepLabHead, so its state dict loads under the same keys
        super().__init__(
            ASPP(in_channels, atrous_rates, 256, dropout), *ConvBNReLU(256, 256), nn.Conv2d(256, num_classes, 1)
        )

    @property
    def aspp(self) -> ASPP:
        return self[0]

    def forward(self, feats: list[Tensor]) -> Tensor:  # type: ignore[override]
        x = feats[-1]
        for module in self:
            x = module(x)
        return x


class DeepLabV3(SegmentationModel):
    """DeepLabv3: ResNet with atrous convolution (output stride 16 or 8, multi-grid in layer4) and ASPP.

    Paper: "Rethinking Atrous Convolution for Semantic Image Segmentation", Chen et al., 2017,
    https://arxiv.org/abs/1706.05587. A :class:`SegmentationModel` (same arguments: a :class:`ResNetBackbone`, a
    :class:`DeepLabV3Head`, an optional aux head on layer3) that can change its output stride: train at 16 and
    evaluate the same weights at 8 with :meth:`set_output_stride`, which moves the backbone's dilations and the
    ASPP rates together.

    Shapes: (N, 3, H, W) -> ``{"out": (N, num_classes, H, W)}``, plus ``"aux"`` (FCN head on layer3) when
    ``aux_head`` is given. In training mode a batch needs at least two images (image pooling has BatchNorm on a 1x1
    map).
    """

    def __init__(self, backbone: ResNetBackbone, head: DeepLabV3Head, aux_head: nn.Module | None = None) -> None:
        super().__init__(backbone, head, aux_head=aux_head, aux_index=-2)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def atrous_rates(self) -> tuple[int, ...]:
        return self.head.aspp.atrous_rates

    def set_output_stride(self, output_stride: int) -> DeepLabV3:
        """Switch to output stride 8, 16 or 32 in place; ASPP rates scale by old/new stride (6,12,18 <-> 12,24,36)."""
        old = self.backbone.output_stride
        rates = [r * old / output_stride for r in self.atrous_rates]
        if any(r != int(r) or r < 1 for r in rates):
            raise ValueError(
                f"ASPP rates {self.atrous_rates} at output stride {old} do not scale to whole rates at {output_stride}"
            )
        self.backbone.set_output_stride(output_stride, self.backbone.multi_grid)
        self.head.aspp.set_atrous_rates([int(r) for r in rates])
        return self


@register_model(
    "deeplabv3",
    paper='Chen, Papandreou, Schroff, Adam, "Rethinking Atrous Convolution for Semantic Image Segmentation", 2017',
    url="https://arxiv.org/abs/1706.05587",
    chapter="05_deeplabv3",
    aux_loss=True,
    pretrained_backbone=True,
    backbones=RESNET_BACKBONES,
    quick=Recipe(8, 1e-3, "adamw", model_kwargs={"backbone": "resnet18"}, crop=(120, 160), batch_size=4,
                 note="ch. 05 QUICK, ResNet-18"),
    full=(Recipe(50, 1e-2, model_kwargs={"backbone": "resnet50"}, row="deeplabv3", note="ch. 05, ResNet-50, OS 16"),),
    compare=True,
)  # fmt: skip
def deeplabv3(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    output_stride: int = 16,
    multi_grid: Sequence[int] | None = (1, 2, 4),
    atrous_rates: Sequence[int] | None = None,
    dropout: float = 0.5,
) -> DeepLabV3:
    """DeepLabv3 as the paper's best: ResNet-50 (its ablation backbone; ``"resnet101"`` for its final results),
    output stride 16, multi-grid (1, 2, 4), ASPP rates (6, 12, 18) at OS16 (doubled at OS8 when
    ``atrous_rates=None``). ``multi_grid=None``, ``output_stride=8``, ``atrous_rates=(12, 24, 36)`` is
    torchvision's ``deeplabv3_resnet*`` layout."""
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if atrous_rates is None:
        atrous_rates = tuple(r * 16 // output_stride for r in PAPER_RATES_OS16)
    net = ResNetBackbone(backbone, pretrained=pretrained_backbone, output_stride=output_stride, multi_grid=multi_grid)
    head = DeepLabV3Head(net.channels[-1], num_classes, atrous_rates, dropout)
    aux = FCNHead(net.channels[-2], num_classes) if aux_loss else None
    return DeepLabV3(net, head, aux)


def from_torchvision_deeplabv3(tv_model: nn.Module) -> DeepLabV3:
    """The seglearn twin of torchvision's ``deeplabv3_resnet50/101`` (any ``num_classes``, with or without aux),
    carrying its weights: same outputs (up to float rounding)."""
    tv_backbone = tv_model.backbone
    if not all(hasattr(tv_backbone, name) for name in ("conv1", "layer3", "layer4")):
        raise TypeError(
            f"from_torchvision_deeplabv3 needs a ResNet backbone (deeplabv3_resnet50/101); got "
            f"{type(tv_backbone).__name__} (deeplabv3_mobilenet_v3_large is not supported)"
        )
    depth = {6: "resnet50", 23: "resnet101"}.get(len(tv_backbone.layer3))
    if depth is None:
        raise TypeError(f"unsupported ResNet with {len(tv_backbone.layer3)} blocks in layer3: expected 6 or 23")
    output_stride = 32
    if tv_backbone.layer4[0].conv2.stride == (1, 1):
        output_stride = 16 if tv_backbone.layer3[0].conv2.stride != (1, 1) else 8
    aspp = tv_model.classifier[0]
    rates = [branch[0].dilation[0] for branch in aspp.convs[1:-1]]
    num_classes = tv_model.classifier[-1].out_channels
    model = create_model(  # through create_model, so the twin carries a model_spec
        "deeplabv3",
        num_classes,
        backbone=depth,
        aux_loss=tv_model.aux_classifier is not None,
        output_stride=output_stride,
        multi_grid=None,
        atrous_rates=tuple(rates),
        dropout=float(aspp.project[-1].p),
    )
    model.load_state_dict(_rename_torchvision_keys(tv_model.state_dict()))
    return model.train(tv_model.training)


def _rename_torchvision_keys(state: dict[str, Tensor]) -> dict[str, Tensor]:
    prefixes = {
        "backbone.conv1.": "backbone.stem.0.",
        "backbone.bn1.": "backbone.stem.1.",
        "classifier.": "head.",
        "aux_classifier.": "aux_head.",
    }
    renamed = {}
    for key, value in state.items():
        for old, new in prefixes.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        renamed[key] = value
    return renamed
