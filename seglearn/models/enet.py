"""ENet: a real-time encoder-decoder of ResNet-like bottlenecks, downsampling early, with a small decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Recipe, register_model
from .segmentation_model import pad_to_multiple
from .segnet import max_unpool2x2

ENET_PAPER = (
    'Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network Architecture for Real-Time Semantic '
    'Segmentation", arXiv 2016'
)
ENET_URL = "https://arxiv.org/abs/1606.02147"

# Stages 2 and 3 (paper Table 1): the kind of each bottleneck's main convolution, in order; "asymmetric" is a
# 5x1 then a 1x5 convolution, a number is a dilated 3x3 convolution of that rate.
STAGE_2_3 = ("regular", 2, "asymmetric", 4, "regular", 8, "asymmetric", 16)


def _norm(channels: int) -> nn.BatchNorm2d:
    # eps 1e-3 as the authors' Torch code (nn.SpatialBatchNormalization(n, 1e-3))
    return nn.BatchNorm2d(channels, eps=1e-3)


def _act(channels: int, relu: bool) -> nn.Module:
    """PReLU with one slope per channel (the encoder, paper §4 "Nonlinear operations"), or ReLU (the decoder)."""
    return nn.ReLU(inplace=True) if relu else nn.PReLU(channels)


class InitialBlock(nn.Module):
    """ENet's initial block (paper Fig. 2a): a 3x3 conv with stride 2 and ``out_channels - in_channels`` (13)
    filters, concatenated with a 2x2 max-pool of the input, then BN and PReLU.

    Shapes: (N, 3, H, W), H and W even -> (N, 16, H/2, W/2).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 16, relu: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels - in_channels, 3, stride=2, padding=1)
        self.norm = _norm(out_channels)
        self.act = _act(out_channels, relu)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(torch.cat([self.conv(x), F.max_pool2d(x, 2, 2)], dim=1)))


def _main_conv(channels: int, kind: str | int) -> list[nn.Module]:
    """The bottleneck's middle convolution: 3x3 ("regular"), 3x3 dilated by ``kind`` (an int), or 5x1 then 1x5
    ("asymmetric"; no BN between them, as in the authors' code). Padding keeps the size."""
    if kind == "asymmetric":
        return [nn.Conv2d(channels, channels, (5, 1), padding=(2, 0), bias=False),
                nn.Conv2d(channels, channels, (1, 5), padding=(0, 2))]  # fmt: skip
    dilation = 1 if kind == "regular" else int(kind)
    return [nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)]


class RegularBottleneck(nn.Module):
    """ENet's bottleneck (paper Fig. 2b), channels kept: an identity shortcut plus an extension branch of a 1x1
    projection to ``channels / 4`` (BN, activation), the main conv (:func:`_main_conv`; BN, activation), a 1x1
    expansion (BN) and spatial dropout; their sum goes through the activation.

    No bias in the projections (paper §4 "Information-preserving dimensionality changes"), a bias on the main conv,
    as the authors' Torch code. Shapes: (N, C, h, w) -> (N, C, h, w).
    """

    def __init__(self, channels: int, kind: str | int = "regular", dropout: float = 0.1, relu: bool = False) -> None:
        super().__init__()
        inner = channels // 4
        self.branch = nn.Sequential(
            nn.Conv2d(channels, inner, 1, bias=False), _norm(inner), _act(inner, relu),
            *_main_conv(inner, kind), _norm(inner), _act(inner, relu),
            nn.Conv2d(inner, channels, 1, bias=False), _norm(channels),
            nn.Dropout2d(dropout),
        )  # fmt: skip
        self.act = _act(channels, relu)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.branch(x))


class DownsamplingBottleneck(nn.Module):
    """ENet's downsampling bottleneck (bottleneck1.0, 2.0): the shortcut is a 2x2 max-pool whose indices are kept
    for the decoder's unpooling, zero-padded from ``in_channels`` to ``out_channels`` maps; the branch's projection
    is a 2x2 conv with stride 2 (paper §3), then a 3x3 conv, the 1x1 expansion and spatial dropout.

    ``inner = out_channels / 4`` as in the authors' code (16 for 16 -> 64, 32 for 64 -> 128).
    Shapes: (N, C_in, h, w) -> ((N, C_out, h/2, w/2), pooling indices (N, C_in, h/2, w/2)).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1, relu: bool = False) -> None:
        super().__init__()
        inner = out_channels // 4
        self.extra_channels = out_channels - in_channels
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 2, stride=2, bias=False), _norm(inner), _act(inner, relu),
            nn.Conv2d(inner, inner, 3, padding=1), _norm(inner), _act(inner, relu),
            nn.Conv2d(inner, out_channels, 1, bias=False), _norm(out_channels),
            nn.Dropout2d(dropout),
        )  # fmt: skip
        self.act = _act(out_channels, relu)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        main, indices = F.max_pool2d(x, 2, 2, return_indices=True)
        # zero maps append the missing channels: no parameters, the information of the input kept (paper §4)
        main = F.pad(main, (0, 0, 0, 0, 0, self.extra_channels))
        return self.act(main + self.branch(x)), indices


class UpsamplingBottleneck(nn.Module):
    """ENet's upsampling bottleneck (bottleneck4.0, 5.0): the shortcut is a 1x1 conv (BN) to ``out_channels``
    then max-unpooling with the indices of the matching downsampling bottleneck; the branch is a 1x1 projection to
    ``out_channels / 4``, a 3x3 transposed conv with stride 2, a 1x1 expansion and spatial dropout; ReLU after each
    BN and after the sum (the decoder uses ReLU).

    Shapes: ``x`` (N, C_in, h, w) and ``indices`` (N, C_out, h, w) (from a 2x2 max-pool of a (2h, 2w) map) ->
    (N, C_out, 2h, 2w).
    """

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.1) -> None:
        super().__init__()
        inner = out_channels // 4
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), _norm(out_channels))
        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, inner, 1, bias=False), _norm(inner), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(inner, inner, 3, stride=2, padding=1, output_padding=1), _norm(inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_channels, 1, bias=False), _norm(out_channels),
            nn.Dropout2d(dropout),
        )  # fmt: skip

    def forward(self, x: Tensor, indices: Tensor) -> Tensor:
        main = max_unpool2x2(self.shortcut(x), indices)
        return F.relu(main + self.branch(x))


class ENet(nn.Module):
    """ENet (paper Table 1), the layout of the authors' Torch code (e-lab/ENet-training).

    Paszke, Chaurasia, Kim, Culurciello, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
    Segmentation", 2016, https://arxiv.org/abs/1606.02147

    Modules, in order, named for the paper's table (hook them for figures; shapes for an (N, 3, H, W) input padded
    to a multiple of 8):

    - ``initial`` :class:`InitialBlock` -> (N, 16, H/2, W/2)
    - ``bottleneck1_0`` (down, kept indices) and ``stage1`` (bottleneck1.1-1.4) -> (N, 64, H/4, W/4)
    - ``bottleneck2_0`` (down) and ``stage2`` (2.1-2.8: regular, dilated 2, asymmetric 5, dilated 4, regular,
      dilated 8, asymmetric 5, dilated 16) -> (N, 128, H/8, W/8)
    - ``stage3`` (3.1-3.8, stage 2 without its downsampling) -> (N, 128, H/8, W/8)
    - ``bottleneck4_0`` (unpools with bottleneck2.0's indices) and ``stage4`` (4.1-4.2) -> (N, 64, H/4, W/4)
    - ``bottleneck5_0`` (unpools with bottleneck1.0's indices) and ``stage5`` (5.1) -> (N, 16, H/2, W/2)
    - ``fullconv``, a 2x2 transposed conv with stride 2 -> (N, num_classes, H, W)

    PReLU in the encoder (stages 1-3; ReLU with ``encoder_relu=True``), ReLU in the decoder (stages 4-5); spatial
    dropout 0.01 in stage 1 and 0.1 after it. :meth:`forward_features` returns every stage's output.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, encoder_relu: bool = False) -> None:
        super().__init__()
        r = encoder_relu
        self.initial = InitialBlock(in_channels, 16, relu=r)
        self.bottleneck1_0 = DownsamplingBottleneck(16, 64, dropout=0.01, relu=r)
        self.stage1 = nn.Sequential(*(RegularBottleneck(64, dropout=0.01, relu=r) for _ in range(4)))
        self.bottleneck2_0 = DownsamplingBottleneck(64, 128, dropout=0.1, relu=r)
        self.stage2 = nn.Sequential(*(RegularBottleneck(128, kind, relu=r) for kind in STAGE_2_3))
        self.stage3 = nn.Sequential(*(RegularBottleneck(128, kind, relu=r) for kind in STAGE_2_3))
        self.bottleneck4_0 = UpsamplingBottleneck(128, 64)
        self.stage4 = nn.Sequential(*(RegularBottleneck(64, relu=True) for _ in range(2)))
        self.bottleneck5_0 = UpsamplingBottleneck(64, 16)
        self.stage5 = RegularBottleneck(16, relu=True)
        # a bare full convolution (paper §3: no unpooling for the last upsampling, for speed)
        self.fullconv = nn.ConvTranspose2d(16, num_classes, 2, stride=2)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage's output, ``initial``, ``stage1`` .. ``stage5`` and ``out`` (the logits), at the padded size
        (H, W multiples of 8; :meth:`forward` crops the logits back)."""
        out = {"initial": self.initial(x)}
        x, idx1 = self.bottleneck1_0(out["initial"])
        out["stage1"] = x = self.stage1(x)
        x, idx2 = self.bottleneck2_0(x)
        out["stage2"] = x = self.stage2(x)
        out["stage3"] = x = self.stage3(x)
        out["stage4"] = x = self.stage4(self.bottleneck4_0(x, idx2))
        out["stage5"] = x = self.stage5(self.bottleneck5_0(x, idx1))
        out["out"] = self.fullconv(x)
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h, w = x.shape[-2:]
        # three halvings (initial, 1.0, 2.0): any size is padded to a multiple of 8 and the logits cropped back
        logits = self.forward_features(pad_to_multiple(x, 8))["out"]
        return {"out": logits[..., :h, :w]}


@register_model(
    "enet",
    paper=ENET_PAPER,
    url=ENET_URL,
    chapter="08_survey_encoder_decoder",
    quick=Recipe(8, 1e-3, "adamw", crop=(96, 128), batch_size=4,
                 note="ch. 08 QUICK, the paper's ENet (0.36 M parameters, already small)"),
    full=(
        Recipe(300, 5e-4, "adamw", weight_decay=2e-4, class_weights="enet", row="enet",
               note="paper: Adam lr 5e-4, wd 2e-4, batch 10, the encoder trained first (on 1/8 labels) then the "
                    "decoder, class weights 1/ln(1.02 + p); ours: the same weights, AdamW lr 5e-4 (poly), wd 2e-4 "
                    "(decoupled, so weaker than Adam's L2), end to end in one run as davidtvs/PyTorch-ENet, batch 8 "
                    "at 360x480 (the FULL table's), 300 epochs as davidtvs's CamVid run"),
    ),
    compare=True,
)  # fmt: skip
def enet(num_classes: int, *, encoder_relu: bool = False, in_channels: int = 3) -> ENet:
    """ENet (arXiv:1606.02147) as in the authors' Torch code: 0.36 M parameters for 11 classes (the paper: 0.37 M).

    ``encoder_relu=True`` uses ReLU in the encoder too (the paper's §4 reports PReLU works better there).
    """
    return ENet(num_classes, in_channels=in_channels, encoder_relu=encoder_relu)
