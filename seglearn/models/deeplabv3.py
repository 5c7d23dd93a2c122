"""``deeplabv3``: dilated ResNet with multi-grid and Atrous Spatial Pyramid Pooling (ASPP) with image pooling.

Two heads on the ASPP: the paper's (the default) and torchvision's ``DeepLabHead``. Module layout and names follow
torchvision's ``models/segmentation/deeplabv3.py`` so its state dict loads into ``head="torchvision"`` with two
renamed prefixes (see :func:`from_torchvision_deeplabv3`). The paper's cascaded model without ASPP
(``cascade_blocks=1..3``) is in :mod:`.deeplabv3_deeper`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backbones import RESNET_BACKBONES, ResNetBackbone
from .blocks import ConvBNReLU, FCNHead, check_batch_norm_batch
from .deeplabv3_deeper import MAX_CASCADE_BLOCKS, CascadedResNetBackbone, LastBlockClassifier, cascade_output_strides
from .registry import Recipe, create_model, register_model
from .segmentation_model import SegmentationModel

PAPER_RATES_OS16 = (6, 12, 18)  # arXiv:1706.05587 §3.3; doubled at output stride 8
HEADS = ("paper", "torchvision")


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
    projected by 1x1 conv -> BN -> ReLU (-> dropout, none when ``dropout=0``).
    Shapes: (N, C_in, h, w) -> (N, out_channels, h, w)."""

    def __init__(
        self, in_channels: int, atrous_rates: Sequence[int], out_channels: int = 256, dropout: float = 0.5
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvBNReLU(in_channels, out_channels, 1)]
        branches += [ASPPConv(in_channels, out_channels, r) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        dropped = [nn.Dropout(dropout)] if dropout > 0 else []  # no module at 0: the paper's head has none
        self.project = nn.Sequential(*ConvBNReLU(len(branches) * out_channels, out_channels, 1), *dropped)

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


class ASPPHead(nn.Sequential):
    """An ASPP first, then the layers that turn its output into logits; applied to ``feats[-1]``."""

    @property
    def aspp(self) -> ASPP:
        return self[0]

    def forward(self, feats: list[Tensor]) -> Tensor:  # type: ignore[override]
        x = feats[-1]
        for module in self:
            x = module(x)
        return x


class DeepLabV3PaperHead(ASPPHead):
    """The paper's head (§3.3): ASPP (five 256-channel branches with BN, concatenated -> 1x1 conv 256 -> BN -> ReLU,
    no dropout) -> 1x1 classifier. Shapes: (N, in_channels, h, w) -> (N, num_classes, h, w)."""

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__(ASPP(in_channels, atrous_rates, 256, dropout), nn.Conv2d(256, num_classes, 1))


class DeepLabV3Head(ASPPHead):
    """torchvision's ``DeepLabHead``: ASPP (projection with dropout 0.5) -> 3x3 conv -> BN -> ReLU -> 1x1 classifier.

    Shapes: (N, in_channels, h, w) -> (N, num_classes, h, w).
    """

    def __init__(self, in_channels: int, num_classes: int, atrous_rates: Sequence[int], dropout: float = 0.5) -> None:
        # flat children, as torchvision's DeepLabHead, so its state dict loads under the same keys
        super().__init__(
            ASPP(in_channels, atrous_rates, 256, dropout), *ConvBNReLU(256, 256), nn.Conv2d(256, num_classes, 1)
        )


class DeepLabV3(SegmentationModel):
    """DeepLabv3: ResNet with atrous convolution (output stride 16 or 8, multi-grid in layer4) and ASPP.

    Paper: "Rethinking Atrous Convolution for Semantic Image Segmentation", Chen et al., 2017,
    https://arxiv.org/abs/1706.05587. A :class:`SegmentationModel` (same arguments: a :class:`ResNetBackbone`, a
    head — :class:`DeepLabV3PaperHead`, :class:`DeepLabV3Head` (torchvision's) or, for the cascaded model,
    :class:`LastBlockClassifier` — and an optional aux head on layer3) that can change its output stride: train at
    16 and fine-tune or evaluate the same weights at 8 (§4.1) with :meth:`set_output_stride`, which moves the
    backbone's strides and dilations and the ASPP rates together.

    Shapes: (N, 3, H, W) -> ``{"out": (N, num_classes, H, W)}``, plus ``"aux"`` (FCN head on layer3) when
    ``aux_head`` is given. In training mode a batch needs at least two images (image pooling has BatchNorm on a 1x1
    map).
    """

    def __init__(self, backbone: ResNetBackbone, head: nn.Module, aux_head: nn.Module | None = None) -> None:
        super().__init__(backbone, head, aux_head=aux_head, aux_index=-2)

    @property
    def output_stride(self) -> int:
        return self.backbone.output_stride

    @property
    def atrous_rates(self) -> tuple[int, ...]:
        """The ASPP's 3x3 rates; ``()`` for the cascaded model, which has no ASPP."""
        return self.head.aspp.atrous_rates if isinstance(self.head, ASPPHead) else ()

    def set_output_stride(self, output_stride: int) -> DeepLabV3:
        """Switch the output stride in place, weights untouched: the backbone's strides, dilations and paddings move
        and the ASPP rates scale by old/new stride (6,12,18 <-> 12,24,36), so the model equals one built at
        ``output_stride`` that loaded these weights. 8, 16 or 32; up to 32 * 2**cascade_blocks when cascaded."""
        old = self.backbone.output_stride
        rates = [r * old / output_stride for r in self.atrous_rates]
        if any(r != int(r) or r < 1 for r in rates):
            raise ValueError(
                f"ASPP rates {self.atrous_rates} at output stride {old} do not scale to whole rates at {output_stride}"
            )
        # the backbone refuses an unreachable stride before anything has changed
        self.backbone.set_output_stride(output_stride, self.backbone.multi_grid)
        if rates:
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
                 note="ch. 05 QUICK, ResNet-18, the paper's head"),
    full=(Recipe(50, 1e-2, model_kwargs={"backbone": "resnet50"}, pretrained_backbone=True, row="deeplabv3",
                 note="ch. 05, ResNet-50, OS 16, the paper's head"),
          Recipe(45, 7e-3, model_kwargs={"backbone": "resnet101"}, dataset="voc",
                 split="trainaug", crop=(513, 513), batch_size=16, pretrained_backbone=True, row="deeplabv3-voc",
                 note="ch. 05 on the paper's dataset: ResNet-101, OS 16, multi-grid (1, 2, 4), the paper's head")),
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
    head: str = "paper",
    dropout: float | None = None,
    cascade_blocks: int = 0,
) -> DeepLabV3:
    """DeepLabv3 as the paper has it: output stride 16, multi-grid (1, 2, 4) in block4, ASPP rates (6, 12, 18) at
    OS16 (doubled at OS8 when ``atrous_rates=None``) and the paper's head.

    ``head="paper"`` (§3.3): the five ASPP branches concatenated -> 1x1 conv 256 -> BN -> ReLU -> 1x1 classifier, no
    dropout. ``head="torchvision"``: torchvision's ``DeepLabHead``, whose ASPP projection has dropout 0.5 and which
    adds a 3x3 conv 256 -> BN -> ReLU before the classifier. ``dropout``: None is the head's own (none, 0.5); a
    number sets the dropout after the ASPP projection. ``backbone``: ResNet-50 by default (as torchvision's; the paper
    uses it only in the cascade study, Tables 1-2); the paper's ASPP ablations and final results use ``"resnet101"``.
    ``cascade_blocks=1..3`` builds the "going deeper" model of §3.2 instead: block4 copied as block5..block7 (see
    :class:`CascadedResNetBackbone`), no ASPP, a 1x1 classifier on the last block, output stride 8 to
    32 * 2**cascade_blocks. ``multi_grid=None, output_stride=8, atrous_rates=(12, 24, 36), head="torchvision"`` is
    torchvision's ``deeplabv3_resnet*``.
    """
    _check_arguments(head, output_stride, cascade_blocks, atrous_rates, dropout)
    if cascade_blocks:
        net: ResNetBackbone = CascadedResNetBackbone(
            backbone, pretrained_backbone, output_stride, multi_grid, cascade_blocks
        )
        classifier: nn.Module = LastBlockClassifier(net.channels[-1], num_classes)
    else:
        net = ResNetBackbone(
            backbone, pretrained=pretrained_backbone, output_stride=output_stride, multi_grid=multi_grid
        )
        if atrous_rates is None:
            atrous_rates = tuple(r * 16 // output_stride for r in PAPER_RATES_OS16)
        if head == "paper":
            classifier = DeepLabV3PaperHead(net.channels[-1], num_classes, atrous_rates, dropout or 0.0)
        else:
            classifier = DeepLabV3Head(net.channels[-1], num_classes, atrous_rates, 0.5 if dropout is None else dropout)
    aux = FCNHead(net.channels[-2], num_classes) if aux_loss else None
    return DeepLabV3(net, classifier, aux)


def _check_arguments(
    head: str, output_stride: int, cascade_blocks: int, atrous_rates: Sequence[int] | None, dropout: float | None
) -> None:
    if head not in HEADS:
        raise ValueError(f"head must be one of: {', '.join(HEADS)}; got {head!r}")
    if not 0 <= cascade_blocks <= MAX_CASCADE_BLOCKS:
        raise ValueError(f"cascade_blocks must be 0 to {MAX_CASCADE_BLOCKS} (block5..block7), got {cascade_blocks}")
    strides = cascade_output_strides(cascade_blocks)
    if output_stride not in strides:
        with_blocks = f" with cascade_blocks={cascade_blocks}" if cascade_blocks else ""
        raise ValueError(f"output_stride must be {', '.join(map(str, strides))}{with_blocks}, got {output_stride}")
    if cascade_blocks and (head != "paper" or atrous_rates is not None or dropout is not None):
        raise ValueError(
            "the cascaded model (cascade_blocks > 0) has no ASPP, only a 1x1 classifier on its last block: leave "
            "head, atrous_rates and dropout out"
        )


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
        head="torchvision",
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
