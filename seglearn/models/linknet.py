"""LinkNet: a ResNet-18 encoder linked to a light decoder by additions, not concatenations."""

from __future__ import annotations

from torch import Tensor, nn

from .backbones import ResNetBackbone
from .blocks import ConvBNReLU
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel

LINKNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")


class FullConvBNReLU(nn.Sequential):
    """A "full convolution" (Torch's ``SpatialFullConvolution``, i.e. a transposed convolution) -> BN -> ReLU.

    Padding and output padding are chosen so the size grows by exactly ``stride``: (N, in, h, w) ->
    (N, out, stride * h, stride * w), for kernel 3 (stride 1 or 2) and kernel 2 (stride 2). No bias: the
    BatchNorm's shift replaces it. Children ``0`` conv, ``1`` BN, ``2`` ReLU, as :class:`ConvBNReLU`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 2) -> None:
        padding = (kernel_size - 1) // 2
        # (h - 1) * s - 2p + k + op = s * h  <=>  op = s - k + 2p
        output_padding = stride - kernel_size + 2 * padding
        if not 0 <= output_padding < stride:
            raise ValueError(f"kernel {kernel_size} with stride {stride} cannot grow the size by exactly {stride}")
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride, padding, output_padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class LinkNetDecoderBlock(nn.Sequential):
    """One LinkNet decoder block (paper, Fig. 3): 1x1 conv m -> m/4, 3x3 full-conv m/4 -> m/4 (stride 2),
    1x1 conv m/4 -> n, each followed by BN and ReLU.

    Cutting the channels by 4 before the (costly) full convolution keeps the decoder light: the four blocks hold
    0.33 M of LinkNet's 11.5 M parameters. ``stride=1`` for decoder block 1, whose skip (the stem's output) has the
    same size as its input because ResNet's layer1 does not downsample. Shapes: (N, m, h, w) -> (N, n, s*h, s*w).
    Children ``0``/``1``/``2`` are the three stages (each ``0`` conv, ``1`` BN, ``2`` ReLU), as smp's
    ``DecoderBlock.block``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        mid = in_channels // 4
        super().__init__(
            ConvBNReLU(in_channels, mid, kernel_size=1),
            FullConvBNReLU(mid, mid, kernel_size=3, stride=stride),
            ConvBNReLU(mid, out_channels, kernel_size=1),
        )


class LinkNetEncoder(ResNetBackbone):
    """A :class:`ResNetBackbone` (stem conv 7x7/2 + max-pool 3x3/2, then layer1..4) that also returns the stem's
    output: the input of encoder block 1, which LinkNet adds to the output of decoder block 1.

    Shapes for (N, 3, H, W), H and W multiples of 32: [stem (N, 64, H/4, W/4), layer1 (N, C1, H/4, W/4),
    layer2 (N, C2, H/8, W/8), layer3 (N, C3, H/16, W/16), layer4 (N, C4, H/32, W/32)];
    ``channels`` = [64, C1, C2, C3, C4]. The state-dict keys are :class:`ResNetBackbone`'s.
    """

    def __init__(self, name: str = "resnet18", pretrained: bool = False) -> None:
        super().__init__(name, pretrained=pretrained, output_stride=32)
        self.channels = [64, *self.channels]

    @property
    def reductions(self) -> list[int]:
        return [4, 4, 8, 16, 32]

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = [self.stem(x)]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            feats.append(layer(feats[-1]))
        return feats


class LinkNetHead(nn.Module):
    """LinkNet's decoder from "LinkNet: Exploiting Encoder Representations for Efficient Semantic Segmentation"
    (Chaurasia & Culurciello, VCIP 2017, https://arxiv.org/abs/1707.03718), Fig. 1-3.

    - decoder block i (``blocks[i - 1]``, i = 4..1) maps C_i -> C_{i-1} (C_0 = 64, the stem) and doubles the size
      (block 1 keeps it); its output is ADDED to the input of encoder block i: d4 = block4(e4) + e3, ...,
      d1 = block1(d2) + stem. The addition (not U-Net's concatenation) keeps every decoder block at the encoder's
      width, so the decoder stays cheap, and hands the encoder's spatial detail back that pooling lost.
    - final block: 3x3 full-conv /2 (64 -> 32, BN, ReLU), 3x3 conv (32 -> 32, BN, ReLU) and a 2x2 full-conv /2
      to the classes (``classifier``, with bias).

    For ResNet-18/34 C = (64, 64, 128, 256, 512), the paper's widths; for ResNet-50/101 the blocks follow the
    wider encoder: (2048 -> 1024, 1024 -> 512, 512 -> 256, 256 -> 64).

    Shapes: ``feats`` [(N, 64, H/4, W/4), (N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16),
    (N, C4, H/32, W/32)] -> (N, num_classes, H, W). :meth:`forward_features` returns d4..d1 and the final map.
    """

    def __init__(
        self, encoder_channels: list[int], num_classes: int, final_channels: int = 32, skip: bool = True
    ) -> None:
        super().__init__()
        self.skip = skip  # False: no links (the authors' models/nobypass.py), the same parameters
        if len(encoder_channels) != 5:
            raise ValueError(f"LinkNetHead needs the stem and four stages, got channels={list(encoder_channels)}")
        c = list(encoder_channels)
        # blocks[0] is the paper's decoder block 1 (stride 1: layer1 does not downsample), blocks[3] block 4.
        self.blocks = nn.ModuleList(LinkNetDecoderBlock(c[i], c[i - 1], stride=1 if i == 1 else 2) for i in range(1, 5))
        self.final = nn.Sequential(
            FullConvBNReLU(c[0], final_channels, kernel_size=3, stride=2),  # H/4 -> H/2
            ConvBNReLU(final_channels, final_channels, kernel_size=3),
        )
        self.classifier = nn.ConvTranspose2d(final_channels, num_classes, kernel_size=2, stride=2)  # H/2 -> H

    def forward_features(self, feats: list[Tensor]) -> dict[str, Tensor]:
        """``d4`` (N, C3, H/16, W/16), ``d3`` (N, C2, H/8, W/8), ``d2`` (N, C1, H/4, W/4), ``d1`` (N, 64, H/4, W/4)
        after each addition, and ``final`` (N, 32, H/2, W/2), the classifier's input."""
        if len(feats) != 5:
            raise ValueError(f"LinkNetHead takes the stem and four stages (5 features), got {len(feats)}")
        out: dict[str, Tensor] = {}
        d = feats[4]
        for i in range(4, 0, -1):
            # The link: add the input of encoder block i. The authors' Torch code follows the sum with a ReLU; both
            # terms are ReLU outputs (>= 0), so it would be the identity and is left out, as in their PyTorch port.
            d = self.blocks[i - 1](d) + feats[i - 1] if self.skip else self.blocks[i - 1](d)
            out[f"d{i}"] = d
        out["final"] = self.final(d)
        return out

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(self.forward_features(feats)["final"])


@register_model(
    "linknet",
    paper='Chaurasia & Culurciello, "LinkNet: Exploiting Encoder Representations for Efficient Semantic '
    'Segmentation", VCIP 2017',
    url="https://arxiv.org/abs/1707.03718",
    chapter="08_survey_encoder_decoder",
    pretrained_backbone=True,
    backbones=LINKNET_BACKBONES,
    quick=Recipe(6, 1e-3, "adamw", model_kwargs={"backbone": "resnet18"}, crop=(96, 128), batch_size=4,
                 note="ch. 08 QUICK: the paper's own ResNet-18 LinkNet (11.5 M parameters, cheap at 96x128)"),
    full=(
        Recipe(80, 5e-4, "adamw", class_weights="enet", pretrained_backbone=True, row="linknet",
               note="paper: RMSprop lr 5e-4, class-weighted CE (ENet's weights), CamVid 768x512; ours: AdamW lr "
                    "5e-4 (the adaptive optimizer we have closest to RMSprop), ENet's 1/ln(1.02 + p) weights, poly "
                    "decay, 360x480 crops, batch 8 like every FULL row; ResNet-18"),
    ),
    compare=True,
)  # fmt: skip
def linknet(
    num_classes: int,
    *,
    backbone: str = "resnet18",
    pretrained_backbone: bool = False,
    final_channels: int = 32,
    skip: bool = True,
) -> SegmentationModel:
    """LinkNet (arXiv:1707.03718) on ResNet-18: 11.5 M parameters, the paper's count.

    Inputs are padded to a multiple of 32 (the encoder's stride; the additions need equal sizes) and the logits
    cropped back, so any input size works. tests/test_linknet.py pins the parameter count and compares it with
    ``smp.Linknet``, whose decoder differs (4x4 up-convolutions with bias; a fifth decoder block to full
    resolution instead of the paper's final block). Where we differ from the paper's text: decoder block 1's
    full-conv has stride 1, as in the authors' code (github.com/e-lab/LinkNet, models/model.lua), because ResNet's
    layer1 keeps the size, so the stem output it is added to is at H/4 too; the convolutions followed by a
    BatchNorm have no bias (the authors' keep theirs: 1,056 parameters more). ``skip=False`` drops the links (each
    decoder block sees only the block below it), the ablation of the authors' ``models/nobypass.py``.
    """
    body = LinkNetEncoder(backbone, pretrained=pretrained_backbone)
    head = LinkNetHead(body.channels, num_classes, final_channels=final_channels, skip=skip)
    return SegmentationModel(body, head, size_divisor=32)
