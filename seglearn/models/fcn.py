"""FCN: ``fcn32s``/``fcn16s``/``fcn8s`` on VGG16 as the paper, and ``fcn`` (ResNet, dilated) as torchvision's.

The VGG FCNs follow the paper's Caffe nets (``voc-fcn{32,16,8}s``): conv1_1 pads by 100 and pools round up, so
the score map covers any input; transposed convolutions start as bilinear upsampling; skips are cropped at the
offsets 5 (pool4) and 9 (pool3) and the output at 19 (32s), 27 (16s) or 31 (8s), which puts every score back on
the input pixel it was computed for.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import RESNET_BACKBONES, ResNetBackbone, VGGBackbone
from .blocks import FCNHead, LastFeature
from .registry import Recipe, create_model, register_model
from .segmentation_model import SegmentationModel, accept_legacy_keys

# Crop offsets of the Caffe reference nets (github.com/shelhamer/fcn.berkeleyvision.org, net.py of each model).
OFFSETS = {"pool4": 5, "pool3": 9, 32: 19, 16: 27, 8: 31}


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights (C, C, k, k) making ``ConvTranspose2d(C, C, k, stride=k // 2)`` a per-channel bilinear upsampling."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt1d = 1 - (og - center).abs() / factor
    weight = torch.zeros(channels, channels, kernel_size, kernel_size, dtype=torch.float64)
    weight[range(channels), range(channels)] = torch.outer(filt1d, filt1d)
    return weight.float()


def bilinear_upsampler(channels: int, factor: int, trainable: bool = True) -> nn.ConvTranspose2d:
    """``ConvTranspose2d`` (kernel 2*factor, stride factor, no bias) initialised to bilinear interpolation."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    up.weight.requires_grad_(trainable)
    return up


def fc_to_conv(fc: nn.Linear, in_channels: int, kernel_size: int) -> nn.Conv2d:
    """A ``Linear`` over a flattened (in_channels, k, k) input as the equal ``k x k`` convolution (same weights)."""
    if fc.in_features != in_channels * kernel_size * kernel_size:
        raise ValueError(f"Linear has {fc.in_features} inputs, not {in_channels} x {kernel_size} x {kernel_size}")
    # Built on "meta" and then allocated: fc6 has 103 M weights, a random init only to be overwritten costs seconds.
    conv = nn.Conv2d(in_channels, fc.out_features, kernel_size, device="meta").to_empty(device=fc.weight.device)
    with torch.no_grad():
        conv.weight.copy_(fc.weight.view(fc.out_features, in_channels, kernel_size, kernel_size))
        conv.bias.copy_(fc.bias)
    return conv


FCN_PAPER = 'Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015'
FCN_URL = "https://arxiv.org/abs/1411.4038"


def _crop(x: Tensor, offset: int, size: tuple[int, int]) -> Tensor:
    return x[..., offset : offset + size[0], offset : offset + size[1]]


def caffe_vgg(backbone: VGGBackbone) -> VGGBackbone:
    """Rewrite a :class:`VGGBackbone` in place as the Caffe FCNs' VGG16: conv1_1 pads by 100, pools round up.

    The padding lets fc6 (7x7, no padding) see even small inputs; the score map then covers any input size.
    """
    features = backbone.features
    features[0].padding = (100, 100)
    for m in features:
        if isinstance(m, nn.MaxPool2d):
            m.ceil_mode = True
    return backbone


class FCNVGGHead(nn.Module):
    """FCN-32s, FCN-16s and FCN-8s's head on VGG16's five pooling stages.

    Long, Shelhamer, Darrell, "Fully Convolutional Networks for Semantic Segmentation", CVPR 2015,
    https://arxiv.org/abs/1411.4038

    fc6/fc7 (``fc``) are VGG16's classifier reshaped into a 7x7 and a 1x1 convolution (4096 channels; fresh
    convolutions when no ``classifier`` is given). Class scores of fc7 (stride 32) are upsampled 2x and summed with
    scores of pool4 (16s), again with pool3 (8s), then upsampled ``stride`` times. Skip scores start at zero so
    training starts from the coarser net; the final upsampling stays fixed to bilinear, the 2x ones are learned
    (paper §4.2, §4.3). ``at_once=True`` scales pool4 by 0.01 and pool3 by 1e-4 before scoring, as the all-at-once
    net ``voc-fcn8s-atonce``. The model crops the result at ``OFFSETS[stride]`` (``SegmentationModel(crop_offset=)``).

    Shapes: ``feats`` [pool1 .. pool5] of the padded VGG -> score_fr (N, C, ceil((H + 198) / 32) - 6, ...) ->
    (N, C, H', W') with H' >= H + OFFSETS[stride].
    """

    def __init__(
        self, num_classes: int, stride: int = 8, classifier: nn.Sequential | None = None, at_once: bool = False
    ) -> None:
        super().__init__()
        if stride not in (32, 16, 8):
            raise ValueError(f"FCN output stride must be 32, 16 or 8, got {stride}")
        self.stride, self.at_once = stride, at_once
        fc6, fc7 = (
            (fc_to_conv(classifier[0], 512, 7), fc_to_conv(classifier[3], 4096, 1))
            if classifier is not None
            else (nn.Conv2d(512, 4096, 7), nn.Conv2d(4096, 4096, 1))
        )
        self.fc = nn.Sequential(
            fc6, nn.ReLU(inplace=True), nn.Dropout(0.5), fc7, nn.ReLU(inplace=True), nn.Dropout(0.5)
        )
        self.score_fr = _zero_score(4096, num_classes)
        if stride <= 16:
            self.score_pool4 = _zero_score(512, num_classes)
            self.upscore2 = bilinear_upsampler(num_classes, 2)
        if stride == 8:
            self.score_pool3 = _zero_score(256, num_classes)
            self.upscore_pool4 = bilinear_upsampler(num_classes, 2)
        self.upscore = bilinear_upsampler(num_classes, stride, trainable=False)

    def forward(self, feats: list[Tensor]) -> Tensor:
        *_, (_, score) = self._fuse(feats)
        return self.upscore(score)  # cropped at OFFSETS[stride] by the model: each score back on its pixel

    def _fuse(self, feats: list[Tensor]) -> Iterator[tuple[int, Tensor]]:
        """The score map at stride 32, then with pool4's scores added (16), then pool3's (8), as far as built."""
        _, _, pool3, pool4, pool5 = feats
        score = self.score_fr(self.fc(pool5))  # (N, C, h5 - 6, w5 - 6), stride 32
        yield 32, score
        if self.stride <= 16:
            score = self.upscore2(score)  # stride 16
            pool4 = pool4 * 0.01 if self.at_once else pool4
            score = score + _crop(self.score_pool4(pool4), OFFSETS["pool4"], score.shape[-2:])
            yield 16, score
        if self.stride == 8:
            score = self.upscore_pool4(score)  # stride 8
            pool3 = pool3 * 1e-4 if self.at_once else pool3
            score = score + _crop(self.score_pool3(pool3), OFFSETS["pool3"], score.shape[-2:])
            yield 8, score

    def stages(self, feats: list[Tensor]) -> dict[int, Tensor]:
        """The score map after each fusion step, upsampled by the fixed bilinear deconvolution (the paper's Fig. 4).

        {32: fc7's scores alone, 16: + pool4 (when built), 8: + pool3 (when built)}, each (N, C, H', W') to be
        cropped at ``OFFSETS[stride]``: the prediction FCN-32s/16s would make with this net's weights.
        """
        return {stride: _fixed_upsample(score, stride) for stride, score in self._fuse(feats)}


def _fixed_upsample(score: Tensor, factor: int) -> Tensor:
    """A score map upsampled ``factor`` times by FCN's fixed bilinear deconvolution (the final upscore)."""
    return F.conv_transpose2d(score, bilinear_kernel(score.shape[1], 2 * factor).to(score), stride=factor)


def fusion_predictions(model: SegmentationModel, images: Tensor) -> dict[int, Tensor]:
    """Logits (N, C, H, W) of an FCN-VGG model at each of its fusion steps, on the input's pixels.

    ``{32: ..., 16: ..., 8: ...}`` (as far as the model's stride goes): stride 32 is fc7's scores alone, 16 adds
    pool4's, 8 adds pool3's: the same net read before each skip is added.
    """
    if not isinstance(model.head, FCNVGGHead):
        raise TypeError(f"fusion_predictions needs an FCN-VGG model (fcn32s/16s/8s), got {type(model.head).__name__}")
    h, w = images.shape[-2:]
    with torch.no_grad():
        stages = model.head.stages(model.backbone(images))
    return {s: t[..., OFFSETS[s] : OFFSETS[s] + h, OFFSETS[s] : OFFSETS[s] + w] for s, t in stages.items()}


def _zero_score(in_channels: int, num_classes: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def vgg_fcn(
    num_classes: int, stride: int, pretrained_backbone: bool = False, at_once: bool = False
) -> SegmentationModel:
    """FCN-``stride``s on VGG16: the Caffe-padded VGG, :class:`FCNVGGHead`, logits cropped at the paper's offset."""
    backbone = caffe_vgg(VGGBackbone("vgg16", pretrained=pretrained_backbone, keep_classifier=True))
    head = FCNVGGHead(num_classes, stride, backbone.classifier, at_once=at_once)
    backbone.classifier = None  # fc6/fc7 now live in the head; fc8 (1000 ImageNet classes) is replaced by score_fr
    model = SegmentationModel(backbone, head, crop_offset=OFFSETS[stride])
    # model files written when FCN-VGG was a module of its own (fc, score_*, upscore* beside backbone) still load
    old = ("fc", "score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore")
    return accept_legacy_keys(model, {name: f"head.{name}" for name in old})


# The paper's nets take only VGG16: backbone="vgg16" may be spelled out; create_model refuses any other.
_VGG_FCN = dict(paper=FCN_PAPER, url=FCN_URL, chapter="01_fcn", pretrained_backbone=True, backbones=("vgg16",))


@register_model("fcn32s", **_VGG_FCN)
def fcn32s(
    num_classes: int, *, backbone: str = "vgg16", pretrained_backbone: bool = False, at_once: bool = False
) -> SegmentationModel:
    """FCN-32s: VGG16 scores upsampled 32x in one step."""
    return vgg_fcn(num_classes, 32, pretrained_backbone, at_once)


@register_model("fcn16s", **_VGG_FCN)
def fcn16s(
    num_classes: int, *, backbone: str = "vgg16", pretrained_backbone: bool = False, at_once: bool = False
) -> SegmentationModel:
    """FCN-16s: FCN-32s plus a pool4 skip."""
    return vgg_fcn(num_classes, 16, pretrained_backbone, at_once)


@register_model(
    "fcn8s",
    **_VGG_FCN,
    quick=Recipe(1, 1e-4, "adamw", weight_decay=5e-4, crop=(96, 128), batch_size=2, note="ch. 01 QUICK"),
    full=(
        Recipe(60, 1e-3, weight_decay=5e-4, pretrained_backbone=True, row="fcn8s",
               note="ch. 01, VGG16, the paper's geometry"),
        Recipe(50, 1e-4, weight_decay=5e-4, dataset="voc", split="trainaug", crop=(320, 320), batch_size=20,
               schedule="fixed", pretrained_backbone=True, row="fcn8s-voc", note="ch. 01 on the paper's dataset"),
    ),
    compare=True,
)
def fcn8s(
    num_classes: int, *, backbone: str = "vgg16", pretrained_backbone: bool = False, at_once: bool = False
) -> SegmentationModel:
    """FCN-8s: FCN-16s plus a pool3 skip (the paper's best)."""
    return vgg_fcn(num_classes, 8, pretrained_backbone, at_once)


@register_model(
    "fcn",
    paper=FCN_PAPER + " (on a dilated ResNet, as torchvision's fcn_resnet50)",
    url=FCN_URL,
    chapter="01_fcn",
    aux_loss=True,
    pretrained_backbone=True,
    backbones=RESNET_BACKBONES,
    quick=Recipe(
        8,
        1e-3,
        "adamw",
        model_kwargs={"backbone": "resnet18"},
        aux_loss=True,
        crop=(96, 128),
        batch_size=4,
        note="no chapter trains it in QUICK mode: ch. 05's DeepLabv3 QUICK recipe, on ResNet-18 with the aux head",
    ),
    full=(
        Recipe(
            50,
            1e-2,
            model_kwargs={"backbone": "resnet50"},
            aux_loss=True,
            pretrained_backbone=True,
            row="fcn-r50",
            note="torchvision's FCN-ResNet50",
        ),
    ),
    compare=True,
)
def fcn(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    output_stride: int = 8,
) -> SegmentationModel:
    """torchvision's FCN: dilated ResNet (output stride 8) + :class:`FCNHead`; aux FCNHead on layer3.

    Shapes: (N, 3, H, W) -> layer4 (N, 2048, H/8, W/8) -> logits bilinearly resized to (N, C, H, W).
    """
    encoder = ResNetBackbone(backbone, pretrained=pretrained_backbone, output_stride=output_stride)
    head = LastFeature(FCNHead(encoder.channels[-1], num_classes))
    aux = FCNHead(encoder.channels[-2], num_classes) if aux_loss else None
    return SegmentationModel(encoder, head, aux_head=aux, aux_index=-2)


def from_torchvision_fcn(tv_model: nn.Module) -> SegmentationModel:
    """The seglearn ``fcn`` equal to torchvision's ``fcn_resnet50``/``fcn_resnet101``, carrying its weights."""
    tv_backbone = tv_model.backbone
    depth = {6: "resnet50", 23: "resnet101"}.get(len(tv_backbone.layer3))
    if depth is None or not hasattr(tv_backbone.layer1[0], "conv3"):
        raise TypeError("from_torchvision_fcn expects torchvision's fcn_resnet50 or fcn_resnet101")
    num_classes = tv_model.classifier[-1].out_channels
    # through create_model, so the twin carries a model_spec and saves/loads like any seglearn model
    model = create_model("fcn", num_classes, backbone=depth, aux_loss=tv_model.aux_classifier is not None)
    stem = {"conv1": "stem.0", "bn1": "stem.1"}
    state = {}
    for key, value in tv_backbone.state_dict().items():
        first, rest = key.split(".", 1)
        state[f"backbone.{stem.get(first, first)}.{rest}"] = value
    for key, value in tv_model.classifier.state_dict().items():
        state[f"head.head.{key}"] = value
    if tv_model.aux_classifier is not None:
        for key, value in tv_model.aux_classifier.state_dict().items():
            state[f"aux_head.{key}"] = value
    model.load_state_dict(state)
    return model.train(tv_model.training)
