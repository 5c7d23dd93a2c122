"""RefineNet (arXiv:1611.06612): parameter counts against the reference ports, cascade shapes, blocks, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import seglearn.models.refinenet  # noqa: F401  (registers "refinenet" until the package imports it)
from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, list_models, model_info
from seglearn.models.refinenet import ChainedResidualPooling, MultiResolutionFusion, ResidualConvUnit

RESNET101 = 44_549_160 - (2048 * 1000 + 1000)  # torchvision's ResNets without their fc
RESNET18 = 11_689_512 - (512 * 1000 + 1000)


def _rcu(c: int) -> int:
    return 2 * 9 * c * c + c  # two 3x3 convs, a bias on the first only


def _block(paths: list[int], c: int, crp: int) -> int:
    fusion = sum(9 * p * c for p in paths) if len(paths) > 1 else 0
    return sum(2 * _rcu(p) for p in paths) + fusion + crp * 9 * c * c + _rcu(c)


def _head(num_classes: int, crp: int, ch: int = 256, top: int = 512, stages=(256, 512, 1024, 2048)) -> int:
    adapt = 9 * (stages[0] * ch + stages[1] * ch + stages[2] * ch + stages[3] * top)
    blocks = _block([top], top, crp) + _block([top, ch], ch, crp) + 2 * _block([ch, ch], ch, crp)
    return adapt + blocks + 2 * _rcu(ch) + ch * num_classes + num_classes


def test_parameter_counts_match_the_reference_ports():
    # Counted by building each reference with torchvision's ResNet-101 (not installed here):
    # thomasjpfan/pytorch_refinenet RefineNet4Cascade(num_classes=21) has 113,880,661 parameters (3 CRP blocks;
    # its RefineNet4CascadePoolingImproved builds the same blocks); DrSleep/refinenet-pytorch rf101(21), Nekrasov's
    # port of the released MATLAB model, 118,052,437 (4 CRP blocks, a 3x3 classifier). After copying weights, ours
    # (crp_blocks=3 / 4 with a 3x3 classifier) computed the same logits as each (max |diff| 0.0, with their
    # align_corners=True resize and thomasjpfan's in-place ReLUs made out-of-place, see ResidualConvUnit).
    counts = {}
    with torch.device("meta"):
        for crp in (2, 3, 4):
            net = create_model("refinenet", 21, crp_blocks=crp)
            assert count_parameters(net.backbone) == RESNET101
            assert count_parameters(net.head) == _head(21, crp)
            counts[crp] = count_parameters(net)
    assert counts[2] == 109_751_893  # the paper's Fig. 2 (2 CRP blocks), our default
    assert counts[3] == 113_880_661  # == thomasjpfan's RefineNet4Cascade
    three_by_three_classifier = 256 * 21 * 8
    assert counts[4] + three_by_three_classifier == 118_052_437  # == Nekrasov's rf101
    # crp_blocks=2 saves one 3x3 conv per block: 512 wide in RefineNet-4, 256 in the other three
    assert counts[3] - counts[2] == 9 * 512 * 512 + 3 * 9 * 256 * 256


def test_cascade_shapes_and_output_size():
    torch.manual_seed(0)
    net = create_model("refinenet", 5, backbone="resnet18", channels=16, top_channels=32).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        levels = net.head.forward_features(net.backbone(x))
        out = net(x)
    assert {k: tuple(v.shape) for k, v in levels.items()} == {
        "refinenet4": (1, 32, 2, 3),
        "refinenet3": (1, 16, 4, 6),
        "refinenet2": (1, 16, 8, 12),
        "refinenet1": (1, 16, 16, 24),
        "fused": (1, 16, 16, 24),
    }
    assert set(out) == {"out"} and out["out"].shape == (1, 5, 64, 96)
    assert [len(b.rcus) for b in (net.head.refinenet4, net.head.refinenet3)] == [1, 2]
    assert net.head.refinenet4.mrf is None and len(net.head.refinenet1.crp.blocks) == 2


def test_train_step_odd_size_batch_of_one():
    # No BatchNorm in the decoder: a batch of one image trains (the ResNet's BN sees 2x2+ maps).
    torch.manual_seed(1)
    net = create_model("refinenet", 4, backbone="resnet18", channels=16, top_channels=32).train()
    x = torch.randn(1, 3, 65, 97)
    target = torch.randint(0, 4, (1, 65, 97))
    out = net(x)
    assert out["out"].shape == (1, 4, 65, 97)
    SegLoss()(out, target).backward()
    head = net.head
    for name, p in [
        ("adapt4", head.adapt[3].weight),
        ("rcu", head.refinenet4.rcus[0][0].conv1.weight),
        ("fusion", head.refinenet3.mrf.convs[0].weight),
        ("crp", head.refinenet1.crp.blocks[1][1].weight),
        ("out_rcus", head.out_rcus[1].conv2.weight),
        ("classifier", head.classifier.weight),
        ("stem", net.backbone.stem[0].weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def _identity_conv_(conv: torch.nn.Conv2d) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[range(conv.out_channels), range(conv.in_channels), 1, 1] = 1.0


def test_blocks_compute_what_the_paper_draws():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 9, 11)
    rcu = ResidualConvUnit(3)
    torch.nn.init.zeros_(rcu.conv2.weight)
    torch.testing.assert_close(rcu(x), x)  # the identity carries x itself, not relu(x)

    crp = ChainedResidualPooling(3, blocks=2)
    for block in crp.blocks:
        _identity_conv_(block[1])
    r = F.relu(x)
    pool = lambda t: F.max_pool2d(t, 5, stride=1, padding=2)
    # each block pools the previous block's output (windows 5, then 9) and every output joins the sum
    torch.testing.assert_close(crp(x), r + pool(r) + pool(pool(r)))

    torch.testing.assert_close(ChainedResidualPooling(3, blocks=0)(x), r)  # the no-CRP ablation: only the ReLU

    mrf = MultiResolutionFusion([4, 3], channels=3)
    coarse, fine = torch.randn(2, 4, 5, 6), torch.randn(2, 3, 10, 12)
    expected = F.interpolate(mrf.convs[0](coarse), size=(10, 12), mode="bilinear") + mrf.convs[1](fine)
    torch.testing.assert_close(mrf([coarse, fine]), expected)
    with pytest.raises(ValueError, match="2 paths"):
        mrf([fine])


def test_registration_options_and_errors():
    assert "refinenet" in list_models()
    info = model_info("refinenet")
    assert info.backbones[0] == "resnet101" and info.chapter == "09_survey_context" and info.compare
    assert info.pretrained_backbone and not info.aux_loss
    quick = create_model("refinenet", 3, **info.quick.model_kwargs)
    assert count_parameters(quick) == RESNET18 + _head(3, 2, ch=64, top=128, stages=(64, 128, 256, 512)) == 15_380_803
    with pytest.raises(ValueError, match="pass one of: resnet101"):
        create_model("refinenet", 3, backbone="vgg16")
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("refinenet", 3, aux_loss=True)
    with pytest.raises(ValueError, match="crp_blocks counts pooling blocks"):
        create_model("refinenet", 3, backbone="resnet18", crp_blocks=-1)
    with pytest.raises(ValueError, match="crp_blocks takes an int"):
        create_model("refinenet", 3, crp_blocks="two")
