"""G-FRNet: a VGG16 encoder, a coarse prediction, and gate units that filter each skip before it refines the labels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision
from torch import Tensor, nn

from .backbones import VGGBackbone
from .blocks import ConvBNReLU
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel, pad_to_multiple, resize_to

GFRNET_PAPER = 'Islam, Rochan, Bruce, Wang, "Gated Feedback Refinement Network for Dense Image Labeling", CVPR 2017'
GFRNET_URL = (
    "https://openaccess.thecvf.com/content_cvpr_2017/papers/Islam_Gated_Feedback_Refinement_CVPR_2017_paper.pdf"
)
# The released Caffe model (github.com/mrochan/gfrnet, models/camvid/train_camvid_gate.prototxt, "the prototxt"
# below) settles the details the paper leaves open.


def vgg16_features(width: int = 64, batch_norm: bool = False) -> nn.Sequential:
    """torchvision's VGG16(-BN) ``features`` (same layer indices, hence state-dict keys) with every width scaled by
    ``width / 64``: stages of 2, 2, 3, 3, 3 convs with ``width * (1, 2, 4, 8, 8)`` channels, each ending in a 2x2
    max-pool; initialised as torchvision's ``VGG`` (He normal, fan-out). For a from-scratch, narrower encoder."""
    cfg: list[int | str] = []
    for convs, mult in zip((2, 2, 3, 3, 3), (1, 2, 4, 8, 8), strict=True):
        cfg += [width * mult] * convs + ["M"]
    features = torchvision.models.vgg.make_layers(cfg, batch_norm=batch_norm)
    for m in features.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return features


class GFRNetEncoder(nn.Module):
    """VGG16's 13 convolutions returning what G-FRNet's gates read: the last conv of each stage *before* its pool
    (``f1`` = conv1_2 ... ``f5`` = conv5_3, after ReLU) and ``f6`` = pool5.

    ``width=64`` is torchvision's VGG16 / VGG16-BN (ImageNet weights with ``pretrained``); another width builds the
    same layout narrower, from scratch. Dropout(``dropout``) after pool3, pool4 and pool5, as the released model's
    ``encdrop3..5``. Shapes: (N, 3, H, W) -> [(N, w, H, W), (N, 2w, H/2, W/2), (N, 4w, H/4, W/4), (N, 8w, H/8, W/8),
    (N, 8w, H/16, W/16), (N, 8w, H/32, W/32)] with w = ``width``; ``channels`` lists the six widths.
    """

    def __init__(self, name: str = "vgg16", pretrained: bool = False, width: int = 64, dropout: float = 0.5) -> None:
        super().__init__()
        if width == 64:
            self.features = VGGBackbone(name, pretrained=pretrained, keep_classifier=False).features
        elif pretrained:
            raise ValueError(
                f"ImageNet weights exist only for the full VGG16 (width=64), got width={width}: pass "
                "pretrained_backbone=False (SEGLEARN_PRETRAINED=0) or width=64"
            )
        elif width < 1:
            raise ValueError(f"width must be a positive number of first-stage channels, got {width}")
        else:
            self.features = vgg16_features(width, batch_norm=name.endswith("_bn"))
        self.name = name
        self.channels = [width, 2 * width, 4 * width, 8 * width, 8 * width, 8 * width]
        self.reductions = [1, 2, 4, 8, 16, 32]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                feats.append(x)  # the stage's last conv (ReLU'd) before it is pooled
                x = layer(x)
                if len(feats) >= 3:
                    x = self.dropout(x)
            else:
                x = layer(x)
        return [*feats, x]


class GateUnit(nn.Module):
    """Gate unit, §3.2 / Fig. 3: ``M = up2(T(f_deep)) * T'(f_shallow)``, an element-wise product.

    ``T``: 3x3 conv-BN-ReLU taking the deeper, coarser, more discriminative feature to the shallower one's width;
    ``T'``: 3x3 conv-BN-ReLU on the shallower feature; bilinear 2x upsampling of the deep side. The product lets the
    deep feature switch off skip activations it finds ambiguous before they reach the decoder. ``gated=False``
    (an ablation, close to the authors' earlier LRN) drops ``T`` and passes ``T'(f_shallow)`` on ungated.
    Shapes: ``deep`` (N, C_deep, h, w), ``shallow`` (N, C, 2h, 2w) -> (N, C, 2h, 2w).
    """

    def __init__(self, deep_channels: int, shallow_channels: int, gated: bool = True) -> None:
        super().__init__()
        self.deep = ConvBNReLU(deep_channels, shallow_channels) if gated else None
        self.shallow = ConvBNReLU(shallow_channels, shallow_channels)

    def forward(self, deep: Tensor, shallow: Tensor) -> Tensor:
        if self.deep is None:
            return self.shallow(shallow)
        return resize_to(self.deep(deep), shallow.shape[-2:]) * self.shallow(shallow)


class GatedRefinementUnit(nn.Module):
    """Gated refinement unit (RU), §3.3 / Fig. 4: the gate map reduced to C channels (3x3 conv + BN: ``m``),
    concatenated with the upsampled coarser label map ``R`` (C channels), a 3x3 conv -> the refined label map.

    Reducing the gate to C first keeps the cost low and stops a wide feature map from swamping the C-channel
    prediction in the concatenation (the paper's two reasons). Shapes: ``gate`` (N, C_g, 2h, 2w), ``coarse``
    (N, num_classes, h, w) -> (N, num_classes, 2h, 2w).
    """

    def __init__(self, gate_channels: int, num_classes: int) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(gate_channels, num_classes, relu=False)
        self.refine = nn.Conv2d(2 * num_classes, num_classes, 3, padding=1)

    def forward(self, gate: Tensor, coarse: Tensor) -> Tensor:
        m = self.reduce(gate)
        return self.refine(torch.cat([m, resize_to(coarse, m.shape[-2:])], dim=1))


class GFRNetHead(nn.Module):
    """G-FRNet's decoder, Fig. 2: ``conv6``/``conv7`` (3x3 conv-BN-ReLU, ``extra_channels`` = 1024, Dropout 0.5
    each, as the released model) on pool5 and a 3x3 conv giving the coarse label map P_G at 1/32; then five
    (:class:`GateUnit`, :class:`GatedRefinementUnit`) pairs: gate ``k`` multiplies f_{6-k} (upsampled) into f_{5-k}
    and RU ``k`` refines the previous prediction with it, 1/16 -> 1/8 -> 1/4 -> 1/2 -> 1/1.

    Shapes: ``feats`` (the six :class:`GFRNetEncoder` outputs, H and W multiples of 32) ->
    ``{"out": (N, C, H, W), "side": [P_G (N, C, H/32, W/32), ..., (N, C, H/2, W/2)]}``: every stage predicts, and the
    paper supervises each (the sum of their cross-entropies). :meth:`forward_features` also returns the gate maps.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        extra_channels: int = 1024,
        dropout: float = 0.5,
        gated: bool = True,
    ) -> None:
        super().__init__()
        c = list(in_channels)
        if len(c) != 6:
            raise ValueError(f"GFRNetHead takes the six encoder features f1..f6, got in_channels={c}")
        self.conv6 = ConvBNReLU(c[5], extra_channels)
        self.conv7 = ConvBNReLU(extra_channels, extra_channels)
        self.dropout = nn.Dropout(dropout)
        self.coarse = nn.Conv2d(extra_channels, num_classes, 3, padding=1)
        # Coarse to fine: gate k pairs f_{6-k} (deep) with f_{5-k} (shallow), i.e. encoder indices 5-k and 4-k.
        self.gates = nn.ModuleList(GateUnit(c[i + 1], c[i], gated) for i in reversed(range(5)))
        self.refine = nn.ModuleList(GatedRefinementUnit(c[i], num_classes) for i in reversed(range(5)))

    def forward_features(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        """``gates``: the five gate maps M, coarse to fine (N, C_i, H/16 ... H/1, ...); ``preds``: the six label
        maps P_G (H/32) ... the final one (H/1), each at its own resolution (logits, N x num_classes)."""
        if len(feats) != 6:
            raise ValueError(f"GFRNetHead takes the six encoder features f1..f6, got {len(feats)}")
        x = self.dropout(self.conv7(self.dropout(self.conv6(feats[5]))))
        preds, gates = [self.coarse(x)], []
        for k, (gate, refine) in enumerate(zip(self.gates, self.refine, strict=True)):
            gates.append(gate(feats[5 - k], feats[4 - k]))
            preds.append(refine(gates[-1], preds[-1]))
        return {"gates": gates, "preds": preds}

    def forward(self, feats: list[Tensor]) -> dict[str, Tensor | list[Tensor]]:
        preds = self.forward_features(feats)["preds"]
        return {"out": preds[-1], "side": preds[:-1]}


class GFRNet(SegmentationModel):
    """:class:`SegmentationModel` whose ``"side"`` predictions come back at the input size as well as ``"out"``.

    Shapes: (N, 3, H, W) -> ``{"out": (N, C, H, W), "side": [5 x (N, C, H, W)]}`` (``side`` coarse to fine: P_G, then
    the refinements at 1/16 ... 1/2), so a deep-supervision loss is ``CE(out) + sum(CE(s) for s in side)`` against the
    full-size labels, as the released model (it upsamples each prediction to the label size). Upsampled and cropped
    as ``"out"`` rather than left at 1/32 ... 1/2: a stage map of the padded input covers the padding too (CamVid's
    360 rows pad to 384), so labels shrunk to its size would sit up to a cell off. :meth:`forward_features` gives
    the maps at their own resolutions.
    """

    def forward(self, x: Tensor) -> dict[str, Tensor | list[Tensor]]:
        h, w = x.shape[-2:]
        xp = pad_to_multiple(x, self.size_divisor)
        out = self.head(self.backbone(xp))
        size = xp.shape[-2:]
        side = [self._to_input(s, size, (h, w)) for s in out["side"]]
        return {"out": self._to_input(out["out"], size, (h, w)), "side": side}

    def forward_features(self, x: Tensor) -> dict[str, list[Tensor]]:
        """The gate maps and per-stage label maps of images ``x`` (see :meth:`GFRNetHead.forward_features`), at the
        resolutions of the input padded to a multiple of 32 (crop ``[..., :ceil(H / s), :ceil(W / s)]`` at stride s).
        """
        return self.head.forward_features(self.backbone(pad_to_multiple(x, self.size_divisor)))


@register_model(
    "gfrnet",
    paper=GFRNET_PAPER,
    url=GFRNET_URL,
    chapter="09_survey_context",
    pretrained_backbone=True,
    backbones=("vgg16", "vgg16_bn"),
    quick=Recipe(5, 1e-3, "adamw", model_kwargs={"backbone": "vgg16_bn", "width": 16, "dropout": 0.1},
                 crop=(96, 128), batch_size=4,
                 note="ch. 09 QUICK: VGG16-BN layout at 1/4 width (16..128 channels, conv6/7 256) from scratch, "
                      "BatchNorm after every encoder conv (as the released model), dropout 0.1 (paper 0.5)"),
    full=(
        Recipe(80, 1e-2, weight_decay=5e-4, model_kwargs={"backbone": "vgg16_bn"}, pretrained_backbone=True,
               row="gfrnet",
               note="paper (released CamVid solver): VGG16 with BN after every conv, SGD momentum 0.9, lr 1e-3 "
                    "x0.1 every 50k of 150k iterations at batch 6, wd 5e-4, 360x480 frames, the six stage CEs "
                    "summed; ours: lr 1e-2 with the poly schedule for a ~40x shorter run (80 epochs, batch 8), "
                    "the paper's gate layout (the prototxt projects every skip to C channels first)"),
    ),
    compare=True,
)  # fmt: skip
def gfrnet(
    num_classes: int,
    *,
    backbone: str = "vgg16",
    pretrained_backbone: bool = False,
    width: int = 64,
    dropout: float = 0.5,
    gated: bool = True,
) -> GFRNet:
    """G-FRNet (CVPR 2017) with the paper's gate units on VGG16: see :class:`GFRNetHead`.

    ``backbone``: ``vgg16`` (the paper's VGG-16) or ``vgg16_bn`` (the released Caffe model normalises every encoder
    conv). ``width``: first-stage channels (64 = VGG16; the conv6/conv7 width is 16x it). The output dict carries
    ``"side"`` (the five coarser predictions, at the input size) for the paper's stage-wise loss. ``gated=False``
    removes the gates' deep branch (ablation: skips pass ungated). Any input size works (padded to a multiple of 32
    and cropped back).

    Details the paper leaves open (or that we recall uncertainly), settled by the released prototxt: the first
    gate's deep input is pool5; conv6/conv7 are 1024-channel 3x3 convs with BN, ReLU and Dropout(0.5); Dropout(0.5)
    also follows pool3..pool5; upsampling is bilinear; every prediction is upsampled to the label size for its loss
    (the paper's text resizes the labels instead). Uncertain: the RU's gate reduction is taken as conv + BN without
    ReLU (our reading of Fig. 4; the prototxt's projections have no ReLU either). The prototxt's own gates are
    slimmer than the paper's: it projects each skip straight to C channels (3x3 conv + BN, no ReLU), multiplies
    those C-channel maps (reusing each projection as the next gate's deep side) and batch-normalises the product.
    With 11 classes it has 29,194,090 parameters; this model 40,898,234 (VGG16) or 40,906,682 (VGG16-BN), pinned
    in tests/test_gfrnet.py. Convolutions followed by BN have no bias here (Caffe's have one).
    """
    body = GFRNetEncoder(backbone, pretrained=pretrained_backbone, width=width, dropout=dropout)
    head = GFRNetHead(body.channels, num_classes, extra_channels=16 * width, dropout=dropout, gated=gated)
    return GFRNet(body, head, size_divisor=32)
