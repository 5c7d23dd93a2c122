"""DeepLabv3: torchvision twin (same outputs and parameter count), multi-grid, ASPP rates, OS16 <-> OS8 switch."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50

from seglearn.models import count_parameters, create_model, from_torchvision
from seglearn.models.deeplabv3 import DeepLabV3, from_torchvision_deeplabv3

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


def test_same_outputs_as_torchvision(tv_model: nn.Module) -> None:
    twin = from_torchvision(tv_model)
    assert isinstance(twin, DeepLabV3) and not twin.training
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


def test_parameter_count_equals_torchvisions(tv_model: nn.Module) -> None:
    with torch.device("meta"):
        same_config = create_model(
            "deeplabv3", 21, aux_loss=True, output_stride=8, multi_grid=None, atrous_rates=(12, 24, 36)
        )
        paper_config = create_model("deeplabv3", 21, aux_loss=True)  # dilation changes no parameter count
        no_aux = create_model("deeplabv3", 21)
    assert count_parameters(same_config) == count_parameters(tv_model) == 42_004_074
    assert count_parameters(paper_config) == 42_004_074
    tv_no_aux = sum(p.numel() for n, p in tv_model.named_parameters() if not n.startswith("aux_classifier"))
    assert count_parameters(no_aux) == tv_no_aux


def test_default_is_the_papers_best_configuration(model: DeepLabV3) -> None:
    assert model.output_stride == 16
    assert model.atrous_rates == (6, 12, 18)
    # multi-grid (1, 2, 4) times layer4's base rate 2 at OS16
    assert [block.conv2.dilation for block in model.backbone.layer4] == [(2, 2), (4, 4), (8, 8)]
    assert [block.conv2.stride for block in model.backbone.layer4] == [(1, 1)] * 3
    aspp = model.head.aspp
    assert len(aspp.convs) == 5  # 1x1, three atrous 3x3, image pooling
    assert all(isinstance(branch[1], nn.BatchNorm2d) for branch in aspp.convs[:4])
    assert aspp.project[0].in_channels == 5 * 256 and aspp.project[-1].p == 0.5
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 64, 96))
    assert feats[-1].shape[-2:] == (4, 6)


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


def test_set_output_stride_keeps_the_torchvision_layout(tv_model: nn.Module) -> None:
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
