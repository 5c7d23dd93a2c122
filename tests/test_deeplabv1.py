"""DeepLab v1: the paper's parameter counts, output stride 8 with atrous conv5/fc6, and exact fc6/fc7 decimation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglearn.models import SegmentationModel, count_parameters, create_model
from seglearn.models.backbones import VGGBackbone
from seglearn.models.deeplabv1 import VARIANTS, DeepLabV1Head, MScBranch, decimate_fc6, decimate_fc7

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


@pytest.fixture(scope="module")
def msc_model() -> SegmentationModel:
    torch.manual_seed(0)
    return create_model("deeplabv1", 21, msc=True, aux_loss=True).eval()


def test_msc_adds_five_128_channel_branches_before_fc8(msc_model: SegmentationModel) -> None:
    """Section 4.2: input + pool1..pool4, 128 3x3 then 128 1x1 filters each; fc8 sees fc7's 1024 + 5 * 128."""
    head = msc_model.head
    assert head.fc8.in_channels == 1024 + 5 * 128
    assert len(head.msc) == 5 and all(isinstance(b, MScBranch) for b in head.msc)
    first = [b[0] for b in head.msc]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding) for c in first] == [
        (3, 128, (3, 3), (8, 8), (1, 1)),  # the image: stride 8 brings it to fc7's grid
        (64, 128, (3, 3), (4, 4), (1, 1)),  # pool1 (H/2)
        (128, 128, (3, 3), (2, 2), (1, 1)),  # pool2 (H/4)
        (256, 128, (3, 3), (1, 1), (1, 1)),  # pool3 (H/8)
        (512, 128, (3, 3), (1, 1), (1, 1)),  # pool4 (H/8, kept by the atrous rewrite)
    ]
    assert all((b[3].in_channels, b[3].out_channels, b[3].kernel_size) == (128, 128, (1, 1)) for b in head.msc)
    assert msc_model.aux_head[0].in_channels == 512  # aux still taps pool4 with the input in front
    with torch.device("meta"):
        wide = create_model("deeplabv1", 21, variant="4x4", msc=True)
    assert wide.head.fc8.in_channels == 4096 + 640  # the branches keep 128 channels whatever fc7's width


@pytest.fixture(scope="module")
def msc_caffe() -> SegmentationModel:
    torch.manual_seed(0)
    return create_model("deeplabv1", 5, msc=True, caffe_pooling=True).eval()


@pytest.mark.parametrize("caffe_pooling", [False, True])
def test_msc_any_input_size(caffe_pooling: bool, msc_model: SegmentationModel, msc_caffe: SegmentationModel) -> None:
    m = msc_caffe if caffe_pooling else msc_model
    with torch.no_grad():
        for size in [(33, 17), (67, 93), (100, 75)]:
            out = m(torch.randn(1, 3, *size))
            assert out["out"].shape == (1, m.head.fc8.out_channels, *size)
    if not caffe_pooling:  # msc_model has the aux head: it still taps pool4
        assert out["aux"].shape == (1, 21, 100, 75)


def test_msc_branches_land_on_fc7s_grid_and_short_ones_are_zero_padded(msc_caffe: SegmentationModel) -> None:
    """Caffe pools at 8k+1 (81 -> 11): every branch map is fc7's size. At 100 x 75 fc7 is 14 x 11 but the strided
    image branch is 13 x 10: its missing last row and column reach fc8 as zeros."""
    m = msc_caffe
    sizes, fc8_in = [], []
    hooks = [b.register_forward_hook(lambda mod, inp, out: sizes.append(tuple(out.shape[-2:]))) for b in m.head.msc]
    hooks.append(m.head.fc8.register_forward_hook(lambda mod, inp, out: fc8_in.append(inp[0])))
    try:
        with torch.no_grad():
            m(torch.randn(1, 3, 81, 81))
            assert sizes == [(11, 11)] * 5 and fc8_in[0].shape[-2:] == (11, 11)
            sizes.clear()
            m(torch.rand(1, 3, 100, 75) + 1)
    finally:
        for h in hooks:
            h.remove()
    assert sizes[0] == (13, 10) and sizes[3] == (14, 11)  # image branch vs pool3 branch (stride 1)
    image_branch = fc8_in[1][0, 1024 : 1024 + 128]
    assert (image_branch[:, -1] == 0).all() and (image_branch[:, :, -1] == 0).all()
    assert image_branch[:, :-1, :-1].abs().sum() > 0


def test_msc_parameter_delta_is_the_five_branches() -> None:
    with torch.device("meta"):
        plain = count_parameters(create_model("deeplabv1", 21))
        msc = count_parameters(create_model("deeplabv1", 21, msc=True))
    conv3 = sum(c * 128 * 9 + 128 for c in (3, 64, 128, 256, 512))  # 3x3 layers on the input, pool1..pool4
    conv1 = 5 * (128 * 128 + 128)  # 1x1 layers
    fc8 = 5 * 128 * 21  # fc8's new input columns (its bias is shared)
    assert msc - plain == conv3 + conv1 + fc8 == 1_206_016
    assert plain == 20_505_429  # msc=False: DeepLab-LargeFOV as before


def test_msc_false_is_unchanged(model: SegmentationModel, msc_model: SegmentationModel) -> None:
    assert model.head.msc is None and model.head.fc8.in_channels == 1024
    assert not any("msc" in k for k in model.state_dict())
    with torch.no_grad():
        assert len(model.backbone(torch.zeros(1, 3, 16, 16))) == 5  # pool1..pool5, no input in front
        feats = msc_model.backbone(torch.zeros(1, 3, 16, 16))
    assert len(feats) == 6 and feats[0].shape == (1, 3, 16, 16)
    assert msc_model.backbone.channels == [3, 64, 128, 256, 512, 512]
    assert msc_model.backbone.reductions == [1, 2, 4, 8, 8, 8]
    # same backbone and fc6/fc7 keys: a plain DeepLab's VGG weights load into the MSc model as they are
    keys = {k for k in model.state_dict() if not k.startswith("head.fc8")}
    assert keys <= set(msc_model.state_dict())


def test_msc_backward_reaches_every_branch(msc_model: SegmentationModel) -> None:
    msc_model.train()
    try:
        x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 21, (2, 32, 32))
        nn.functional.cross_entropy(msc_model(x)["out"], y).backward()
        assert all(b[0].weight.grad.abs().sum() > 0 for b in msc_model.head.msc)
        assert msc_model.backbone.features[0].weight.grad.abs().sum() > 0
    finally:
        msc_model.zero_grad(set_to_none=True)
        msc_model.eval()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="variant"):
        create_model("deeplabv1", 21, variant="5x5")
    with pytest.raises(ValueError, match="pass one of: vgg16, vgg16_bn"):
        create_model("deeplabv1", 21, backbone="resnet50")
