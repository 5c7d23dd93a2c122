"""ENet (arXiv:1606.02147): the paper's parameter count and Table 1 layout, unpooling by indices, shapes, options."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import seglearn.models.enet  # noqa: F401  (registers enet)
from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, model_info
from seglearn.models.enet import DownsamplingBottleneck, RegularBottleneck, UpsamplingBottleneck

NUM_CLASSES = 12  # davidtvs/PyTorch-ENet's CamVid (11 classes + unlabelled)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("enet", NUM_CLASSES).eval()


def test_parameter_count_matches_the_paper(model):
    # 363,856 trainable numbers; with BatchNorm's running mean and variance (every array a Torch model file stores)
    # 372,208, the paper's "0.37 M". davidtvs/PyTorch-ENet has 350,652 with 12 classes: it projects the down- and
    # upsampling bottlenecks to in/4 maps (the authors: out/4), has one PReLU slope per layer (the authors: one per
    # map), BN + activation between the 5x1 and 1x5 convs and no conv biases, and ends in a 3x3 transposed conv.
    assert count_parameters(model) == 363_856
    stored = sum(t.numel() for k, t in model.state_dict().items() if not k.endswith("num_batches_tracked"))
    assert stored == 372_208 and abs(stored / 1e6 - 0.37) < 0.005
    c, i = 128, 32  # a regular 128-map bottleneck: projection, 3x3 (bias), expansion, BN 2 per map, PReLU 1 per map
    assert count_parameters(model.stage2[0]) == c * i + 3 * i + i * i * 9 + i + 3 * i + i * c + 2 * c + c
    assert count_parameters(model.initial) == 13 * 3 * 9 + 13 + 3 * 16  # conv + bias, BN, PReLU
    assert count_parameters(model.fullconv) == 16 * NUM_CLASSES * 4 + NUM_CLASSES


def test_stage_shapes(model):
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        "initial": (1, 16, 32, 48), "stage1": (1, 64, 16, 24), "stage2": (1, 128, 8, 12), "stage3": (1, 128, 8, 12),
        "stage4": (1, 64, 16, 24), "stage5": (1, 16, 32, 48), "out": (1, NUM_CLASSES, 64, 96),
    }  # fmt: skip


def test_table_1_layout(model):
    assert [len(model.stage1), len(model.stage2), len(model.stage3), len(model.stage4)] == [4, 8, 8, 2]
    for stage in (model.stage2, model.stage3):
        convs = [[m for m in b.branch if isinstance(m, nn.Conv2d)][1:-1] for b in stage]
        assert [c[0].dilation[0] for c in convs] == [1, 2, 1, 4, 1, 8, 1, 16]
        assert [c[0].kernel_size for c in convs if len(c) == 2] == [(5, 1), (5, 1)]  # 2.3 and 2.7: 5x1 then 1x5
        assert [c[1].kernel_size for c in convs if len(c) == 2] == [(1, 5), (1, 5)]
    encoder = [model.initial, model.bottleneck1_0, model.stage1, model.bottleneck2_0, model.stage2, model.stage3]
    decoder = [model.bottleneck4_0, model.stage4, model.bottleneck5_0, model.stage5]
    assert all(not isinstance(m, nn.ReLU) for part in encoder for m in part.modules())
    assert all(not isinstance(m, nn.PReLU) for part in decoder for m in part.modules())
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout2d)]
    assert drops == [0.01] * 5 + [0.1] * (len(drops) - 5)  # 0.01 before bottleneck2.0, 0.1 afterwards
    assert model.bottleneck1_0.branch[0].kernel_size == (2, 2) and model.bottleneck1_0.branch[0].stride == (2, 2)


def test_downsampling_pads_zero_maps_and_upsampling_unpools_by_indices():
    torch.manual_seed(1)
    down, up = DownsamplingBottleneck(4, 8).eval(), UpsamplingBottleneck(8, 4).eval()
    for block in (down, up):  # silence the branch: only the shortcut remains
        nn.init.zeros_(block.branch[-2].weight)
        nn.init.zeros_(block.branch[-2].bias)
    x = torch.randn(2, 4, 6, 8)
    with torch.no_grad():
        y, idx = down(x)
        pooled = torch.nn.functional.max_pool2d(x, 2)
        torch.testing.assert_close(y[:, :4], torch.nn.functional.prelu(pooled, down.act.weight[:4]))
        assert y[:, 4:].abs().max() == 0  # the 4 extra maps are zero padding
        z = up(torch.randn(2, 8, 3, 4), idx)
    assert z.shape == (2, 4, 6, 8)
    # every nonzero of the unpooled map sits where the matching 2x2 maximum came from
    mask = torch.zeros(2, 4, 48).scatter_(2, idx.flatten(2), 1.0).view(2, 4, 6, 8)
    assert (z[mask == 0] == 0).all() and (z[mask == 1] != 0).any()


def test_train_step_odd_size():
    torch.manual_seed(2)
    net = create_model("enet", NUM_CLASSES).train()
    x = torch.randn(2, 3, 65, 97)
    target = torch.randint(0, NUM_CLASSES, (2, 65, 97))
    out = net(x)
    assert set(out) == {"out"} and out["out"].shape == (2, NUM_CLASSES, 65, 97)
    SegLoss()(out, target).backward()
    for name, p in [
        ("initial", net.initial.conv.weight),
        ("down 1.0", net.bottleneck1_0.branch[0].weight),
        ("dilated 2.8", net.stage2[7].branch[3].weight),
        ("asymmetric 3.3", net.stage3[2].branch[3].weight),
        ("up 4.0 shortcut", net.bottleneck4_0.shortcut[0].weight),
        ("up 5.0 deconv", net.bottleneck5_0.branch[3].weight),
        ("fullconv", net.fullconv.weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_registration_options_and_errors():
    info = model_info("enet")
    assert info.compare and info.full[0].row == "enet" and info.full[0].class_weights == "enet"
    relu = create_model("enet", 3, encoder_relu=True)
    assert not any(isinstance(m, nn.PReLU) for m in relu.modules())
    assert count_parameters(relu) < count_parameters(create_model("enet", 3))
    small = 16 * 4 + 2 * 4 + 4 * 4 * 9 + 4 + 2 * 4 + 4 * 16 + 2 * 16  # ReLU: no slopes
    assert count_parameters(RegularBottleneck(16, relu=True)) == small
    with pytest.raises(ValueError, match="fixed encoder"):
        create_model("enet", 3, backbone="resnet18")
    with pytest.raises(ValueError, match="no pretrained backbone"):
        create_model("enet", 3, pretrained_backbone=True)
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("enet", 3, aux_loss=True)
    with pytest.raises(ValueError, match="does not take width="):
        create_model("enet", 3, width=4)
