"""``deeplabv1``: VGG16 with atrous convolution and a decimated fc6/fc7 head (DeepLab-LargeFOV and its siblings).

The ImageNet VGG16 is re-purposed in place: pool4 and pool5 keep the resolution (3x3, stride 1, padding 1), conv5 is
dilated by 2 to see what it saw before pool4's stride was removed, and the fully connected fc6/fc7 become
convolutions whose weights are *decimated* (sub-sampled) from VGG16's fc6 (4096x512x7x7) and fc7 (4096x4096).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbones import VGGBackbone
from .blocks import FCNHead
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel


@dataclass(frozen=True)
class FC6Config:
    """One row of Table 2 of the DeepLab paper: fc6 kernel size, its rate ("input stride") and fc6/fc7 width."""

    kernel_size: int
    rate: int
    channels: int


# arXiv:1412.7062 v4, Table 2 ("Effect of Field-Of-View"); tests/test_deeplabv1.py checks the paper's parameter counts.
VARIANTS: dict[str, FC6Config] = {
    "7x7": FC6Config(7, 4, 4096),  # DeepLab-CRF-7x7
    "deeplab": FC6Config(4, 4, 4096),  # DeepLab-CRF
    "4x4": FC6Config(4, 8, 4096),  # DeepLab-CRF-4x4
    "largefov": FC6Config(3, 12, 1024),  # DeepLab-CRF-LargeFOV
}

_VGG_FC_CHANNELS, _VGG_FC_KERNEL = 4096, 7


def decimate_fc6(weight: Tensor, bias: Tensor, kernel_size: int, out_channels: int) -> tuple[Tensor, Tensor]:
    """VGG16's fc6 ``(4096, 512*7*7)`` -> a ``(out_channels, 512, k, k)`` convolution by decimation.

    Keeps every ``4096 / out_channels``-th filter and every ``6 / (k - 1)``-th tap in each spatial direction
    (k=3: taps 0, 3, 6; k=4: taps 0, 2, 4, 6; k=7: all), as DeepLab's released models do.
    """
    filter_step = _step(_VGG_FC_CHANNELS, out_channels)
    if kernel_size < 2 or (_VGG_FC_KERNEL - 1) % (kernel_size - 1):
        raise ValueError(f"fc6 can be decimated from 7x7 to 2x2, 3x3, 4x4 or 7x7, not {kernel_size}x{kernel_size}")
    tap_step = (_VGG_FC_KERNEL - 1) // (kernel_size - 1)
    w = weight.reshape(_VGG_FC_CHANNELS, -1, _VGG_FC_KERNEL, _VGG_FC_KERNEL)  # flatten order of VGG's (512, 7, 7)
    return w[::filter_step, :, ::tap_step, ::tap_step].clone(), bias[::filter_step].clone()


def decimate_fc7(weight: Tensor, bias: Tensor, channels: int) -> tuple[Tensor, Tensor]:
    """VGG16's fc7 ``(4096, 4096)`` -> a ``(channels, channels, 1, 1)`` convolution keeping every n-th output/input."""
    step = _step(_VGG_FC_CHANNELS, channels)
    return weight[::step, ::step, None, None].clone(), bias[::step].clone()


def _step(total: int, kept: int) -> int:
    if kept < 1 or total % kept:
        raise ValueError(f"cannot decimate {total} filters to {kept}: pass a divisor of {total} (e.g. 1024)")
    return total // kept


class DeepLabV1Head(nn.Module):
    """fc6 (atrous k x k) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (1x1 classifier).

    Shapes: ``feats[-1]`` (N, 512, H/8, W/8) -> (N, num_classes, H/8, W/8).
    """

    def __init__(self, num_classes: int, config: FC6Config, in_channels: int = 512, dropout: float = 0.5) -> None:
        super().__init__()
        k, r, c = config.kernel_size, config.rate, config.channels
        # (k - 1) * r is even for every variant, so symmetric padding keeps the size.
        self.fc6 = nn.Conv2d(in_channels, c, k, padding=(k - 1) * r // 2, dilation=r)
        self.fc7 = nn.Conv2d(c, c, 1)
        self.fc8 = nn.Conv2d(c, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)  # Caffe's element-wise dropout
        # DeepLab's prototxt: fc8 ~ N(0, 0.01), bias 0.
        nn.init.normal_(self.fc8.weight, std=0.01)
        nn.init.zeros_(self.fc8.bias)

    @torch.no_grad()
    def load_vgg_classifier(self, classifier: nn.Sequential) -> None:
        """Fill fc6/fc7 from torchvision VGG16's ``classifier`` (Linear fc6 at 0, fc7 at 3) by decimation."""
        fc6, fc7 = classifier[0], classifier[3]
        w6, b6 = decimate_fc6(fc6.weight, fc6.bias, self.fc6.kernel_size[0], self.fc6.out_channels)
        w7, b7 = decimate_fc7(fc7.weight, fc7.bias, self.fc7.out_channels)
        self.fc6.weight.copy_(w6)
        self.fc6.bias.copy_(b6)
        self.fc7.weight.copy_(w7)
        self.fc7.bias.copy_(b7)

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.dropout(self.relu(self.fc6(feats[-1])))
        x = self.dropout(self.relu(self.fc7(x)))
        return self.fc8(x)


def make_atrous_vgg(backbone: VGGBackbone, caffe_pooling: bool = False) -> VGGBackbone:
    """Rewrite a :class:`VGGBackbone` in place to output stride 8: pool4/pool5 3x3 stride 1, conv5 at dilation 2.

    ``caffe_pooling=True`` also swaps pool1-3 for DeepLab's Caffe pools (3x3, stride 2, padding 1, ceil mode:
    321 -> 161 -> 81 -> 41); the default keeps torchvision's 2x2 stride-2 pools, which ImageNet weights were trained
    with and which give exactly H/8.
    """
    pools = [i for i, m in enumerate(backbone.features) if isinstance(m, nn.MaxPool2d)]
    if caffe_pooling:
        for i in pools[:3]:
            backbone.features[i] = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    for i in pools[3:]:
        backbone.features[i] = nn.MaxPool2d(3, stride=1, padding=1)
    for m in backbone.stage(4):
        if isinstance(m, nn.Conv2d):
            m.dilation, m.padding = (2, 2), (2, 2)
    backbone.reductions = [2, 4, 8, 8, 8]
    return backbone


@register_model(
    "deeplabv1",
    paper=(
        'Chen, Papandreou, Kokkinos, Murphy, Yuille, "Semantic Image Segmentation with Deep Convolutional Nets and '
        'Fully Connected CRFs", ICLR 2015'
    ),
    url="https://arxiv.org/abs/1412.7062",
    chapter="04_deeplabv1_crf",
    aux_loss=True,  # seglearn's addition (an FCNHead on conv4): the paper has no auxiliary head
    pretrained_backbone=True,
    backbones=("vgg16", "vgg16_bn"),
    quick=Recipe(4, 1e-4, "adamw", weight_decay=5e-4, crop=(96, 128), batch_size=4, note="ch. 04 QUICK"),
    full=(Recipe(50, 1e-3, weight_decay=5e-4, row="deeplabv1", note="ch. 04, LargeFOV, no CRF"),),
    compare=True,
)
def deeplabv1(
    num_classes: int,
    *,
    backbone: str = "vgg16",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    variant: str = "largefov",
    caffe_pooling: bool = False,
    dropout: float = 0.5,
) -> SegmentationModel:
    """DeepLab v1 (default: DeepLab-LargeFOV) on VGG16 at output stride 8, logits up-sampled 8x bilinearly.

    Paper: "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs", Chen et al., ICLR 2015,
    https://arxiv.org/abs/1412.7062. ``variant`` picks a row of its Table 2 (fc6 kernel / rate / fc6-fc7 width):
    ``"largefov"`` 3x3 / 12 / 1024, ``"4x4"`` 4x4 / 8 / 4096, ``"deeplab"`` 4x4 / 4 / 4096, ``"7x7"`` 7x7 / 4 / 4096.
    With ``pretrained_backbone`` fc6/fc7 are decimated from the ImageNet classifier, otherwise they start from
    PyTorch's default initialisation. The dense CRF of the paper is :class:`seglearn.crf.DenseCRF`, applied to the
    softmax of ``"out"``. pool1-3 stay torchvision's 2x2 stride-2 pools (inputs padded to a multiple of 8 inside);
    ``caffe_pooling=True`` uses the released Caffe model's 3x3 stride-2 padding-1 ceil-mode pools instead
    (321x321 -> 41x41).

    Shapes: (N, 3, H, W) -> ``{"out": (N, num_classes, H, W)}`` (plus ``"aux"`` from conv4 when ``aux_loss``).
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown DeepLab v1 variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    vgg = make_atrous_vgg(VGGBackbone(backbone, pretrained=pretrained_backbone, keep_classifier=pretrained_backbone),
                          caffe_pooling)  # fmt: skip
    head = DeepLabV1Head(num_classes, VARIANTS[variant], vgg.channels[-1], dropout)
    if vgg.classifier is not None:
        head.load_vgg_classifier(vgg.classifier)
        vgg.classifier = None  # fc6/fc7 now live, decimated, in the head
    aux = FCNHead(vgg.channels[-2], num_classes) if aux_loss else None
    # Caffe pools map 8k+1 sizes to k+1 cells, so padding to a multiple of 8 would not help there.
    return SegmentationModel(vgg, head, aux_head=aux, aux_index=-2, size_divisor=1 if caffe_pooling else 8)
