"""UPerNet (arXiv:1807.10221): side by side with segmentation_models_pytorch's UPerNet, shapes, gradients, counts."""

from __future__ import annotations

import re

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, list_models
from seglearn.models.ppm import PyramidPooling
from seglearn.models.upernet import UPerHead

NUM_CLASSES = 7


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("upernet", NUM_CLASSES)


def _smp_key(key: str) -> str:
    """seglearn UPerNet state-dict key -> the same tensor's key in smp.UPerNet (smp orders FPN levels top-down)."""
    key = re.sub(r"^backbone\.stem\.0\.", "encoder.conv1.", key)
    key = re.sub(r"^backbone\.stem\.1\.", "encoder.bn1.", key)
    key = re.sub(r"^backbone\.", "encoder.", key)
    key = re.sub(r"^head\.ppm\.stages\.", "decoder.psp.blocks.", key)
    key = re.sub(r"^head\.ppm\.bottleneck\.", "decoder.psp.out_conv.", key)
    key = re.sub(
        r"^head\.lateral_convs\.(\d)\.", lambda m: f"decoder.fpn_lateral_blocks.{2 - int(m[1])}.conv_norm_relu.", key
    )
    key = re.sub(r"^head\.fpn_convs\.(\d)\.", lambda m: f"decoder.fpn_conv_blocks.{2 - int(m[1])}.", key)
    key = re.sub(r"^head\.fpn_bottleneck\.", "decoder.fusion_block.", key)
    return re.sub(r"^head\.classifier\.", "segmentation_head.0.", key)


def test_same_network_as_smp_upernet(model):
    # smp.UPerNet with decoder_channels=512 is mmseg's UPerHead plus a LayerNorm on each encoder feature; with those
    # norms replaced by identities the two networks hold the same tensors and compute the same function.
    torch.manual_seed(1)
    ref = smp.UPerNet("resnet50", encoder_weights=None, decoder_channels=512, classes=NUM_CLASSES)
    norms = sum(p.numel() for p in ref.decoder.feature_norms.parameters())
    assert norms == 2 * (256 + 512 + 1024 + 2048)
    assert count_parameters(ref) - norms == count_parameters(model)
    ref.decoder.feature_norms = nn.ModuleList(nn.Identity() for _ in ref.decoder.feature_norms)

    mine = model.state_dict()
    theirs = ref.state_dict()
    mapped = {_smp_key(k): v for k, v in mine.items()}
    assert set(mapped) == set(theirs)
    ref.load_state_dict(mapped)
    model.eval()
    ref.eval()

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        levels = model.head.forward_features(feats)
        theirs_fused = ref.decoder(ref.encoder(x))
        theirs_logits = ref.segmentation_head[0](theirs_fused)
        mine_logits = model.head(feats)
    torch.testing.assert_close(levels["fused"], theirs_fused, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(mine_logits, theirs_logits, rtol=1e-4, atol=1e-4)

    shapes = {k: tuple(v.shape) for k, v in levels.items()}
    assert shapes == {
        "p2": (1, 512, 16, 24),
        "p3": (1, 512, 8, 12),
        "p4": (1, 512, 4, 6),
        "p5": (1, 512, 2, 3),
        "fused": (1, 512, 16, 24),
    }


def test_train_step_odd_size_with_aux():
    torch.manual_seed(2)
    net = create_model("upernet", NUM_CLASSES, backbone="resnet18", aux_loss=True).train()
    x = torch.randn(2, 3, 45, 53)
    target = torch.randint(0, NUM_CLASSES, (2, 45, 53))
    out = net(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, NUM_CLASSES, 45, 53) and out["aux"].shape == (2, NUM_CLASSES, 45, 53)
    SegLoss()(out, target).backward()
    head = net.head
    for name, p in [
        ("ppm", head.ppm.stages[0][1][0].weight),
        ("lateral", head.lateral_convs[0][0].weight),
        ("fpn", head.fpn_convs[1][0].weight),
        ("fuse", head.fpn_bottleneck[0].weight),
        ("classifier", head.classifier.weight),
        ("aux", net.aux_head[0].weight),
        ("stem", net.backbone.stem[0].weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_parameter_count_matches_mmseg_r50_config():
    # mmseg's configs/_base_/models/upernet_r50.py (channels 512, 150 ADE20K classes, FCN aux on layer3) is
    # ~66.5 M parameters; its ResNetV1c deep stem (3x3 convs 3-32-32-64) adds 19,232 over torchvision's 7x7 stem.
    torch.manual_seed(0)
    net = create_model("upernet", 150, aux_loss=True)
    c, ch = 150, 512
    resnet50 = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's ResNet-50 without its fc
    ppm = 4 * (2048 * ch + 2 * ch) + (2048 + 4 * ch) * ch * 9 + 2 * ch
    laterals = sum(cin * ch + 2 * ch for cin in (256, 512, 1024))
    fpn = 3 * (ch * ch * 9 + 2 * ch) + (4 * ch * ch * 9 + 2 * ch)
    classifier = ch * c + c
    aux = 1024 * 256 * 9 + 2 * 256 + 256 * c + c
    assert count_parameters(net.head.ppm) == ppm
    total = count_parameters(net)
    assert total == resnet50 + ppm + laterals + fpn + classifier + aux == 66_496_876
    v1c_stem_extra = (3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)) - (3 * 64 * 49 + 2 * 64)
    assert v1c_stem_extra == 19_232
    assert abs(total + v1c_stem_extra - 66.5e6) < 0.05e6


def test_dilated_variant_levels():
    torch.manual_seed(0)
    net = create_model("upernet", 3, backbone="resnet18", output_stride=8, channels=64).eval()
    x = torch.randn(1, 3, 41, 35)
    with torch.no_grad():
        out = net(x)
        levels = net.head.forward_features(net.backbone(x))
    assert out["out"].shape == (1, 3, 41, 35)
    assert levels["p2"].shape == (1, 64, 11, 9)
    assert levels["p3"].shape == levels["p4"].shape == levels["p5"].shape == (1, 64, 6, 5)


def test_registration_options_and_errors():
    assert "upernet" in list_models()
    head = UPerHead([8, 16, 32], num_classes=2, channels=16, pool_scales=(1, 3))
    assert len(head.lateral_convs) == 2 and head.ppm.bins == (1, 3)
    feats = [torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8), torch.randn(2, 32, 4, 4)]
    assert head(feats).shape == (2, 2, 16, 16)
    with pytest.raises(ValueError, match="3 stages"):
        head.forward_features(feats[:2])
    with pytest.raises(ValueError, match="pass one of: resnet50"):
        create_model("upernet", 3, backbone="vgg16")


def test_pyramid_pooling_bins():
    torch.manual_seed(0)
    ppm = PyramidPooling(8, channels=4, bins=(1, 2, 3, 6)).eval()
    x = torch.randn(2, 8, 7, 9)
    assert ppm(x).shape == (2, 4, 7, 9)
    pooled = ppm.stages[3][0](x)
    assert pooled.shape == (2, 8, 6, 6)
    # The bin-1 branch sees only the global mean: any shuffle of positions leaves it unchanged.
    with torch.no_grad():
        shuffled = x.flatten(2)[..., torch.randperm(63)].reshape_as(x)
        torch.testing.assert_close(ppm.stages[0](x), ppm.stages[0](shuffled))
    with pytest.raises(ValueError, match=r"1x1 bin.*batch size >= 2.*model\.eval\(\)"):
        ppm.train()(x[:1])
