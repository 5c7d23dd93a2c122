"""DeepLabv3: the paper's head and torchvision's (whose twin has torchvision's outputs and parameter count),
ResNet-101, multi-grid, ASPP rates, the cascaded "going deeper" model and the in-place output-stride switch."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50

from seglearn.models import count_parameters, create_model, from_torchvision, model_info
from seglearn.models.deeplabv3 import DeepLabV3, DeepLabV3Head, DeepLabV3PaperHead, from_torchvision_deeplabv3
from seglearn.models.deeplabv3_deeper import CascadedResNetBackbone, LastBlockClassifier

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


def randomize_batchnorm(model: nn.Module) -> None:
    """Non-trivial BN statistics and affine parameters, so a mismatch in any BN shows in the outputs."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)


@pytest.fixture(scope="module")
def tv_model() -> nn.Module:
    torch.manual_seed(0)
    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    randomize_batchnorm(tv)
    return tv.eval()


@pytest.fixture(scope="module")
def model() -> DeepLabV3:
    torch.manual_seed(0)
    return create_model("deeplabv3", 21, aux_loss=True).eval()


def test_torchvision_head_same_outputs_as_torchvision(tv_model: nn.Module) -> None:
    twin = from_torchvision(tv_model)
    assert isinstance(twin, DeepLabV3) and isinstance(twin.head, DeepLabV3Head) and not twin.training
    assert twin.model_spec["model_kwargs"]["head"] == "torchvision"
    assert (twin.output_stride, twin.atrous_rates, twin.backbone.multi_grid) == (8, (12, 24, 36), None)
    x = torch.randn(1, 3, 97, 129)
    with torch.no_grad():
        expected, got = tv_model(x), twin(x)
    assert set(got) == {"out", "aux"}
    for key in ("out", "aux"):
        assert got[key].shape == (1, 21, 97, 129)
        assert (got[key] - expected[key]).abs().max().item() < 1e-4
    # the twin records how to rebuild it, so it saves and loads like a model from create_model
    spec = twin.model_spec
    rebuilt = create_model(spec["model"], spec["num_classes"], **spec["model_kwargs"]).eval()
    rebuilt.load_state_dict(twin.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["out"], got["out"])


def test_torchvision_head_parameter_count_equals_torchvisions(tv_model: nn.Module) -> None:
    with torch.device("meta"):
        same_config = create_model(
            "deeplabv3", 21, aux_loss=True, output_stride=8, multi_grid=None, atrous_rates=(12, 24, 36),
            head="torchvision",
        )  # fmt: skip
        tv_head_os16 = create_model("deeplabv3", 21, aux_loss=True, head="torchvision")  # dilation adds no parameter
        no_aux = create_model("deeplabv3", 21, head="torchvision")
        paper = create_model("deeplabv3", 21, aux_loss=True)
    assert count_parameters(same_config) == count_parameters(tv_model) == 42_004_074
    assert count_parameters(tv_head_os16) == 42_004_074
    tv_no_aux = sum(p.numel() for n, p in tv_model.named_parameters() if not n.startswith("aux_classifier"))
    assert count_parameters(no_aux) == tv_no_aux
    # the paper's head lacks torchvision's 3x3 conv 256 -> 256 and its BN after the ASPP
    assert count_parameters(paper) == 42_004_074 - (256 * 256 * 9 + 2 * 256)


def test_default_is_the_papers_best_configuration(model: DeepLabV3) -> None:
    assert model.output_stride == 16
    assert model.atrous_rates == (6, 12, 18)
    assert isinstance(model.head, DeepLabV3PaperHead)
    # multi-grid (1, 2, 4) times layer4's base rate 2 at OS16
    assert [block.conv2.dilation for block in model.backbone.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert [block.conv2.stride for block in model.backbone.layer4] == [(1, 1)] * 3
    aspp = model.head.aspp
    assert len(aspp.convs) == 5  # 1x1, three atrous 3x3, image pooling
    assert all(isinstance(branch[1], nn.BatchNorm2d) for branch in aspp.convs[:4])
    assert aspp.project[0].in_channels == 5 * 256
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (4, 6)


def test_paper_head_is_aspp_then_a_1x1_classifier_without_dropout(model: DeepLabV3) -> None:
    aspp, classifier = model.head  # no 3x3 conv between them, unlike torchvision's head
    convs = [aspp.convs[0][0], *(b[0] for b in aspp.convs[1:4]), aspp.convs[4][1]]  # 1x1, 3x3 x 3, pooling's 1x1
    assert [c.kernel_size[0] for c in convs] == [1, 3, 3, 3, 1] and {c.out_channels for c in convs} == {256}
    project = [type(m) for m in aspp.project]
    assert project == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] and aspp.project[0].kernel_size == (1, 1)
    assert isinstance(classifier, nn.Conv2d) and (classifier.kernel_size, classifier.in_channels) == ((1, 1), 256)
    assert classifier.out_channels == 21
    assert not any(isinstance(m, nn.Dropout) for m in model.head.modules())


def test_torchvision_head_has_dropout_and_a_3x3_conv() -> None:
    with torch.device("meta"):
        tv_head = create_model("deeplabv3", 5, backbone="resnet18", head="torchvision").head
        paper_dropped = create_model("deeplabv3", 5, backbone="resnet18", dropout=0.1).head
        tv_undropped = create_model("deeplabv3", 5, backbone="resnet18", head="torchvision", dropout=0.0).head
    assert isinstance(tv_head, DeepLabV3Head) and tv_head.aspp.project[-1].p == 0.5
    assert [type(m) for m in list(tv_head)[1:]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d]
    assert tv_head[1].kernel_size == (3, 3)
    assert paper_dropped.aspp.project[-1].p == 0.1  # dropout= sets the dropout after the ASPP projection
    assert not any(isinstance(m, nn.Dropout) for m in tv_undropped.modules())
    with pytest.raises(ValueError, match="head must be one of: paper, torchvision"):
        create_model("deeplabv3", 5, head="deeplabv3plus")


def test_resnet101_backbone_with_imagenet_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = []
    build = torchvision.models.resnet101

    def no_download(*, weights=None, **kwargs) -> nn.Module:
        asked.append(weights)
        return build(weights=None, **kwargs)

    monkeypatch.setattr(torchvision.models, "resnet101", no_download)
    assert "resnet101" in model_info("deeplabv3").backbones
    with torch.device("meta"):
        r101 = create_model("deeplabv3", 21, backbone="resnet101", pretrained_backbone=True)
        deeper = create_model("deeplabv3", 21, backbone="resnet101", cascade_blocks=3)
    assert asked == [torchvision.models.ResNet101_Weights.IMAGENET1K_V1, None]
    assert [len(layer) for layer in (r101.backbone.layer1, r101.backbone.layer2, r101.backbone.layer3)] == [3, 4, 23]
    assert r101.backbone.channels[-1] == 2048 and r101.atrous_rates == (6, 12, 18)
    assert [b.conv2.dilation[0] for b in r101.backbone.layer4] == [2, 4, 8]
    assert [b.conv2.dilation[0] for b in deeper.backbone.layer7] == [16, 32, 64]


def test_set_output_stride_moves_backbone_and_aspp_together(model: DeepLabV3) -> None:
    x = torch.randn(1, 3, 65, 81)
    try:
        model.set_output_stride(8)
        assert model.atrous_rates == (12, 24, 36)
        assert [b.conv2.dilation for b in model.backbone.layer4] == [(4, 4), (8, 8), (16, 16)]
        assert model.backbone.layer3[0].conv2.stride == (1, 1)
        with torch.no_grad():
            assert model.backbone(x)[-1].shape[-2:] == (9, 11)
            out8 = model(x)["out"]
        assert out8.shape == (1, 21, 65, 81)
        model.set_output_stride(16)
        assert model.atrous_rates == (6, 12, 18)
        assert [b.conv2.dilation for b in model.backbone.layer4] == [(2, 2), (4, 4), (8, 8)]
        with torch.no_grad():
            assert model.backbone(x)[-1].shape[-2:] == (5, 6)
    finally:
        model.set_output_stride(16)


def test_torchvision_head_twin_set_output_stride_keeps_the_torchvision_layout(tv_model: nn.Module) -> None:
    twin = from_torchvision_deeplabv3(tv_model)
    twin.set_output_stride(16)
    assert twin.atrous_rates == (6, 12, 18)
    fresh = create_model("deeplabv3", 21, output_stride=16, multi_grid=None)
    got = [m.dilation for m in twin.backbone.modules() if isinstance(m, nn.Conv2d)]
    expected = [m.dilation for m in fresh.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert got == expected
    with pytest.raises(ValueError, match="whole rates"):
        create_model("deeplabv3", 2, atrous_rates=(5, 7, 9)).set_output_stride(32)


@pytest.mark.parametrize("size", [(33, 47), (64, 64), (17, 23)])
def test_any_input_size(model: DeepLabV3, size: tuple[int, int]) -> None:
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out["out"].shape == (1, 21, *size) and out["aux"].shape == (1, 21, *size)


def test_training_batch_of_one_gets_a_clear_error(model: DeepLabV3) -> None:
    model.train()
    try:
        with pytest.raises(ValueError, match=r"batch size >= 2.*drop_last=True.*model\.eval\(\)"):
            model(torch.randn(1, 3, 32, 32))
        out = model(torch.randn(2, 3, 32, 32))  # two images are fine
        out["out"].mean().backward()
        assert model.head.aspp.convs[4][1].weight.grad is not None
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32))["out"].shape == (1, 21, 32, 32)


def test_resnet18_backbone_and_bad_arguments() -> None:
    small = create_model("deeplabv3", 3, backbone="resnet18", output_stride=8).eval()
    assert small.head.aspp.convs[0][0].in_channels == 512 and small.atrous_rates == (12, 24, 36)
    with torch.no_grad():
        assert small(torch.randn(1, 3, 40, 40))["out"].shape == (1, 3, 40, 40)
    with pytest.raises(ValueError, match="pass one of: resnet50"):
        create_model("deeplabv3", 21, backbone="vgg16")
    with pytest.raises(ValueError, match="output_stride"):
        create_model("deeplabv3", 21, output_stride=4)


def test_from_torchvision_rejects_other_backbones() -> None:
    from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

    with torch.device("meta"):
        mobile = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    with pytest.raises(TypeError, match="ResNet"):
        from_torchvision_deeplabv3(mobile)


def test_multi_scale_flip_inference_through_predict(model: DeepLabV3) -> None:
    from seglearn.engine import predict

    images = torch.randn(1, 3, 45, 61)
    probs = predict(model, images, scales=(0.75, 1.0, 1.25), flip=True)
    assert probs.shape == (1, 21, 45, 61)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 45, 61))
    with torch.no_grad():
        single = model(images)["out"].softmax(1)
    torch.testing.assert_close(predict(model, images), single)


def conv_layout(backbone: nn.Module) -> list[tuple]:
    """Stride, dilation and padding of every conv and shortcut pool, in module order."""
    return [
        (name, m.stride, m.dilation, m.padding)
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Conv2d | nn.MaxPool2d)
    ]


# The paper's Fig. 3 and §3.2, with ResNet-50 and block5..block7 (cascade_blocks=3): per block, the stride of its
# first unit and the atrous rate of each unit's 3x3 conv. Past the output stride a block dilates instead of striding
# and doubles the rate; from block4 on, unit i's rate is the block's rate times multi_grid[i].
R1, R2 = (1,) * 6, (1,) + (2,) * 5  # layer3's six units: undilated; at OS8 dilated (torchvision: the first keeps 1)
PAPER_LAYOUTS = [
    (16, (1, 1, 1), {3: (2, R1), 4: (1, (2, 2, 2)), 5: (1, (4, 4, 4)), 6: (1, (8, 8, 8)), 7: (1, (16, 16, 16))}),
    (16, (1, 2, 4), {3: (2, R1), 4: (1, (2, 4, 8)), 5: (1, (4, 8, 16)), 6: (1, (8, 16, 32)), 7: (1, (16, 32, 64))}),
    (8, (1, 2, 4), {3: (1, R2), 4: (1, (4, 8, 16)), 5: (1, (8, 16, 32)), 6: (1, (16, 32, 64)), 7: (1, (32, 64, 128))}),
    (32, None, {3: (2, R1), 4: (2, (1, 1, 1)), 5: (1, (2, 2, 2)), 6: (1, (4, 4, 4)), 7: (1, (8, 8, 8))}),
    (64, (1, 2, 1), {3: (2, R1), 4: (2, (1, 2, 1)), 5: (2, (1, 2, 1)), 6: (1, (2, 4, 2)), 7: (1, (4, 8, 4))}),
    (256, None, {3: (2, R1), 4: (2, (1, 1, 1)), 5: (2, (1, 1, 1)), 6: (2, (1, 1, 1)), 7: (2, (1, 1, 1))}),
]


@pytest.mark.parametrize(("output_stride", "multi_grid", "expected"), PAPER_LAYOUTS)
def test_cascade_strides_and_rates_follow_the_paper(output_stride, multi_grid, expected) -> None:
    with torch.device("meta"):
        model = create_model("deeplabv3", 21, cascade_blocks=3, output_stride=output_stride, multi_grid=multi_grid)
    net = model.backbone
    assert isinstance(net, CascadedResNetBackbone) and len(net.layers) == 7
    assert [u.conv2.stride[0] for u in net.layer2] == [2, 1, 1, 1] and {u.conv2.dilation[0] for u in net.layer2} == {1}
    for j, (stride, rates) in expected.items():
        layer = getattr(net, f"layer{j}")
        assert [u.conv2.stride[0] for u in layer] == [stride] + [1] * (len(layer) - 1), f"layer{j}"
        assert tuple(u.conv2.dilation[0] for u in layer) == rates, f"layer{j}"
        assert all(u.conv2.padding == u.conv2.dilation for u in layer)  # 3x3 convs keep the size
        shortcut = layer[0].downsample
        assert (shortcut.stride if j > 4 else shortcut[0].stride[0]) == stride
        assert all(u.conv1.kernel_size == u.conv3.kernel_size == (1, 1) and u.conv1.stride == (1, 1) for u in layer)


@pytest.mark.parametrize(
    ("cascade_blocks", "output_stride"),
    [(k, s) for k in range(4) for s in (8, 16, 32, 64, 128, 256) if s <= 32 * 2**k],
)
def test_feature_map_is_input_over_output_stride(cascade_blocks: int, output_stride: int) -> None:
    with torch.device("meta"):  # shapes only: fast at any stride and size
        model = create_model("deeplabv3", 3, cascade_blocks=cascade_blocks, output_stride=output_stride).eval()
        x = torch.empty(1, 3, 2 * output_stride, 3 * output_stride)
        feats = model.backbone(x)
        out = model(x)["out"]
    assert [f.shape[-2:] for f in feats] == [
        (2 * output_stride // r, 3 * output_stride // r) for r in (4, 8, min(16, output_stride), output_stride)
    ]
    assert feats[-1].shape[1] == 2048 and out.shape == (1, 3, 2 * output_stride, 3 * output_stride)


def test_cascade_model_has_no_aspp_and_a_1x1_classifier_on_block7() -> None:
    torch.manual_seed(0)
    model = create_model("deeplabv3", 4, backbone="resnet18", cascade_blocks=3, aux_loss=True).eval()
    assert isinstance(model.head, LastBlockClassifier) and model.head.kernel_size == (1, 1)
    assert model.head.in_channels == 512 and model.atrous_rates == ()
    assert not any(isinstance(m, nn.Dropout) for m in model.head.modules())
    # every appended block is a fresh copy of block4's layout: same units, no projection shortcut
    net = model.backbone
    for block in (net.layer5, net.layer6, net.layer7):
        assert [type(u) for u in block] == [type(u) for u in net.layer4]
        assert isinstance(block[0].downsample, nn.MaxPool2d) and block[0].conv1.in_channels == 512
        assert not torch.equal(block[0].conv1.weight, net.layer4[1].conv1.weight)
    # each unit is shaped as layer4's second (512 in and out), so parameters do not depend on the output stride
    assert sum(p.numel() for p in net.layer5.parameters()) == 2 * sum(p.numel() for p in net.layer4[1].parameters())
    with torch.no_grad():
        out = model(torch.randn(2, 3, 45, 61))
    assert out["out"].shape == out["aux"].shape == (2, 4, 45, 61)
    with torch.no_grad():
        assert model.backbone(torch.randn(1, 3, 48, 64))[-1].shape[-2:] == (3, 4)  # OS16


def test_cascade_refuses_what_it_does_not_have() -> None:
    with pytest.raises(ValueError, match="no ASPP"):
        create_model("deeplabv3", 3, backbone="resnet18", cascade_blocks=2, head="torchvision")
    with pytest.raises(ValueError, match="no ASPP"):
        create_model("deeplabv3", 3, backbone="resnet18", cascade_blocks=1, atrous_rates=(6, 12, 18))
    with pytest.raises(ValueError, match="cascade_blocks must be 0 to 3"):
        create_model("deeplabv3", 3, backbone="resnet18", cascade_blocks=4)
    with pytest.raises(ValueError, match="output_stride must be 8, 16, 32, 64 with cascade_blocks=1, got 128"):
        create_model("deeplabv3", 3, backbone="resnet18", cascade_blocks=1, output_stride=128)
    with pytest.raises(ValueError, match="output_stride must be 8, 16, 32, got 64"):
        create_model("deeplabv3", 3, backbone="resnet18", output_stride=64)
    model = create_model("deeplabv3", 3, backbone="resnet18", cascade_blocks=1)
    with pytest.raises(ValueError, match="output_stride must be one of 8, 16, 32, 64 with 1 cascaded"):
        model.set_output_stride(128)
    assert model.output_stride == 16


@pytest.mark.parametrize(
    ("backbone", "cascade_blocks", "head", "target"),
    [
        ("resnet50", 0, "paper", 8),
        ("resnet18", 0, "torchvision", 8),
        ("resnet50", 1, "paper", 8),
        ("resnet18", 3, "paper", 8),
        ("resnet18", 3, "paper", 64),
    ],
)
def test_set_output_stride_equals_a_model_built_at_that_stride(backbone, cascade_blocks, head, target) -> None:
    # §4.1: train at OS16, then fine-tune / evaluate the same weights at OS8
    kwargs = {"backbone": backbone, "aux_loss": True, "cascade_blocks": cascade_blocks}
    if not cascade_blocks:
        kwargs["head"] = head
    torch.manual_seed(0)
    switched = create_model("deeplabv3", 5, output_stride=16, **kwargs)
    randomize_batchnorm(switched)
    switched.eval()
    before = {k: v.clone() for k, v in switched.state_dict().items()}
    assert switched.set_output_stride(target) is switched
    torch.manual_seed(1)
    built = create_model("deeplabv3", 5, output_stride=target, **kwargs).eval()
    built.load_state_dict(switched.state_dict())
    assert all(torch.equal(before[k], v) for k, v in switched.state_dict().items())  # no weight touched
    assert conv_layout(switched.backbone) == conv_layout(built.backbone)
    assert switched.output_stride == target and switched.atrous_rates == built.atrous_rates
    x = torch.randn(2, 3, 2 * target + 3, 3 * target - 5)
    with torch.no_grad():
        got, expected = switched(x), built(x)
        feats = switched.backbone(x)
    for key in ("out", "aux"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)
    assert feats[-1].shape[-2:] == (-(-x.shape[2] // target), -(-x.shape[3] // target))  # ceil(input / OS)
