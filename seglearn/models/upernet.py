"""UPerNet: a Pyramid Pooling Module on the last stage and an FPN over all four ResNet stages, fused at 1/4."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backbones import RESNET_BACKBONES, ResNetBackbone
from .blocks import ConvBNReLU, FCNHead
from .ppm import PyramidPooling
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel, resize_to


class UPerHead(nn.Module):
    """UPerNet's decoder from "Unified Perceptual Parsing for Scene Understanding" (Xiao et al., 2018,
    https://arxiv.org/abs/1807.10221), §4, laid out as mmsegmentation's ``UPerHead`` (``channels=512``).

    - :class:`PyramidPooling` (bins 1, 2, 3, 6) on the last stage gives the top level P5;
    - 1x1 laterals (conv, BN, ReLU) on the other stages, a top-down path (upsample + add) and a 3x3 conv per level
      give P2..P4 (FPN, Lin et al., https://arxiv.org/abs/1612.03144);
    - all levels are upsampled to P2's size (1/4), concatenated and fused by a 3x3 conv (BN, ReLU);
    - Dropout(0.1) and a 1x1 classifier.

    Shapes: ``feats`` [(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)] ->
    (N, num_classes, H/4, W/4). :meth:`forward_features` returns every level for inspection.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"UPerHead needs at least two backbone stages, got in_channels={list(in_channels)}")
        self.in_channels = list(in_channels)
        self.ppm = PyramidPooling(self.in_channels[-1], channels, pool_scales)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels, kernel_size=1) for c in self.in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, kernel_size=3) for _ in self.in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(self.in_channels) * channels, channels, kernel_size=3)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_features(self, feats: list[Tensor]) -> dict[str, Tensor]:
        """Every level and the fused map, for inspection: ``p2``..``p5`` (N, channels, h_i, w_i) after the FPN's 3x3
        convs, one per stage (``p5`` is the PPM output; at output stride 8 p3..p5 all have H/8), and ``fused``
        (N, channels, H/4, W/4), the classifier's input."""
        if len(feats) != len(self.in_channels):
            raise ValueError(f"UPerHead was built for {len(self.in_channels)} stages, got {len(feats)} features")
        # the last stage feeds the PPM instead of a lateral, hence strict=False
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats, strict=False)]
        laterals.append(self.ppm(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        levels = [conv(x) for conv, x in zip(self.fpn_convs, laterals, strict=False)] + [laterals[-1]]
        size = levels[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize_to(x, size) for x in levels], dim=1))
        out = {f"p{i + 2}": x for i, x in enumerate(levels)}
        out["fused"] = fused
        return out

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(feats)["fused"]))


@register_model(
    "upernet",
    paper='Xiao et al., "Unified Perceptual Parsing for Scene Understanding", ECCV 2018',
    url="https://arxiv.org/abs/1807.10221",
    chapter="07_upernet",
    aux_loss=True,
    pretrained_backbone=True,
    backbones=RESNET_BACKBONES,
    quick=Recipe(8, 1e-3, "adamw", model_kwargs={"backbone": "resnet18", "channels": 128}, aux_loss=True,
                 crop=(96, 128), batch_size=4, note="ch. 07 QUICK, ResNet-18, 128 decoder channels"),
    full=(
        Recipe(80, 1e-2, model_kwargs={"backbone": "resnet50"}, aux_loss=True, pretrained_backbone=True, row="upernet",
               note="ch. 07, ResNet-50, 512 ch."),
    ),
    compare=True,
)  # fmt: skip
def upernet(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    output_stride: int = 32,
    channels: int = 512,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
) -> SegmentationModel:
    """UPerNet (arXiv:1807.10221) on ResNet-50 at output stride 32, as mmsegmentation's ``upernet_r50`` config.

    Any input size works: the top-down path resizes to each lateral's size. In training mode the PPM's 1x1 bin needs
    a batch of at least 2 (BatchNorm). ``output_stride=8`` (or 16) dilates layer3/4 instead (the FPN then adds
    levels of equal size). With ``aux_loss`` an :class:`FCNHead` on layer3 gives ``"aux"`` (weight 0.4 in
    ``SegLoss``). With ``channels=512``, 150 classes and ``aux_loss=True`` it is mmsegmentation's UPerNet-R50 but
    for the stem (mmseg's ResNetV1c has a deep stem); tests/test_upernet.py pins the parameter count.
    """
    body = ResNetBackbone(backbone, pretrained=pretrained_backbone, output_stride=output_stride)
    head = UPerHead(body.channels, num_classes, channels=channels, pool_scales=pool_scales)
    aux = FCNHead(body.channels[-2], num_classes) if aux_loss else None
    return SegmentationModel(body, head, aux_head=aux, aux_index=-2)
