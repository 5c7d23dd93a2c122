"""DeepLab v1: the paper's parameter counts, output stride 8 with atrous conv5/fc6, and exact fc6/fc7 decimation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglearn.models import SegmentationModel, count_parameters, create_model
from seglearn.models.backbones import VGGBackbone
from seglearn.models.deeplabv1 import VARIANTS, DeepLabV1Head, decimate_fc6, decimate_fc7

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


@pytest.fixture(scope="module")
def model() -> SegmentationModel:
    torch.manual_seed(0)
    return create_model("deeplabv1", 21, aux_loss=True).eval()


# arXiv:1412.7062 Table 2: 134.3 M, 65.1 M, 65.1 M, 20.5 M parameters (21 classes)
@pytest.mark.parametrize(
    ("variant", "exact", "paper"),
    [
        ("largefov", 20_505_429, 20.5e6),
        ("4x4", 65_140_565, 65.1e6),
        ("deeplab", 65_140_565, 65.1e6),
        ("7x7", 134_346_581, 134.3e6),
    ],
)
def test_parameter_counts_match_the_paper(variant: str, exact: int, paper: float) -> None:
    with torch.device("meta"):  # counting needs no memory or initialisation
        m = create_model("deeplabv1", 21, variant=variant)
    assert count_parameters(m) == exact
    assert round(exact / 1e5) == round(paper / 1e5)


def test_largefov_layout(model: SegmentationModel) -> None:
    head = model.head
    assert (head.fc6.kernel_size, head.fc6.dilation, head.fc6.padding, head.fc6.out_channels) == (
        (3, 3),
        (12, 12),
        (12, 12),
        1024,
    )
    assert (head.fc7.kernel_size, head.fc7.in_channels, head.fc7.out_channels) == ((1, 1), 1024, 1024)
    pools = [m for m in model.backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride) for p in pools[3:]] == [(3, 1), (3, 1)]  # pool4, pool5 keep the resolution
    assert [(p.kernel_size, p.stride) for p in pools[:3]] == [(2, 2)] * 3
    conv5 = [m for m in model.backbone.stage(4) if isinstance(m, nn.Conv2d)]
    assert [m.dilation for m in conv5] == [(2, 2)] * 3
    assert model.backbone.classifier is None
    assert VARIANTS["4x4"].kernel_size == 4 and VARIANTS["4x4"].rate == 8


def test_output_stride_8_and_any_input_size(model: SegmentationModel) -> None:
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 32, 48))
        assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (4, 6), (4, 6)]
        for size in [(67, 93), (33, 17)]:
            out = model(torch.randn(1, 3, *size))
            assert out["out"].shape == (1, 21, *size)
            assert out["aux"].shape == (1, 21, *size)


def test_caffe_pooling_gives_deeplabs_41x41_for_321() -> None:
    m = create_model("deeplabv1", 5, caffe_pooling=True).eval()
    pools = [p for p in m.backbone.features if isinstance(p, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding, p.ceil_mode) for p in pools[:3]] == [(3, 2, 1, True)] * 3
    x = torch.zeros(1, 1, 321, 321)
    sizes = []
    for p in pools:  # 3x3 convs keep the size, so the pools alone decide it
        x = p(x)
        sizes.append(x.shape[-1])
    assert sizes == [161, 81, 41, 41, 41]
    with torch.no_grad():
        assert m(torch.randn(1, 3, 100, 75))["out"].shape == (1, 5, 100, 75)


@pytest.mark.parametrize(("kernel", "taps"), [(3, [0, 3, 6]), (4, [0, 2, 4, 6]), (7, list(range(7)))])
@pytest.mark.parametrize("channels", [1024, 4096])
def test_fc6_decimation_picks_exactly_the_intended_filters_and_taps(kernel, taps, channels) -> None:
    in_channels = 2
    # every (filter, channel, y, x) position of the 4096 x (C*7*7) matrix holds its own flat index
    weight = torch.arange(4096 * in_channels * 49, dtype=torch.float64).view(4096, in_channels * 49)
    bias = torch.arange(4096, dtype=torch.float64) + 0.5
    w6, b6 = decimate_fc6(weight, bias, kernel, channels)
    assert w6.shape == (channels, in_channels, kernel, kernel)
    filters = torch.arange(0, 4096, 4096 // channels, dtype=torch.float64)
    c = torch.arange(in_channels, dtype=torch.float64)
    t = torch.tensor(taps, dtype=torch.float64)
    expected = filters.view(-1, 1, 1, 1) * (in_channels * 49) + c.view(1, -1, 1, 1) * 49 + 7 * t.view(1, 1, -1, 1) + t
    assert torch.equal(w6, expected)
    assert torch.equal(b6, filters + 0.5)


@pytest.mark.parametrize("channels", [1024, 4096])
def test_fc7_decimation_keeps_every_nth_output_and_input(channels: int) -> None:
    weight = torch.arange(4096 * 4096, dtype=torch.float64).view(4096, 4096)
    bias = torch.arange(4096, dtype=torch.float64)
    w7, b7 = decimate_fc7(weight, bias, channels)
    kept = torch.arange(0, 4096, 4096 // channels, dtype=torch.float64)
    assert w7.shape == (channels, channels, 1, 1)
    assert torch.equal(w7[:, :, 0, 0], kept[:, None] * 4096 + kept[None, :])
    assert torch.equal(b7, kept)


def test_decimation_rejects_impossible_shapes() -> None:
    weight, bias = torch.zeros(4096, 49), torch.zeros(4096)
    with pytest.raises(ValueError, match="decimated"):
        decimate_fc6(weight, bias, 5, 1024)
    with pytest.raises(ValueError, match="divisor"):
        decimate_fc6(weight, bias, 3, 1000)


def test_head_takes_decimated_weights_from_the_vgg_classifier() -> None:
    with torch.device("meta"):
        vgg = VGGBackbone("vgg16", keep_classifier=True)
    vgg.to_empty(device="cpu")
    fc6, fc7 = vgg.classifier[0], vgg.classifier[3]
    with torch.no_grad():
        # value = filter + tap / 64: exact in float32, distinct for every (filter, tap)
        taps = torch.arange(49, dtype=torch.float32) / 64
        fc6.weight.copy_((torch.arange(4096.0)[:, None, None] + taps).expand(4096, 512, 49).reshape(4096, -1))
        fc6.bias.copy_(torch.arange(4096.0))
        fc7.weight.copy_(torch.arange(4096.0)[:, None] * 4096 + torch.arange(4096.0))
        fc7.bias.copy_(-torch.arange(4096.0))
    head = DeepLabV1Head(21, VARIANTS["largefov"])
    head.load_vgg_classifier(vgg.classifier)
    kept = torch.arange(0.0, 4096, 4)
    tap = torch.tensor([0.0, 3, 6])
    expected6 = kept.view(-1, 1, 1, 1) + (7 * tap.view(-1, 1) + tap) / 64  # (1024, 1, 3, 3), same for all 512 inputs
    assert torch.equal(head.fc6.weight, expected6.expand(1024, 512, 3, 3))
    assert head.fc6.weight[5, 17, 2, 1].item() == 20.0 + (7 * 6 + 3) / 64
    assert torch.equal(head.fc6.bias, kept)
    assert torch.equal(head.fc7.weight[:, :, 0, 0], kept[:, None] * 4096 + kept[None, :])
    assert torch.equal(head.fc7.bias, -kept)


def test_pretrained_backbone_loads_vgg_and_decimates_its_classifier(tmp_path, monkeypatch) -> None:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VGGBackbone("vgg16")._modules["features"].state_dict().items()}
    state = {}
    for i, (key, shape) in enumerate(shapes.items()):
        state[f"features.{key}"] = torch.full((1,) * len(shape), float(i)).expand(shape)  # tiny file
    state["classifier.0.weight"] = torch.arange(4096.0)[:, None].expand(4096, 25088)
    state["classifier.0.bias"] = torch.arange(4096.0)
    state["classifier.3.weight"] = torch.arange(4096.0)[None, :].expand(4096, 4096)
    state["classifier.3.bias"] = torch.arange(4096.0) + 1
    state["classifier.6.weight"] = torch.zeros(1, 1).expand(1000, 4096)
    state["classifier.6.bias"] = torch.zeros(1000)
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / "vgg16-397923af.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    m = create_model("deeplabv1", 21, pretrained_backbone=True)
    assert torch.equal(m.backbone.features[0].weight, torch.zeros(64, 3, 3, 3))
    assert torch.equal(m.backbone.features[28].bias, torch.full((512,), float(len(shapes) - 1)))
    assert torch.equal(m.head.fc6.weight, torch.arange(0.0, 4096, 4).view(-1, 1, 1, 1).expand(1024, 512, 3, 3))
    assert torch.equal(m.head.fc6.bias, torch.arange(0.0, 4096, 4))
    assert torch.equal(m.head.fc7.weight[:, :, 0, 0], torch.arange(0.0, 4096, 4).expand(1024, 1024))
    assert torch.equal(m.head.fc7.bias, torch.arange(1.0, 4097, 4))
    assert m.backbone.classifier is None


def test_backward_reaches_the_first_layer(model: SegmentationModel) -> None:
    model.train()
    try:
        x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 21, (2, 32, 32))
        out = model(x)
        (nn.functional.cross_entropy(out["out"], y) + nn.functional.cross_entropy(out["aux"], y)).backward()
        assert model.head.fc6.weight.grad.abs().sum() > 0
        assert model.backbone.features[0].weight.grad.abs().sum() > 0
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="variant"):
        create_model("deeplabv1", 21, variant="5x5")
    with pytest.raises(ValueError, match="pass one of: vgg16, vgg16_bn"):
        create_model("deeplabv1", 21, backbone="resnet50")
