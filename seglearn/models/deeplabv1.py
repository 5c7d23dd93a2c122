"""``deeplabv1``: VGG16 with atrous convolution and a decimated fc6/fc7 head (DeepLab-LargeFOV and its siblings).

The ImageNet VGG16 is re-purposed in place: pool4 and pool5 keep the resolution (3x3, stride 1, padding 1), conv5 is
dilated by 2 to see what it saw before pool4's stride was removed, and the fully connected fc6/fc7 become
convolutions whose weights are *decimated* (sub-sampled) from VGG16's fc6 (4096x512x7x7) and fc7 (4096x4096).
``msc=True`` adds the paper's multi-scale prediction (DeepLab-MSc, Section 4.2): small MLPs on the input and on
pool1-pool4 whose features join fc7's before the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
MSC_CHANNELS = 128  # Section 4.2: each branch is 128 3x3 filters, then 128 1x1 filters (5 * 128 = 640 channels)


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


class MScBranch(nn.Sequential):
    """One DeepLab-MSc branch: 3x3 conv (128, ``stride``, padding 1) -> ReLU -> dropout -> 1x1 conv (128) -> ReLU ->
    dropout.

    The stride takes the tapped map to fc7's grid (input 8, pool1 4, pool2 2, pool3/pool4 1), as the released
    DeepLab-MSc prototxts stride the branches' first convolution; the dropout after each layer is theirs too.
    Shapes: (N, in_channels, s*h, s*w) -> (N, 128, h, w).
    """

    def __init__(self, in_channels: int, stride: int, dropout: float = 0.5, channels: int = MSC_CHANNELS) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
        )


class DeepLabV1Head(nn.Module):
    """fc6 (atrous k x k) -> ReLU -> dropout -> fc7 (1x1) -> ReLU -> dropout -> fc8 (1x1 classifier).

    ``msc``: ``(in_channels, stride)`` of each MSc branch, fine to coarse; their outputs are concatenated with fc7's
    (fc8 then sees ``c + 128 * len(msc)`` channels), and ``feats`` must then start with those maps.
    Shapes: ``feats[-1]`` (N, 512, H/8, W/8) -> (N, num_classes, H/8, W/8); with ``msc`` also ``feats[i]``
    (N, msc[i][0], H/8 * msc[i][1], W/8 * msc[i][1]) for each branch i.
    """

    def __init__(
        self,
        num_classes: int,
        config: FC6Config,
        in_channels: int = 512,
        dropout: float = 0.5,
        msc: Sequence[tuple[int, int]] = (),
    ) -> None:
        super().__init__()
        k, r, c = config.kernel_size, config.rate, config.channels
        # (k - 1) * r is even for every variant, so symmetric padding keeps the size.
        self.fc6 = nn.Conv2d(in_channels, c, k, padding=(k - 1) * r // 2, dilation=r)
        self.fc7 = nn.Conv2d(c, c, 1)
        # None, not an empty list, without MSc: the state dict and the module printout stay exactly DeepLab's.
        self.msc = nn.ModuleList(MScBranch(ch, s, dropout) for ch, s in msc) if msc else None
        self.fc8 = nn.Conv2d(c + MSC_CHANNELS * len(msc), num_classes, 1)
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
        if self.msc is not None:
            h, w = x.shape[-2:]
            # Caffe's ceil-mode pools give fc7 one more cell than a strided branch at sizes other than 8k+1; the cells
            # both have are centred on the same pixels, so the branch's missing last row/column is zero-padded.
            side = [branch(f) for branch, f in zip(self.msc, feats, strict=False)]
            side = [F.pad(s, (0, w - s.shape[-1], 0, h - s.shape[-2])) for s in side]
            x = torch.cat([x, *side], dim=1)
        return self.fc8(x)


class VGGWithInput(VGGBackbone):
    """A :class:`VGGBackbone` that returns its input ahead of the stages, ``[x, pool1, ..., pool5]``, so that
    DeepLab-MSc can attach a branch to the image; same modules and state-dict keys as :class:`VGGBackbone`.

    Shapes: (N, 3, H, W) -> [(N, 3, H, W), *VGGBackbone's five maps].
    """

    def forward(self, x: Tensor) -> list[Tensor]:
        return [x, *super().forward(x)]


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
    full=(
        Recipe(50, 1e-3, weight_decay=5e-4, pretrained_backbone=True, row="deeplabv1", note="ch. 04, LargeFOV, no CRF"),
        Recipe(11, 1e-3, weight_decay=5e-4, dataset="voc", split="trainaug", crop=(321, 321), batch_size=20,
               schedule="step:2000", lr_mult={"head.fc8": 10.0}, pretrained_backbone=True, row="deeplabv1-voc",
               note="ch. 04 on the paper's dataset: LargeFOV, no CRF"),
    ),
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
    msc: bool = False,
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

    ``msc=True`` is DeepLab-MSc (Section 4.2, "multi-scale prediction"; with the default variant
    DeepLab-MSc-LargeFOV): a :class:`MScBranch` (128 3x3 filters, then 128 1x1 filters, ReLU and dropout after each)
    on the input image and on pool1..pool4, always 128 channels wide whatever the fc7 width, concatenated with fc7's
    output, so fc8 sees fc7's width + 640 channels (1024 + 640 for LargeFOV). What differs from the paper:

    - the branches reach fc7's stride-8 grid by striding their 3x3 convolution (8, 4, 2, 1, 1), as the released
      prototxts do; each prototxt branch also has its own classifier whose scores are summed with fc8's, which is
      this one classifier on the concatenation, less five redundant bias vectors.
    - with the default 2x2 pools the input/pool1/pool2 branches' cells are centred 3.5/3/2 pixels up-left of fc7's
      (the learned 3x3 filters absorb it); ``caffe_pooling=True`` centres them exactly, as in the released model,
      and zero-pads a branch that is a cell short of fc7 (ceil-mode pools at sizes other than 8k+1).
    - the paper trains only the newly added weights on top of a trained DeepLab, keeping the others fixed; here
      everything trains together unless you freeze the rest yourself (the branches are ``head.msc``, their weights
      in fc8 its last 640 input columns). The branches start from PyTorch's default initialisation, not the released
      prototxts' fillers.

    Shapes: (N, 3, H, W) -> ``{"out": (N, num_classes, H, W)}`` (plus ``"aux"`` from conv4 when ``aux_loss``);
    with ``msc`` ``model.backbone(x)`` returns ``[x, pool1, ..., pool5]``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown DeepLab v1 variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    body = VGGWithInput if msc else VGGBackbone
    vgg = make_atrous_vgg(body(backbone, pretrained=pretrained_backbone, keep_classifier=pretrained_backbone),
                          caffe_pooling)  # fmt: skip
    branches: list[tuple[int, int]] = []
    if msc:
        vgg.channels, vgg.reductions = [3, *vgg.channels], [1, *vgg.reductions]
        # input and pool1..pool4; each branch's stride brings its map to pool5's (= fc7's) stride 8
        branches = [(c, vgg.reductions[-1] // r) for c, r in zip(vgg.channels[:-1], vgg.reductions[:-1], strict=True)]
    head = DeepLabV1Head(num_classes, VARIANTS[variant], vgg.channels[-1], dropout, msc=branches)
    if vgg.classifier is not None:
        head.load_vgg_classifier(vgg.classifier)
        vgg.classifier = None  # fc6/fc7 now live, decimated, in the head
    aux = FCNHead(vgg.channels[-2], num_classes) if aux_loss else None
    # Caffe pools map 8k+1 sizes to k+1 cells, so padding to a multiple of 8 would not help there.
    return SegmentationModel(vgg, head, aux_head=aux, aux_index=-2, size_divisor=1 if caffe_pooling else 8)
