"""FC-DenseNet ("Tiramisu"): DenseNet blocks on a U-shaped path; only each block's new feature maps are upsampled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel

FCDENSENET_PAPER = (
    'Jégou, Drozdzal, Vazquez, Romero, Bengio, "The One Hundred Layers Tiramisu: Fully Convolutional DenseNets for '
    'Semantic Segmentation", CVPR Workshops 2017'
)
FCDENSENET_URL = "https://arxiv.org/abs/1611.09326"


class FCDenseNetConfig(NamedTuple):
    """Layers per dense block (down path, bottleneck, up path: 2L + 1 numbers) and the growth rate k."""

    layers: tuple[int, ...]
    growth_rate: int


# The paper's three networks (§4.1, Table 2): five down blocks, the bottleneck, five up blocks mirroring the down path.
FCDENSENET_CONFIGS: dict[str, FCDenseNetConfig] = {
    "fcdensenet56": FCDenseNetConfig((4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4), 12),
    "fcdensenet67": FCDenseNetConfig((5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5), 16),
    "fcdensenet103": FCDenseNetConfig((4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4), 16),
}


class DenseLayer(nn.Sequential):
    """One layer of a dense block (paper Table 1): BN -> ReLU -> 3x3 conv to ``growth_rate`` maps -> Dropout.

    Shapes: (N, in_channels, h, w) -> (N, growth_rate, h, w): the *new* maps only; the block concatenates them.
    Children ``0`` BN, ``1`` ReLU, ``2`` conv, ``3`` dropout (an identity at ``dropout=0``).
    """

    def __init__(self, in_channels: int, growth_rate: int, dropout: float = 0.2) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            # a bias, as the authors' Lasagne layers have (BN comes before the conv, so it is not redundant)
            nn.Conv2d(in_channels, growth_rate, 3, padding=1),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        )


class DenseBlock(nn.Module):
    """A dense block (paper §3.1, Fig. 2): each layer sees the concatenation of the block's input and all earlier
    layers' outputs, and adds ``growth_rate`` maps to that stack.

    ``keep_input=True`` (the down path and the last up block) returns the whole stack, input included:
    (N, in_channels, h, w) -> (N, in_channels + num_layers * growth_rate, h, w). ``keep_input=False`` (the
    bottleneck and the other up blocks) returns only the new maps, (N, num_layers * growth_rate, h, w): the paper
    upsamples only those, so that the number of feature maps does not explode on the way up (§3.2).

    For figures: ``in_channels``, ``num_layers``, ``growth_rate``, ``stack_channels`` (input + new, the paper's m
    after the block) and ``out_channels`` (what ``forward`` returns).
    """

    def __init__(
        self, in_channels: int, num_layers: int, growth_rate: int, dropout: float = 0.2, keep_input: bool = True
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_layers = num_layers
        self.growth_rate = growth_rate
        self.keep_input = keep_input
        self.stack_channels = in_channels + num_layers * growth_rate
        self.out_channels = self.stack_channels if keep_input else num_layers * growth_rate
        self.layers = nn.ModuleList(
            DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        stack, new = x, []
        for layer in self.layers:
            out = layer(stack)
            new.append(out)
            stack = torch.cat([stack, out], dim=1)
        return stack if self.keep_input else torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    """Transition Down (paper Table 1): BN -> ReLU -> 1x1 conv (channels kept) -> Dropout -> 2x2 max-pool.

    Shapes: (N, C, h, w) -> (N, C, h/2, w/2).
    """

    def __init__(self, channels: int, dropout: float = 0.2) -> None:
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.MaxPool2d(2),
        )


class TransitionUp(nn.Module):
    """Transition Up (paper Table 1): a 3x3 transposed convolution with stride 2 on the previous block's new maps,
    then concatenation with the skip connection of the same resolution.

    The authors' Lasagne code crops nothing in the deconvolution (output 2h + 1) and then center-crops both inputs
    to the smaller size, i.e. keeps rows/columns ``[0, 2h)``: done here with ``padding=0`` and the same crop.
    Shapes: ``x`` (N, C, h, w), ``skip`` (N, S, 2h, 2w) -> (N, C + S, 2h, 2w) (upsampled maps first).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        up = self.conv(x)[..., : skip.shape[-2], : skip.shape[-1]]
        return torch.cat([up, skip], dim=1)


class FCDenseNetEncoder(nn.Module):
    """The down path and the bottleneck: 3x3 conv to ``stem_channels``, then (dense block, Transition Down) per
    level, then the bottleneck dense block (new maps only).

    Shapes: (N, 3, H, W), H and W multiples of 2**levels -> ``[skip_1 (N, s_1, H, W), ..., skip_L
    (N, s_L, H/2**(L-1), W/2**(L-1)), bottleneck (N, b, H/2**L, W/2**L)]``, with ``channels == [s_1, ..., s_L, b]``
    (FC-DenseNet103: 112, 192, 304, 464, 656 and 240). Hook ``blocks[i]`` (each down dense block, output = skip i)
    and ``bottleneck``.
    """

    def __init__(
        self, layers: Sequence[int], growth_rate: int, stem_channels: int = 48, dropout: float = 0.2,
        in_channels: int = 3,
    ) -> None:  # fmt: skip
        super().__init__()
        self.stem = nn.Conv2d(in_channels, stem_channels, 3, padding=1)
        blocks, transitions, channels = [], [], stem_channels
        for n in layers[:-1]:
            block = DenseBlock(channels, n, growth_rate, dropout, keep_input=True)
            channels = block.out_channels
            blocks.append(block)
            transitions.append(TransitionDown(channels, dropout))
        self.blocks = nn.ModuleList(blocks)
        self.transitions = nn.ModuleList(transitions)
        self.bottleneck = DenseBlock(channels, layers[-1], growth_rate, dropout, keep_input=False)
        self.channels = [b.out_channels for b in blocks] + [self.bottleneck.out_channels]

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        skips = []
        for block, down in zip(self.blocks, self.transitions, strict=True):
            x = block(x)
            skips.append(x)
            x = down(x)
        return [*skips, self.bottleneck(x)]


class FCDenseNetDecoder(nn.Module):
    """The up path: per level a :class:`TransitionUp` (upsample the previous block's new maps, concatenate the
    skip) and a dense block; the last block keeps its whole stack, which a 1x1 conv maps to ``num_classes``.

    Shapes: the encoder's list -> (N, num_classes, H, W). :meth:`forward_features` returns each up block's output
    (``up1`` coarsest .. ``upL`` at full resolution). ``blocks[i].stack_channels`` is the paper's m after up block
    i (FC-DenseNet103: 1088, 816, 576, 384, 256).
    """

    def __init__(
        self, skip_channels: Sequence[int], layers: Sequence[int], growth_rate: int, num_classes: int,
        dropout: float = 0.2, bottleneck_channels: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        if len(skip_channels) != len(layers):
            raise ValueError(f"FC-DenseNet needs one up block per skip, got {len(skip_channels)} and {len(layers)}")
        transitions, blocks, new = [], [], bottleneck_channels
        for i, (skip, n) in enumerate(zip(reversed(skip_channels), layers, strict=True)):
            transitions.append(TransitionUp(new))
            block = DenseBlock(new + skip, n, growth_rate, dropout, keep_input=i == len(layers) - 1)
            blocks.append(block)
            new = block.out_channels
        self.transitions = nn.ModuleList(transitions)
        self.blocks = nn.ModuleList(blocks)
        self.classifier = nn.Conv2d(new, num_classes, 1)

    def forward_features(self, feats: list[Tensor]) -> dict[str, Tensor]:
        """Each up block's output: ``up1`` .. ``upL`` (new maps only, except ``upL``: its whole stack)."""
        if len(feats) != len(self.blocks) + 1:
            raise ValueError(f"FCDenseNetDecoder was built for {len(self.blocks)} skips, got {len(feats) - 1}")
        *skips, x = feats
        out = {}
        for i, (up, block, skip) in enumerate(zip(self.transitions, self.blocks, reversed(skips), strict=True)):
            x = block(up(x, skip))
            out[f"up{i + 1}"] = x
        return out

    def forward(self, feats: list[Tensor]) -> Tensor:
        return self.classifier(self.forward_features(feats)[f"up{len(self.blocks)}"])


def _init_he_uniform(model: nn.Module) -> None:
    """The paper's initialisation (§4.1, HeUniform; the authors' Lasagne ``HeUniform(gain='relu')``, zero biases):
    uniform in +-sqrt(6 / fan_in), as ``kaiming_uniform_`` with the ReLU gain."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def build_fcdensenet(
    num_classes: int, layers: Sequence[int], growth_rate: int, dropout: float = 0.2, stem_channels: int = 48
) -> SegmentationModel:
    """FC-DenseNet with ``layers`` = layers per dense block (down path, bottleneck, up path: 2L + 1 numbers).

    Any input size: inputs are padded to a multiple of 2**L (32 for the paper's five poolings) and the logits
    cropped back. ``model.backbone`` is the down path (:class:`FCDenseNetEncoder`), ``model.head`` the up path
    (:class:`FCDenseNetDecoder`).
    """
    layers = tuple(int(n) for n in layers)
    if len(layers) % 2 == 0 or len(layers) < 3 or min(layers) < 1:
        raise ValueError(
            f"FC-DenseNet layers takes 2L + 1 positive block sizes (L down blocks, the bottleneck, L up blocks), "
            f"got {list(layers)}"
        )
    if growth_rate < 1 or stem_channels < 1 or not 0.0 <= dropout < 1.0:
        raise ValueError(
            f"FC-DenseNet needs growth_rate >= 1, stem_channels >= 1 and 0 <= dropout < 1, got growth_rate="
            f"{growth_rate}, stem_channels={stem_channels}, dropout={dropout}"
        )
    levels = len(layers) // 2
    body = FCDenseNetEncoder(layers[: levels + 1], growth_rate, stem_channels, dropout)
    head = FCDenseNetDecoder(
        body.channels[:-1], layers[levels + 1 :], growth_rate, num_classes, dropout, body.channels[-1]
    )
    model = SegmentationModel(body, head, size_divisor=2**levels)
    _init_he_uniform(model)
    return model


def _layers(name: str, layers: Sequence[int] | None) -> Sequence[int]:
    return FCDENSENET_CONFIGS[name].layers if layers is None else layers


# QUICK: a CPU trains a dense net slowly for its FLOPs (many thin convs over wide full-resolution stacks), so the
# small variants cut the full-resolution blocks to 2-3 layers and the first conv to 16 maps; growth rate 8 alone
# (the paper's block sizes) would cost 5x a UNet-16 step at 96x128.
_QUICK_103 = {"growth_rate": 8, "stem_channels": 16, "layers": (2, 2, 4, 6, 8, 10, 8, 6, 4, 2, 2)}
_FULL_NOTE = (
    "paper: RMSprop lr 1e-3 decayed x0.995 per epoch, wd 1e-4, 224x224 crops (batch 3) then a fine-tune on full "
    "360x480 frames (batch 1), up to 750 epochs with early stopping, no class weights; ours: AdamW lr 1e-3 with the "
    "poly schedule, wd 1e-4, no class weights, trained directly on 360x480 frames at batch 8, the FULL table's "
    "common crop and batch (the paper's last phase is at this size; one recipe has one phase), 150 epochs"
)


@register_model(
    "fcdensenet56",
    paper=FCDENSENET_PAPER,
    url=FCDENSENET_URL,
    chapter="08_survey_encoder_decoder",
    quick=Recipe(8, 1e-3, "adamw", model_kwargs={"growth_rate": 8, "stem_channels": 16, "layers": (2,) * 11},
                 crop=(96, 128), batch_size=4, note="ch. 08 QUICK, 2 layers per block, growth rate 8, 16 stem maps"),
)  # fmt: skip
def fcdensenet56(
    num_classes: int, *, growth_rate: int = 12, dropout: float = 0.2, stem_channels: int = 48,
    layers: tuple[int, ...] | None = None,
) -> SegmentationModel:  # fmt: skip
    """FC-DenseNet56 (arXiv:1611.09326): 4 layers in each of the 11 dense blocks, growth rate 12; 1.38 M parameters
    (the paper's Table 2 says 1.5 M, which these blocks cannot give: see tests/test_fcdensenet.py).

    ``layers`` (2L + 1 block sizes) replaces the paper's block sizes, e.g. ``(2, 2, 2, 2, 2)`` for two poolings.
    """
    return build_fcdensenet(num_classes, _layers("fcdensenet56", layers), growth_rate, dropout, stem_channels)


@register_model(
    "fcdensenet67",
    paper=FCDENSENET_PAPER,
    url=FCDENSENET_URL,
    chapter="08_survey_encoder_decoder",
    quick=Recipe(8, 1e-3, "adamw", model_kwargs={"growth_rate": 8, "stem_channels": 16, "layers": (3,) * 11},
                 crop=(96, 128), batch_size=4, note="ch. 08 QUICK, 3 layers per block, growth rate 8, 16 stem maps"),
)  # fmt: skip
def fcdensenet67(
    num_classes: int, *, growth_rate: int = 16, dropout: float = 0.2, stem_channels: int = 48,
    layers: tuple[int, ...] | None = None,
) -> SegmentationModel:  # fmt: skip
    """FC-DenseNet67 (arXiv:1611.09326): 5 layers in each of the 11 dense blocks, growth rate 16, 3.5 M parameters.

    The defaults are ``FCDENSENET_CONFIGS["fcdensenet67"]``; ``layers`` replaces the block sizes.
    """
    return build_fcdensenet(num_classes, _layers("fcdensenet67", layers), growth_rate, dropout, stem_channels)


@register_model(
    "fcdensenet103",
    paper=FCDENSENET_PAPER,
    url=FCDENSENET_URL,
    chapter="08_survey_encoder_decoder",
    quick=Recipe(5, 1e-3, "adamw", model_kwargs=_QUICK_103, crop=(96, 128), batch_size=4,
                 note="ch. 08 QUICK, blocks 2-2-4-6-8-10-8-6-4-2-2, growth rate 8, 16 stem maps"),
    full=(Recipe(150, 1e-3, "adamw", weight_decay=1e-4, row="fcdensenet103", note=_FULL_NOTE),),
    compare=True,
)  # fmt: skip
def fcdensenet103(
    num_classes: int, *, growth_rate: int = 16, dropout: float = 0.2, stem_channels: int = 48,
    layers: tuple[int, ...] | None = None,
) -> SegmentationModel:  # fmt: skip
    """FC-DenseNet103 (arXiv:1611.09326): blocks of 4, 5, 7, 10, 12 layers down, 15 in the bottleneck, 12, 10, 7, 5,
    4 up, growth rate 16, 9.4 M parameters; 66.9 mIoU on the CamVid test split in the paper (from scratch)."""
    return build_fcdensenet(num_classes, _layers("fcdensenet103", layers), growth_rate, dropout, stem_channels)
