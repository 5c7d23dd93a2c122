"""FC-DenseNet (arXiv:1611.09326): the paper's parameter counts and feature counts m, shapes, gradients, options."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglearn.models.fcdensenet  # noqa: F401  (registers fcdensenet56/67/103)
from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, model_info
from seglearn.models.fcdensenet import FCDENSENET_CONFIGS, DenseBlock, TransitionUp

NUM_CLASSES = 11  # CamVid's, as in the paper


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, NUM_CLASSES, **kwargs)


def _expected_parameters(layers: tuple[int, ...], k: int, c: int = NUM_CLASSES, stem: int = 48) -> int:
    """The count from the paper's description alone: BN (2 per map) + 3x3 conv (with bias) per dense layer,
    BN + 1x1 conv per Transition Down, 3x3 transposed conv per Transition Up, the first and last convs."""

    def block(m: int, n: int) -> int:
        return sum(2 * (m + i * k) + (m + i * k) * k * 9 + k for i in range(n))

    levels = len(layers) // 2
    total, m, skips = 3 * stem * 9 + stem, stem, []
    for n in layers[:levels]:
        total += block(m, n)
        m += n * k
        skips.append(m)
        total += 2 * m + m * m + m  # Transition Down
    total += block(m, layers[levels])
    new = layers[levels] * k
    for skip, n in zip(reversed(skips), layers[levels + 1 :], strict=True):
        total += new * new * 9 + new  # Transition Up on the new maps only
        total += block(new + skip, n)
        new, m = n * k, new + skip + n * k
    return total + m * c + c


# Exact counts (11 classes) and the paper's Table 2 (millions). The authors' Lasagne summary counts every array of the
# network, BatchNorm's running mean and inverse std included: 2 more numbers per normalised map.
COUNTS = {"fcdensenet56": (1_376_795, 1.5), "fcdensenet67": (3_463_243, 3.5), "fcdensenet103": (9_322_091, 9.4)}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_match_the_paper(name):
    model = _meta(name)
    exact, paper = COUNTS[name]
    cfg = FCDENSENET_CONFIGS[name]
    assert count_parameters(model) == exact == _expected_parameters(cfg.layers, cfg.growth_rate)
    assert inspect.signature(model_info(name).builder).parameters["growth_rate"].default == cfg.growth_rate
    bn_maps = sum(m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    lasagne = exact + 2 * bn_maps
    if name == "fcdensenet56":
        # Table 2's 1.5 M cannot come from 11 blocks of 4 layers at k = 12 (the paper's own layer count 56 is right:
        # 44 dense layers, 5 TD, 5 TU, first and last conv): 1.40 M even with the BN statistics; stated, not hidden.
        assert lasagne == 1_397_963
    else:
        assert abs(lasagne / 1e6 - paper) <= 0.05  # 3.50 M and 9.43 M


def test_feature_counts_m_of_table_2():
    # m = maps in the stack after each block: 48 + 4x16 = 112, ..., 656 + 15x16 = 896 after the bottleneck, then
    # skip + upsampled + new on the way up (the authors' README corrects the paper's table by +16 from the bottleneck)
    model = _meta("fcdensenet103")
    body, head = model.backbone, model.head
    assert body.stem.out_channels == 48
    assert [b.stack_channels for b in body.blocks] + [body.bottleneck.stack_channels] == [112, 192, 304, 464, 656, 896]
    assert body.channels == [112, 192, 304, 464, 656, 240]  # skips, then the bottleneck's 15 x 16 new maps
    assert [b.stack_channels for b in head.blocks] == [1088, 816, 576, 384, 256]
    # each Transition Up sees only the previous block's new maps, never that block's input
    assert [t.conv.in_channels for t in head.transitions] == [240, 192, 160, 112, 80]
    assert head.classifier.in_channels == 256
    n_convs = sum(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in model.modules())
    assert n_convs == 103


def test_intermediate_shapes_of_fcdensenet103():
    model = _meta("fcdensenet103")
    x = torch.empty(1, 3, 64, 96, device="meta")
    feats = model.backbone(x)
    assert [tuple(f.shape) for f in feats] == [(1, 112, 64, 96), (1, 192, 32, 48), (1, 304, 16, 24),
                                               (1, 464, 8, 12), (1, 656, 4, 6), (1, 240, 2, 3)]  # fmt: skip
    ups = model.head.forward_features(feats)
    assert {k: tuple(v.shape) for k, v in ups.items()} == {
        "up1": (1, 192, 4, 6), "up2": (1, 160, 8, 12), "up3": (1, 112, 16, 24), "up4": (1, 80, 32, 48),
        "up5": (1, 256, 64, 96),
    }  # fmt: skip
    assert model.size_divisor == 32
    assert tuple(model(torch.empty(1, 3, 33, 50, device="meta"))["out"].shape) == (1, NUM_CLASSES, 33, 50)


def test_train_step_odd_size_quick_variant():
    torch.manual_seed(0)
    kwargs = model_info("fcdensenet103").quick.model_kwargs
    net = create_model("fcdensenet103", NUM_CLASSES, **kwargs).train()
    x = torch.randn(2, 3, 65, 97)
    target = torch.randint(0, NUM_CLASSES, (2, 65, 97))
    out = net(x)
    assert set(out) == {"out"} and out["out"].shape == (2, NUM_CLASSES, 65, 97)
    SegLoss()(out, target).backward()
    body, head = net.backbone, net.head
    for name, p in [
        ("stem", body.stem.weight),
        ("first layer", body.blocks[0].layers[0][2].weight),
        ("transition down", body.transitions[0][2].weight),
        ("bottleneck", body.bottleneck.layers[-1][2].weight),
        ("transition up", head.transitions[0].conv.weight),
        ("last layer", head.blocks[-1].layers[-1][2].weight),
        ("classifier", head.classifier.weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_dense_block_stack_and_new_maps():
    torch.manual_seed(0)
    full = DenseBlock(5, num_layers=3, growth_rate=4, dropout=0.0, keep_input=True).eval()
    new = DenseBlock(5, num_layers=3, growth_rate=4, dropout=0.0, keep_input=False).eval()
    new.load_state_dict(full.state_dict())
    x = torch.randn(2, 5, 8, 8)
    with torch.no_grad():
        stack, only_new = full(x), new(x)
    assert stack.shape == (2, 17, 8, 8) and only_new.shape == (2, 12, 8, 8)
    torch.testing.assert_close(stack[:, :5], x)  # the input is carried through unchanged
    torch.testing.assert_close(stack[:, 5:], only_new)
    # the last layer sees the input and both earlier layers' maps
    assert full.layers[2][2].in_channels == 5 + 2 * 4


def test_transition_up_is_the_authors_valid_deconvolution_cropped():
    torch.manual_seed(0)
    up = TransitionUp(3)
    x, skip = torch.randn(1, 3, 4, 5), torch.randn(1, 2, 8, 10)
    with torch.no_grad():
        out = up(x, skip)
        full = F.conv_transpose2d(x, up.conv.weight, up.conv.bias, stride=2)  # Lasagne crop='valid': 2h + 1
    assert full.shape[-2:] == (9, 11) and out.shape == (1, 5, 8, 10)
    torch.testing.assert_close(out[:, :3], full[..., :8, :10])  # Lasagne's 'center' crop of 2h + 1 to 2h keeps [0, 2h)
    torch.testing.assert_close(out[:, 3:], skip)


def test_registration_options_and_errors():
    assert model_info("fcdensenet103").compare and not model_info("fcdensenet56").compare
    assert model_info("fcdensenet103").full[0].row == "fcdensenet103"
    assert count_parameters(_meta("fcdensenet103", growth_rate=8)) < count_parameters(_meta("fcdensenet103")) / 3
    small = _meta("fcdensenet56", layers=(1, 1, 1), stem_channels=8)  # one pooling
    assert small.size_divisor == 2 and len(small.backbone.blocks) == 1
    with pytest.raises(ValueError, match="2L \\+ 1 positive block sizes"):
        create_model("fcdensenet56", 3, layers=(2, 2))
    with pytest.raises(ValueError, match="fixed encoder"):
        create_model("fcdensenet103", 3, backbone="resnet18")
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("fcdensenet67", 3, aux_loss=True)
    with pytest.raises(ValueError, match="growth_rate takes an int"):
        create_model("fcdensenet67", 3, growth_rate="wide")
    with pytest.raises(ValueError, match="does not take width="):
        create_model("fcdensenet67", 3, width=4)
