"""LinkNet (arXiv:1707.03718): parameter count, side by side with smp.Linknet, the additive links, shapes."""

from __future__ import annotations

import re

import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

import seglearn.models.linknet  # noqa: F401  (registers "linknet")
from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, list_models
from seglearn.models.linknet import FullConvBNReLU, LinkNetEncoder

NUM_CLASSES = 11
RESNET18 = 11_689_512 - (512 * 1000 + 1000)  # torchvision's ResNet-18 without its fc


def _block(m: int, n: int, k: int = 3) -> int:
    """Parameters of a decoder block m -> n: 1x1 m->m/4, k x k full-conv m/4->m/4, 1x1 m/4->n, each + BN."""
    q = m // 4
    return m * q + 2 * q + q * q * k * k + 2 * q + q * n + 2 * n


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("linknet", NUM_CLASSES).eval()


def test_parameter_count_is_the_papers_11_5_million():
    with torch.device("meta"):
        net = create_model("linknet", NUM_CLASSES)
    c = NUM_CLASSES
    decoder = _block(512, 256) + _block(256, 128) + _block(128, 64) + _block(64, 64)
    final = (64 * 32 * 9 + 2 * 32) + (32 * 32 * 9 + 2 * 32) + (32 * c * 4 + c)
    assert count_parameters(net.backbone) == RESNET18
    assert count_parameters(net.head) == decoder + final == 358_091
    total = count_parameters(net)
    assert total == RESNET18 + decoder + final == 11_534_603
    assert round(total / 1e6, 1) == 11.5  # the paper: 11.5 M parameters


def _smp_key(key: str) -> str:
    """seglearn LinkNet key -> smp.Linknet key: the encoder, and our ``blocks[3..1]`` (the paper's decoder blocks
    4..2) as smp's ``decoder.blocks.0..2``."""
    key = re.sub(r"^backbone\.stem\.0\.", "encoder.conv1.", key)
    key = re.sub(r"^backbone\.stem\.1\.", "encoder.bn1.", key)
    key = re.sub(r"^backbone\.", "encoder.", key)
    return re.sub(r"^head\.blocks\.(\d)\.", lambda m: f"decoder.blocks.{3 - int(m[1])}.block.", key)


def test_side_by_side_with_smp_linknet(model):
    """smp.Linknet("resnet18") shares the encoder and the 1x1 convs of every decoder block; it differs in:
    - each up-convolution is 4x4 (stride 2, padding 1) with a bias, not the paper's 3x3 without: 7 q^2 + q more for a
      block of width q = m/4; a 3x3 kernel zero-padded to 4x4 (last row/column 0) is the same map, so with zero
      biases the two decoders compute the same d4, d3, d2 (checked below);
    - smp's block 4 (64 -> 64) upsamples to H/2 and adds the stem's pre-pool map; ours (the paper's decoder block 1)
      keeps H/4 and adds the max-pool output;
    - smp ends with a fifth decoder block (64 -> 32, to H) and a 1x1 classifier, the paper with a 3x3 full-conv,
      a 3x3 conv and a 2x2 full-conv to the classes.
    In all smp has 130,560 - 96 C parameters more (C classes): 129,504 for 11.
    """
    torch.manual_seed(1)
    c = NUM_CLASSES
    ref = smp.Linknet("resnet18", encoder_weights=None, classes=c).eval()
    up = sum(7 * q * q + q for q in (128, 64, 32, 16))
    smp_end = _block(64, 32, k=4) + 16 + (32 * c + c)  # + 16: the 4x4 up-conv's bias
    ours_end = (64 * 32 * 9 + 64) + (32 * 32 * 9 + 64) + (32 * c * 4 + c)
    assert count_parameters(ref) - count_parameters(model) == up + smp_end - ours_end == 130_560 - 96 * c == 129_504

    theirs = ref.state_dict()
    mapped = {}
    for key, value in model.state_dict().items():
        if key.startswith(("head.final", "head.classifier", "head.blocks.0.")):
            continue  # no counterpart in smp (see the docstring)
        k = _smp_key(key)
        if value.dim() == 4 and value.shape[-1] == 3 and theirs[k].shape[-1] == 4:  # 3x3 -> 4x4, zero padded
            value = nn.functional.pad(value, (0, 1, 0, 1))
            mapped[k.replace(".weight", ".bias")] = torch.zeros_like(theirs[k.replace(".weight", ".bias")])
        assert theirs[k].shape == value.shape, key
        mapped[k] = value
    missing, unexpected = ref.load_state_dict(mapped, strict=False)
    assert not unexpected
    assert all(k.startswith(("decoder.blocks.3.", "decoder.blocks.4.", "segmentation_")) for k in missing)

    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        mine = model.head.forward_features(model.backbone(x))
        e = ref.encoder(x)  # [x, stem relu (H/2), layer1, layer2, layer3, layer4]
        d = e[5]
        for j, name in enumerate(("d4", "d3", "d2")):
            d = ref.decoder.blocks[j](d, e[4 - j])
            torch.testing.assert_close(mine[name], d, rtol=1e-4, atol=1e-4)
        assert ref(x).shape == model(x)["out"].shape == (1, c, 64, 96)


def test_the_links_are_additions(model):
    # With the last BN of decoder block 4 at weight = bias = 0 the block outputs ReLU(0) = 0, so d4 is exactly the
    # encoder's layer3 map: the skip is a sum (U-Net would concatenate and change the width instead).
    net = create_model("linknet", 3).eval()
    bn = net.head.blocks[3][2][1]
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
        feats = net.backbone(torch.randn(1, 3, 64, 96))
        levels = net.head.forward_features(feats)
    torch.testing.assert_close(levels["d4"], feats[3])
    assert levels["d3"].shape == feats[2].shape and levels["d1"].shape == feats[0].shape


def test_without_links_the_decoder_sees_only_the_block_below():
    # skip=False (the authors' nobypass model): the same parameters, and d4 is block 4's output alone
    torch.manual_seed(0)
    linked = create_model("linknet", 3).eval()
    unlinked = create_model("linknet", 3, skip=False).eval()
    unlinked.load_state_dict(linked.state_dict())
    with torch.no_grad():
        feats = linked.backbone(torch.randn(1, 3, 64, 96))
        a, b = linked.head.forward_features(feats), unlinked.head.forward_features(feats)
        block4 = linked.head.blocks[3](feats[4])
    torch.testing.assert_close(b["d4"], block4)
    torch.testing.assert_close(a["d4"], block4 + feats[3])
    assert unlinked.model_spec["model_kwargs"] == {"skip": False}


def test_shapes_and_strides(model):
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.backbone(x)
        levels = model.head.forward_features(feats)
    assert model.backbone.channels == [64, 64, 128, 256, 512] and model.backbone.reductions == [4, 4, 8, 16, 32]
    assert [tuple(f.shape[1:]) for f in feats] == [(64, 16, 24), (64, 16, 24), (128, 8, 12), (256, 4, 6), (512, 2, 3)]
    assert {k: tuple(v.shape[1:]) for k, v in levels.items()} == {
        "d4": (256, 4, 6),
        "d3": (128, 8, 12),
        "d2": (64, 16, 24),
        "d1": (64, 16, 24),
        "final": (32, 32, 48),
    }
    assert model.head.blocks[0][1][0].stride == (1, 1) and model.head.blocks[1][1][0].stride == (2, 2)


def test_train_step_odd_size():
    torch.manual_seed(2)
    net = create_model("linknet", NUM_CLASSES).train()
    x = torch.randn(2, 3, 65, 97)
    target = torch.randint(0, NUM_CLASSES, (2, 65, 97))
    out = net(x)
    assert set(out) == {"out"} and out["out"].shape == (2, NUM_CLASSES, 65, 97)
    SegLoss()(out, target).backward()
    for name, p in [
        ("stem", net.backbone.stem[0].weight),
        ("block4", net.head.blocks[3][1][0].weight),
        ("block1", net.head.blocks[0][0][0].weight),
        ("final", net.head.final[0][0].weight),
        ("classifier", net.head.classifier.weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_bottleneck_resnets_widen_the_decoder():
    with torch.device("meta"):
        net = create_model("linknet", NUM_CLASSES, backbone="resnet50")
        levels = net.head.forward_features(net.backbone(torch.empty(1, 3, 64, 96)))
    widths = [(b[0][0].in_channels, b[2][0].out_channels) for b in net.head.blocks]
    assert widths == [(256, 64), (512, 256), (1024, 512), (2048, 1024)]
    assert {k: tuple(v.shape[1:]) for k, v in levels.items()} == {
        "d4": (1024, 4, 6),
        "d3": (512, 8, 12),
        "d2": (256, 16, 24),
        "d1": (64, 16, 24),
        "final": (32, 32, 48),
    }
    assert count_parameters(net) == 28_763_083


def test_registration_and_refused_options():
    assert "linknet" in list_models()
    with torch.device("meta"):
        assert isinstance(create_model("linknet", 2).backbone, LinkNetEncoder)
    with pytest.raises(ValueError, match="pass one of: resnet18, resnet34, resnet50, resnet101"):
        create_model("linknet", 3, backbone="vgg16")
    with pytest.raises(ValueError, match="linknet has no auxiliary head"):
        create_model("linknet", 3, aux_loss=True)
    with pytest.raises(ValueError, match="cannot grow the size"):
        FullConvBNReLU(4, 4, kernel_size=2, stride=1)
    up = FullConvBNReLU(4, 4, kernel_size=3, stride=2).eval()
    assert up(torch.randn(1, 4, 5, 7)).shape == (1, 4, 10, 14)
