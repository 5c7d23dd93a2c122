"""EncNet: a dilated ResNet, the Context Encoding Module and the SE-loss branch (PyTorch-Encoding's EncHead)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import RESNET_BACKBONES, ResNetBackbone
from .blocks import ConvBNReLU, FCNHead
from .encoding import Encoding
from .registry import Recipe, register_model
from .segmentation_model import SegmentationModel


class EncModule(nn.Module):
    """Context Encoding Module from "Context Encoding for Semantic Segmentation" (Zhang et al., 2018,
    https://arxiv.org/abs/1803.08904), §3.2, laid out as PyTorch-Encoding's ``EncModule``.

    1x1 conv (BN, ReLU) -> :class:`Encoding` (K codewords) -> BN1d over the K codewords + ReLU -> mean over the
    codewords = the encoded vector ``e`` (N, D). ``gamma = sigmoid(FC(e))`` rescales the channels; the output is
    ``relu(x + x * gamma)`` as PyTorch-Encoding's ``F.relu_(x + x * y)`` (the paper's Fig. 2 writes ``x * gamma``;
    the residual form keeps the features when gamma is near 0). With ``se_loss`` a second FC maps ``e`` to
    class-presence logits (the Semantic Encoding loss, §3.2).

    Shapes: ``x`` (N, D, h, w) -> ``(features (N, D, h, w), se logits (N, num_classes) or None)``.
    """

    def __init__(self, in_channels: int, num_classes: int, num_codes: int = 32, se_loss: bool = True) -> None:
        super().__init__()
        self.conv = ConvBNReLU(in_channels, in_channels, kernel_size=1)
        self.encoding = Encoding(in_channels, num_codes)
        self.norm = nn.BatchNorm1d(num_codes)  # (N, K, D): K is the channel axis, as PyTorch-Encoding
        self.fc = nn.Linear(in_channels, in_channels)
        self.se = nn.Linear(in_channels, num_classes) if se_loss else None

    def encode(self, x: Tensor) -> Tensor:
        """The encoded context vector: (N, D, h, w) -> (N, D)."""
        e = self.encoding(self.conv(x))  # (N, K, D)
        return F.relu(self.norm(e)).mean(dim=1)

    def assignments(self, x: Tensor) -> Tensor:
        """Soft codeword assignments of the head features: (N, D, h, w) -> (N, h*w, K)."""
        return self.encoding.assignments(self.conv(x))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        e = self.encode(x)
        gamma = torch.sigmoid(self.fc(e))[:, :, None, None]  # (N, D, 1, 1)
        out = F.relu(x + x * gamma)
        return out, (self.se(e) if self.se is not None else None)


class EncHead(nn.Module):
    """EncNet's head (PyTorch-Encoding's ``EncHead`` with ``lateral=False``), arXiv:1803.08904 Fig. 2.

    ``conv5``: 3x3 conv ``in_channels`` -> 512, BN, ReLU; :class:`EncModule`; Dropout(0.1); 1x1 classifier.
    Shapes: ``feats[-1]`` (N, in_channels, H/8, W/8) -> ``{"out": (N, C, H/8, W/8), "se": (N, C)}`` (``"se"`` only
    with ``se_loss``).
    """

    def __init__(
        self, in_channels: int, num_classes: int, channels: int = 512, num_codes: int = 32, se_loss: bool = True
    ) -> None:
        super().__init__()
        self.conv5 = ConvBNReLU(in_channels, channels, kernel_size=3)
        self.encmodule = EncModule(channels, num_classes, num_codes=num_codes, se_loss=se_loss)
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def assignments(self, feats: list[Tensor]) -> Tensor:
        """Codeword assignments of the last backbone stage: (N, HW/64, K) at output stride 8."""
        return self.encmodule.assignments(self.conv5(feats[-1]))

    def forward(self, feats: list[Tensor]) -> dict[str, Tensor]:
        x, se = self.encmodule(self.conv5(feats[-1]))
        result = {"out": self.classifier(self.dropout(x))}
        if se is not None:
            result["se"] = se
        return result


@torch.no_grad()
def codeword_assignments(model: SegmentationModel, images: Tensor) -> Tensor:
    """Which codeword each feature position of an EncNet belongs to, softly: (N, 3, H, W) -> (N, K, h, w).

    ``h, w`` are the head's feature size (H/8, W/8 at output stride 8); channels sum to 1. Uses eval-mode
    statistics when the model is in eval mode; call ``model.eval()`` first for a picture of a trained model.
    """
    if not isinstance(getattr(model, "head", None), EncHead):
        raise TypeError("codeword_assignments needs an EncNet, e.g. create_model('encnet', num_classes)")
    feats = model.backbone(images)
    a = model.head.assignments(feats)  # (N, hw, K)
    h, w = feats[-1].shape[-2:]
    return a.transpose(1, 2).reshape(a.shape[0], a.shape[2], h, w)


@register_model(
    "encnet",
    paper='Zhang et al., "Context Encoding for Semantic Segmentation", CVPR 2018',
    url="https://arxiv.org/abs/1803.08904",
    chapter="06_encnet",
    aux_loss=True,
    pretrained_backbone=True,
    backbones=RESNET_BACKBONES,
    quick=Recipe(8, 1e-3, "adamw", model_kwargs={"backbone": "resnet18"}, aux_loss=True, crop=(96, 128), batch_size=4,
                 note="ch. 06 QUICK, ResNet-18, SE-loss"),
    full=(
        Recipe(80, 1e-2, model_kwargs={"backbone": "resnet50"}, aux_loss=True, pretrained_backbone=True,
               row="encnet", note="ch. 06, ResNet-50, OS 8, SE-loss"),
        Recipe(50, 1e-3, model_kwargs={"backbone": "resnet101"}, aux_loss=True, dataset="voc", split="trainaug",
               crop=(480, 480), batch_size=16, rotate=10.0, pretrained_backbone=True, row="encnet-voc",
               note="ch. 06 on the paper's dataset: ResNet-101, OS 8, SE-loss, rotation"),
    ),
    compare=True,
)  # fmt: skip
def encnet(
    num_classes: int,
    *,
    backbone: str = "resnet50",
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    output_stride: int = 8,
    num_codes: int = 32,
    se_loss: bool = True,
) -> SegmentationModel:
    """EncNet (arXiv:1803.08904): dilated ResNet at output stride 8, :class:`EncHead` with K = 32 codewords, the
    SE-loss logits as ``"se"`` and, with ``aux_loss``, an :class:`FCNHead` on layer3 as ``"aux"``.

    The paper's losses: pixel CE + 0.2 * SE (BCE against class presence) + 0.4 * aux CE (``seglearn.losses.SegLoss``).
    ``backbone``: resnet50 (the default) or resnet101; resnet18/34 also build (QUICK mode trains resnet18).
    """
    body = ResNetBackbone(backbone, pretrained=pretrained_backbone, output_stride=output_stride)
    head = EncHead(body.channels[-1], num_classes, num_codes=num_codes, se_loss=se_loss)
    aux = FCNHead(body.channels[-2], num_classes) if aux_loss else None
    return SegmentationModel(body, head, aux_head=aux, aux_index=-2)
