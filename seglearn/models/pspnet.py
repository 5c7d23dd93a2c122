"""PSPNet: a dilated ResNet at output stride 8 and a Pyramid Pooling Module over its last stage."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .backbones import RESNET_BACKBONES, ResNetBackbone
from .blocks import FCNHead
from .ppm import PyramidPooling
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel

PSP_OUTPUT_STRIDES = (8, 16)


class PSPHead(nn.Module):
    """PSPNet's head from "Pyramid Scene Parsing Network" (Zhao et al., CVPR 2017,
    https://arxiv.org/abs/1612.01105), §3.2-3.3, laid out as mmsegmentation's ``PSPHead``.

    - ``ppm`` (:class:`PyramidPooling`, bins 1, 2, 3, 6): average-pool the last stage to b x b, a 1x1 conv (BN,
      ReLU) to ``channels`` per bin (the paper's 1/N of the input width: 512 for ResNet-50's 2048), upsample,
      concatenate with the input and fuse by a 3x3 conv (BN, ReLU) to ``channels``: every position sees the global
      context (bin 1) and coarse sub-region layouts (bins 2, 3, 6) next to its own local feature;
    - Dropout(0.1) and a 1x1 ``classifier``.

    Shapes: ``feats[-1]`` (N, C4, H/8, W/8) -> (N, num_classes, H/8, W/8) (H/16 at output stride 16). Hooks for
    figures: ``ppm.stages[i]`` gives bin ``ppm.bins[i]``'s pooled map (N, channels, b, b), ``ppm`` the fused map.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 512,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels, channels, bins)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.ppm(feats[-1])))


@register_model(
    "pspnet",
    paper='Zhao, Shi, Qi, Wang, Jia, "Pyramid Scene Parsing Network", CVPR 2017',
    url="https://arxiv.org/abs/1612.01105",
    chapter="09_survey_context",
    aux_loss=True,
    pretrained_backbone=True,
    backbones=RESNET_BACKBONES,
    # QUICK at output stride 16: 0.78 GMAC per 96x128 image instead of 2.4 at the paper's 8 (layer4 at 1/8 is 16x
    # its cost at 1/32), so it trains on a CPU in the chapter's budget; the pyramid is the same.
    quick=Recipe(5, 1e-3, "adamw", model_kwargs={"backbone": "resnet18", "channels": 64, "output_stride": 16},
                 aux_loss=True, crop=(96, 128), batch_size=4,
                 note="ch. 09 QUICK: ResNet-18 at output stride 16 (the paper: 8), 64 PPM channels"),
    full=(
        Recipe(80, 1e-2, model_kwargs={"backbone": "resnet50"}, aux_loss=True, pretrained_backbone=True, row="pspnet",
               note="paper: ResNet-50/101 (deep stem), SGD lr 1e-2 poly 0.9, momentum 0.9, wd 1e-4, aux 0.4, "
                    "batch 16; ours: the same optimizer and aux weight on torchvision's ResNet-50 (7x7 stem, for "
                    "its ImageNet weights), output stride 8, batch 8 at 360x480 like every FULL row"),
        Recipe(45, 1e-2, model_kwargs={"backbone": "resnet101"}, aux_loss=True, dataset="voc", split="trainaug",
               crop=(473, 473), batch_size=16, pretrained_backbone=True, row="pspnet-voc",
               note="ch. 09 on the paper's dataset: ResNet-101, OS 8, aux 0.4"),
    ),
    compare=True,
)  # fmt: skip
def pspnet(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    output_stride: int = 8,
    channels: int | None = None,
    bins: Sequence[int] = (1, 2, 3, 6),
    dropout: float = 0.1,
) -> SegmentationModel:
    """PSPNet (arXiv:1612.01105) on a dilated ResNet-50 at output stride 8 (16 also accepted).

    ``channels=None`` takes the paper's rule, 1/len(bins) of the last stage's width: 512 for ResNet-50/101 (as
    mmsegmentation's ``pspnet_r50-d8``), 128 for ResNet-18/34 (as its ``pspnet_r18-d8``). With ``aux_loss`` an
    :class:`FCNHead` on layer3 (the paper's deep supervision on res4b22) gives ``"aux"``, weight 0.4 in
    ``SegLoss``. The logits are bilinearly upsampled to the input, so any input size works; in training mode the
    bin-1 branch needs a batch of at least 2 (BatchNorm over a 1x1 map). With 19 classes and ``aux_loss=True`` it
    is mmsegmentation's PSPNet-R50-D8 but for the stem (ResNetV1c has a deep 3x3 stem, 19,232 parameters more);
    tests/test_pspnet.py pins the count and compares the pyramid with ``smp.PSPNet``'s.
    """
    if output_stride not in PSP_OUTPUT_STRIDES:
        raise ValueError(f"pspnet takes output_stride 8 (the paper's) or 16, got {output_stride}")
    if channels is not None and channels < 1:
        raise ValueError(f"channels must be >= 1, or None for the paper's in_channels / len(bins), got {channels}")
    body = ResNetBackbone(backbone, pretrained=pretrained_backbone, output_stride=output_stride)
    width = channels if channels is not None else body.channels[-1] // len(tuple(bins))
    head = PSPHead(body.channels[-1], num_classes, channels=width, bins=bins, dropout=dropout)
    aux = FCNHead(body.channels[-2], num_classes) if aux_loss else None
    return SegmentationModel(body, head, aux_head=aux, aux_index=-2)
