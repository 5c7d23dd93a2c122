"""G-FRNet (CVPR 2017): parameter counts, stage shapes, the gate's product, deep supervision, options and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

import seglearn.models.gfrnet  # noqa: F401  (registers "gfrnet" until the package imports it)
from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, list_models, model_info
from seglearn.models.gfrnet import GatedRefinementUnit, GateUnit, GFRNetEncoder, vgg16_features

VGG16_CONVS = 14_714_688  # torchvision's vgg16().features
VGG16_BN = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)  # the 13 BatchNorms of vgg16_bn


def _conv(cin: int, cout: int, bn: bool) -> int:
    """A 3x3 conv, with BN (and no bias) or with a bias."""
    return 9 * cin * cout + (2 * cout if bn else cout)


def _vgg(width: int, bn: bool) -> int:
    widths = [width * m for m, n in zip((1, 2, 4, 8, 8), (2, 2, 3, 3, 3), strict=True) for _ in range(n)]
    return sum(9 * a * b + b + (2 * b if bn else 0) for a, b in zip([3, *widths[:-1]], widths, strict=True))


def _head(c: int, widths=(64, 128, 256, 512, 512, 512), extra: int = 1024) -> int:
    total = _conv(widths[5], extra, True) + _conv(extra, extra, True) + _conv(extra, c, False)
    for i in range(5):  # gate i: deep f_{i+1} -> width of f_i, shallow f_i -> itself; then its RU
        total += _conv(widths[i + 1], widths[i], True) + _conv(widths[i], widths[i], True)
        total += _conv(widths[i], c, True) + _conv(2 * c, c, False)
    return total


def _released_prototxt(c: int) -> int:
    """Parameters of mrochan/gfrnet's models/camvid/train_camvid_gate.prototxt (Caffe convs all have a bias; BN:
    scale + shift): VGG16 + BN, conv6/conv7 (1024, BN), pred_1, then per stage a C-channel projection of the skip
    (+ BN), a BN of the gate product and a 3x3 conv on [gate, upsampled prediction]; the first stage also projects
    pool5 to C. It reuses each skip projection as the next gate's deep side."""
    total = VGG16_CONVS + VGG16_BN + _conv(512, 1024, False) + 2048 + _conv(1024, 1024, False) + 2048
    total += _conv(1024, c, False) + _conv(512, c, False)  # pred_1, pool5_feature_s2
    for skip in (512, 512, 256, 128, 64):
        total += _conv(skip, c, False) + 2 * c + 2 * c + _conv(2 * c, c, False)
    return total


def test_parameter_counts():
    with torch.device("meta"):
        net = create_model("gfrnet", 11)
        bn = create_model("gfrnet", 11, backbone="vgg16_bn")
    assert count_parameters(net.backbone) == VGG16_CONVS == _vgg(64, bn=False)
    assert count_parameters(net.head) == _head(11)
    assert count_parameters(net) == 40_898_234
    assert count_parameters(bn) - count_parameters(net) == VGG16_BN
    # The released CamVid model is ~11.7 M smaller: its gates multiply C-channel projections, ours (the paper's
    # Fig. 3) keep each skip's width (512-wide 3x3 convs on both sides of the two deepest gates).
    assert _released_prototxt(11) == 29_194_090
    assert count_parameters(net.head.gates) == 11_765_504


def test_narrow_encoder_is_torchvisions_layout():
    with torch.device("meta"):
        ours = vgg16_features(64, batch_norm=True).state_dict()
        theirs = torchvision.models.vgg16_bn().features.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    narrow = vgg16_features(8, batch_norm=False)
    widths = [m.out_channels for m in narrow if isinstance(m, torch.nn.Conv2d)]
    assert widths == [8] * 2 + [16] * 2 + [32] * 3 + [64] * 6


def test_stage_shapes_gates_and_side_outputs():
    torch.manual_seed(0)
    net = create_model("gfrnet", 5, backbone="vgg16_bn", width=8).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        feats = net.backbone(x)
        inner = net.forward_features(x)
        out = net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [
        (8, 64, 96), (16, 32, 48), (32, 16, 24), (64, 8, 12), (64, 4, 6), (64, 2, 3),
    ]  # fmt: skip
    gates = [tuple(g.shape[1:]) for g in inner["gates"]]
    assert gates == [(64, 4, 6), (64, 8, 12), (32, 16, 24), (16, 32, 48), (8, 64, 96)]  # coarse (G1) to fine (G5)
    assert [tuple(p.shape[1:]) for p in inner["preds"]] == [(5, 64 // s, 96 // s) for s in (32, 16, 8, 4, 2, 1)]
    assert set(out) == {"out", "side"} and out["out"].shape == (2, 5, 64, 96)
    assert len(out["side"]) == 5 and all(s.shape == (2, 5, 64, 96) for s in out["side"])
    torch.testing.assert_close(out["out"], inner["preds"][-1])  # the last RU is already at the input size
    torch.testing.assert_close(out["side"][0], F.interpolate(inner["preds"][0], size=(64, 96), mode="bilinear"))


def test_gate_multiplies_and_can_close():
    torch.manual_seed(1)
    gate = GateUnit(deep_channels=6, shallow_channels=4).eval()
    deep, shallow = torch.randn(2, 6, 3, 5), torch.randn(2, 4, 6, 10)
    with torch.no_grad():
        up = F.interpolate(gate.deep(deep), size=(6, 10), mode="bilinear")
        torch.testing.assert_close(gate(deep, shallow), up * gate.shallow(shallow))
        gate.deep[1].bias.fill_(-1e3)  # the deep side's ReLU is 0 everywhere: nothing of the skip passes
        assert gate(deep, shallow).abs().max() == 0
    ru = GatedRefinementUnit(gate_channels=4, num_classes=3)
    refined = ru(torch.randn(2, 4, 6, 10), torch.randn(2, 3, 3, 5))
    assert refined.shape == (2, 3, 6, 10) and ru.refine.in_channels == 6  # [m (C), upsampled R (C)]


def test_train_step_odd_size_with_stage_losses():
    torch.manual_seed(2)
    net = create_model("gfrnet", 4, backbone="vgg16_bn", width=8).train()
    x = torch.randn(2, 3, 65, 97)
    target = torch.randint(0, 4, (2, 65, 97))
    out = net(x)
    assert out["out"].shape == (2, 4, 65, 97) and all(s.shape == (2, 4, 65, 97) for s in out["side"])
    # the paper's loss: the cross-entropies of all six stage predictions, summed with weight 1
    loss = F.cross_entropy(out["out"], target) + sum(F.cross_entropy(s, target) for s in out["side"])
    terms = SegLoss().terms(out, target)
    assert set(terms) == {"out", "side"}
    torch.testing.assert_close(SegLoss()(out, target), loss)
    loss.backward()
    head = net.head
    for name, p in [
        ("encoder", net.backbone.features[0].weight),
        ("conv6", head.conv6[0].weight),
        ("coarse", head.coarse.weight),
        ("gate1_deep", head.gates[0].deep[0].weight),
        ("gate5_shallow", head.gates[4].shallow[0].weight),
        ("ru_reduce", head.refine[2].reduce[0].weight),
        ("ru_refine", head.refine[4].refine.weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_registration_options_and_errors():
    assert "gfrnet" in list_models()
    info = model_info("gfrnet")
    assert info.backbones == ("vgg16", "vgg16_bn") and info.chapter == "09_survey_context" and info.compare
    quick = create_model("gfrnet", 11, **info.quick.model_kwargs)
    w = 16
    widths = (w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w)
    assert count_parameters(quick) == _vgg(w, bn=True) + _head(11, widths, extra=16 * w) == 2_617_946
    ungated = create_model("gfrnet", 11, **{**info.quick.model_kwargs, "gated": False})
    deep_sides = sum(count_parameters(g.deep) for g in quick.head.gates)
    assert all(g.deep is None for g in ungated.head.gates)
    assert count_parameters(quick) - count_parameters(ungated) == deep_sides
    with torch.no_grad():
        assert ungated.eval()(torch.randn(1, 3, 32, 32))["out"].shape == (1, 11, 32, 32)
    with pytest.raises(ValueError, match="pass one of: vgg16"):
        create_model("gfrnet", 3, backbone="resnet50")
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("gfrnet", 3, aux_loss=True)
    with pytest.raises(ValueError, match=r"only for the full VGG16 \(width=64\)"):
        GFRNetEncoder("vgg16_bn", pretrained=True, width=16)
    with pytest.raises(ValueError, match="positive"):
        create_model("gfrnet", 3, width=0)
