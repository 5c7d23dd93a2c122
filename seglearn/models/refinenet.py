"""RefineNet: four cascaded refinement blocks (RCUs, multi-resolution fusion, chained residual pooling) on a ResNet."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import ResNetBackbone
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel, resize_to

REFINENET_PAPER = (
    'Lin, Milan, Shen, Reid, "RefineNet: Multi-Path Refinement Networks for High-Resolution Semantic Segmentation", '
    "CVPR 2017"
)
REFINENET_URL = "https://arxiv.org/abs/1611.06612"


def conv3x3(in_channels: int, out_channels: int, bias: bool = False) -> nn.Conv2d:
    """A 3x3 convolution that keeps the size (RefineNet's decoder has no BatchNorm: plain convolutions throughout)."""
    return nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias)


class ResidualConvUnit(nn.Module):
    """RCU, arXiv:1611.06612 §3.2 / Fig. 2(b): ``x + conv2(relu(conv1(relu(x))))`` with 3x3 convolutions.

    A ResNet block without BatchNorm. ``conv1`` has a bias and ``conv2`` none, as the released MATLAB model
    (converted by Nekrasov's refinenet-pytorch) and thomasjpfan/pytorch_refinenet. The identity carries ``x`` itself,
    not ``relu(x)`` (thomasjpfan's port adds ``relu(x)``: its in-place ReLU overwrites the input).
    Shapes: (N, C, h, w) -> (N, C, h, w).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.conv2 = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class MultiResolutionFusion(nn.Module):
    """Multi-resolution fusion, §3.2 / Fig. 2(c): a 3x3 conv per path to ``channels`` (the smallest width of the
    inputs), each upsampled bilinearly to the largest input resolution, then summed.

    Shapes: ``xs`` [(N, C_i, h_i, w_i)] -> (N, channels, max h_i, max w_i).
    """

    def __init__(self, in_channels: Sequence[int], channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(c, channels) for c in in_channels)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        if len(xs) != len(self.convs):
            raise ValueError(f"MultiResolutionFusion was built for {len(self.convs)} paths, got {len(xs)}")
        size = max((x.shape[-2:] for x in xs), key=lambda s: s[0] * s[1])
        # Convolve at each path's own resolution, then upsample: the convs run on the small maps (as the reference).
        out = resize_to(self.convs[0](xs[0]), size)
        for conv, x in zip(self.convs[1:], xs[1:], strict=True):
            out = out + resize_to(conv(x), size)
        return out


class ChainedResidualPooling(nn.Module):
    """Chained residual pooling, §3.2 / Fig. 2(d): ``relu`` first, then a chain of {5x5 max-pool (stride 1), 3x3
    conv} blocks; each block pools the previous block's output and every output is added to the running sum, so
    the result pools context over growing windows (5, 9, 13, ...) with learnt weights.

    ``blocks=2`` follows the CVPR paper's Fig. 2(d); the released MATLAB code builds 4 (``chained_pool_num=4``),
    thomasjpfan's port 3; ``blocks=0`` leaves only the ReLU (an ablation: RefineNet without CRP). Order pool -> conv
    is the paper's (and the released models'); the released training code's "improved" variant puts the conv before
    the pool. Shapes: (N, C, h, w) -> (N, C, h, w).
    """

    def __init__(self, channels: int, blocks: int = 2) -> None:
        super().__init__()
        if blocks < 0:
            raise ValueError(f"crp_blocks counts pooling blocks (0 = no chained pooling), got {blocks}")
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(5, stride=1, padding=2), conv3x3(channels, channels)) for _ in range(blocks)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        out = path = x
        for block in self.blocks:
            path = block(path)
            out = out + path
        return out


class RefineNetBlock(nn.Module):
    """One RefineNet, §3.2 / Fig. 2(a): two RCUs per input path (adaptive convs), multi-resolution fusion (skipped
    for a single path, as RefineNet-4), chained residual pooling, and ``out_rcus`` output RCU(s).

    Shapes: ``xs`` [(N, C_i, h_i, w_i)] (coarse path first) -> (N, channels, max h_i, max w_i).
    """

    def __init__(self, in_channels: Sequence[int], channels: int, crp_blocks: int = 2, out_rcus: int = 1) -> None:
        super().__init__()
        if len(in_channels) == 1 and in_channels[0] != channels:
            raise ValueError(f"a one-path RefineNet keeps its width: in_channels {in_channels[0]} != {channels}")
        self.rcus = nn.ModuleList(nn.Sequential(ResidualConvUnit(c), ResidualConvUnit(c)) for c in in_channels)
        self.mrf = MultiResolutionFusion(in_channels, channels) if len(in_channels) > 1 else None
        self.crp = ChainedResidualPooling(channels, crp_blocks)
        self.out_conv = nn.Sequential(*(ResidualConvUnit(channels) for _ in range(out_rcus)))

    def forward(self, *xs: Tensor) -> Tensor:
        if len(xs) != len(self.rcus):
            raise ValueError(f"this RefineNet block takes {len(self.rcus)} paths, got {len(xs)}")
        paths = [rcu(x) for rcu, x in zip(self.rcus, xs, strict=True)]
        x = self.mrf(paths) if self.mrf is not None else paths[0]
        return self.out_conv(self.crp(x))


class RefineNetHead(nn.Module):
    """The 4-cascaded RefineNet decoder, arXiv:1611.06612 Fig. 3(c).

    - ``adapt``: a 3x3 conv (no bias) per ResNet stage reducing it to ``channels`` (256), ``top_channels`` (512) for
      layer4 (§3: "512 for RefineNet-4 and 256 for the remaining ones"; the reference codes' ``*_dimred`` convs);
      Dropout(``dropout``) first on the layer3/layer4 features, as Nekrasov's port (the released code drops the
      ResNet outputs wider than 512 channels: these two for ResNet-50/101; we drop them for ResNet-18/34 too);
    - ``refinenet4`` (layer4 only) -> ``refinenet3`` (+ layer3) -> ``refinenet2`` (+ layer2) -> ``refinenet1``
      (+ layer1), each a :class:`RefineNetBlock` whose first path is the previous block's output;
    - ``out_rcus``: two more RCUs, so three RCUs follow RefineNet-1's fusion as between any two blocks (§3.2), then
      Dropout and a 1x1 classifier at 1/4 resolution (the released code: Dropout(0.5) and a 3x3 classifier).

    Shapes: ``feats`` [(N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/32, W/32)] ->
    (N, num_classes, H/4, W/4). :meth:`forward_features` returns every block's output.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 256,
        top_channels: int = 512,
        crp_blocks: int = 2,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise ValueError(f"4-cascaded RefineNet needs four backbone stages, got in_channels={list(in_channels)}")
        widths = [channels, channels, channels, top_channels]
        self.adapt = nn.ModuleList(conv3x3(c, w) for c, w in zip(in_channels, widths, strict=True))
        self.refinenet4 = RefineNetBlock([top_channels], top_channels, crp_blocks)
        self.refinenet3 = RefineNetBlock([top_channels, channels], channels, crp_blocks)
        self.refinenet2 = RefineNetBlock([channels, channels], channels, crp_blocks)
        self.refinenet1 = RefineNetBlock([channels, channels], channels, crp_blocks)
        self.out_rcus = nn.Sequential(ResidualConvUnit(channels), ResidualConvUnit(channels))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward_features(self, feats: list[Tensor]) -> dict[str, Tensor]:
        """Every cascade level, for inspection: ``refinenet4`` (N, top_channels, H/32, W/32), ``refinenet3``
        (N, channels, H/16, W/16), ``refinenet2`` (H/8), ``refinenet1`` (H/4), and ``fused`` (N, channels, H/4, W/4)
        after the last two RCUs, the classifier's input."""
        if len(feats) != 4:
            raise ValueError(f"RefineNetHead takes the four ResNet stages, got {len(feats)} features")
        c1, c2, c3, c4 = feats
        x1, x2 = self.adapt[0](c1), self.adapt[1](c2)
        x3, x4 = self.adapt[2](self.dropout(c3)), self.adapt[3](self.dropout(c4))  # the two widest stages, as released
        p4 = self.refinenet4(x4)
        p3 = self.refinenet3(p4, x3)
        p2 = self.refinenet2(p3, x2)
        p1 = self.refinenet1(p2, x1)
        return {"refinenet4": p4, "refinenet3": p3, "refinenet2": p2, "refinenet1": p1, "fused": self.out_rcus(p1)}

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(self.dropout(self.forward_features(feats)["fused"]))


@register_model(
    "refinenet",
    paper=REFINENET_PAPER,
    url=REFINENET_URL,
    chapter="09_survey_context",
    pretrained_backbone=True,
    backbones=("resnet101", "resnet50", "resnet18", "resnet34"),
    quick=Recipe(5, 1e-3, "adamw", model_kwargs={"backbone": "resnet18", "channels": 64, "top_channels": 128,
                                                 "dropout": 0.1},
                 crop=(96, 128), batch_size=4,
                 note="ch. 09 QUICK, ResNet-18, 64/128 decoder channels (paper 256/512), dropout 0.1 (paper 0.5)"),
    full=(
        Recipe(80, 5e-3, weight_decay=5e-4, model_kwargs={"backbone": "resnet101"}, lr_mult={"backbone": 0.1},
               pretrained_backbone=True, row="refinenet",
               note="paper: ResNet-101, SGD momentum 0.9, lr 5e-4 at batch 1 with the ResNet at 0.1x, wd 5e-4, "
                    "manual step decay, 400x400 crops; ours: lr 5e-3 at batch 8 (the paper's rate scaled "
                    "linearly), the ResNet at 0.1x, the poly schedule, 360x480 frames, 2 CRP blocks as the "
                    "CVPR paper's Fig. 2 (the released code: 4)"),
        Recipe(30, 5e-3, weight_decay=5e-4, model_kwargs={"backbone": "resnet101"}, dataset="voc", split="trainaug",
               crop=(400, 400), batch_size=8, lr_mult={"backbone": 0.1}, pretrained_backbone=True, row="refinenet-voc",
               note="ch. 09 on the paper's dataset: ResNet-101 at 0.1x the decoder's rate"),
    ),
    compare=True,
)  # fmt: skip
def refinenet(
    num_classes: int,
    *,
    backbone: str = "resnet101",
    pretrained_backbone: bool = False,
    channels: int = 256,
    top_channels: int = 512,
    crp_blocks: int = 2,
    dropout: float = 0.5,
) -> SegmentationModel:
    """4-cascaded RefineNet (arXiv:1611.06612) on ResNet-101, the paper's default: :class:`RefineNetHead` with 512
    channels on layer4 and 256 elsewhere, 2 chained-residual-pooling blocks (``crp_blocks``; the released code uses
    4; 0 removes the pooling, for an ablation), logits at 1/4 resolution upsampled bilinearly to the input.

    Any input size works: the input is padded to a multiple of 32 (so each block's coarse path is exactly half its
    fine path) and the logits cropped back. With 21 classes it has 109,751,893 parameters; ``crp_blocks=3`` is
    thomasjpfan's ``RefineNet4Cascade`` (113,880,661) and ``crp_blocks=4`` Nekrasov's ``rf101`` but for its 3x3
    classifier (tests/test_refinenet.py). No BatchNorm in the decoder, as the paper; batches of one image train.
    """
    body = ResNetBackbone(backbone, pretrained=pretrained_backbone, output_stride=32)
    head = RefineNetHead(body.channels, num_classes, channels, top_channels, crp_blocks, dropout)
    return SegmentationModel(body, head, size_divisor=32)
