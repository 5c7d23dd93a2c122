"""Backbones: feature shapes and channels, output stride 8/16 by dilation, pretrained weights through torchvision."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from seglearn.models.backbones import ResNetBackbone, VGGBackbone, build_backbone

RESNET_CHANNELS = {
    "resnet18": [64, 128, 256, 512],
    "resnet34": [64, 128, 256, 512],
    "resnet50": [256, 512, 1024, 2048],
    "resnet101": [256, 512, 1024, 2048],
}


def fake_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fn: str, weights_enum: str) -> dict:
    """Write a state dict of known random values where torchvision's weights API looks for ``weights_enum``.

    Big tensors are a random row expanded over their first dimension (stride 0), so the file stays a few MB even
    for VGG16's 138 M parameters; ``load_state_dict`` copies them into ordinary parameters.
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in getattr(torchvision.models, fn)().state_dict().items()}
    gen = torch.Generator().manual_seed(7)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(3)
        elif len(shape) >= 2 and shape.numel() > 100_000:
            state[key] = torch.randn(1, *shape[1:], generator=gen).expand(shape)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen)
    url = getattr(torchvision.models, weights_enum).IMAGENET1K_V1.url
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / url.split("/")[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return state


def backbone_state(tv_state: dict) -> dict:
    """torchvision ResNet state-dict keys -> ResNetBackbone keys (conv1/bn1 live in ``stem``; fc is dropped)."""
    rename = {"conv1": "stem.0", "bn1": "stem.1"}
    out = {}
    for key, value in tv_state.items():
        first, rest = key.split(".", 1)
        if first != "fc":
            out[f"{rename.get(first, first)}.{rest}"] = value
    return out


@pytest.fixture(scope="module")
def resnets() -> dict[str, ResNetBackbone]:
    torch.manual_seed(0)
    return {name: ResNetBackbone(name).eval() for name in ("resnet18", "resnet34", "resnet50")}


@pytest.mark.parametrize("name", ["vgg16", "vgg16_bn"])
def test_vgg_stage_shapes(name):
    net = VGGBackbone(name, keep_classifier=False).eval()
    assert net.classifier is None
    with torch.no_grad():
        feats = net(torch.randn(2, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (2, c, 64 // r, 96 // r) for c, r in zip(net.channels, net.reductions, strict=True)
    ]
    assert net.channels == [64, 128, 256, 512, 512] and net.reductions == [2, 4, 8, 16, 32]
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13
    assert len([m for m in net.features if isinstance(m, nn.BatchNorm2d)]) == (13 if name == "vgg16_bn" else 0)
    # Stage slices cover torchvision's `features` exactly, each ending with its max-pool.
    assert net.stage_slices[0][0] == 0 and net.stage_slices[-1][1] == len(net.features)
    assert all(isinstance(net.stage(i)[-1], nn.MaxPool2d) for i in range(5))


def test_vgg_keeps_torchvision_classifier_and_keys():
    with torch.device("meta"):  # structure only: skip initialising 138 M weights twice
        net = VGGBackbone("vgg16")
        tv_keys = set(torchvision.models.vgg16().state_dict())
    assert set(net.state_dict()) == tv_keys
    assert [m.out_features for m in net.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 1000]


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50"])
def test_resnet_stage_shapes(resnets, name):
    net = resnets[name]
    assert net.channels == RESNET_CHANNELS[name] and net.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [
        (1, c, 64 // r, 96 // r) for c, r in zip(net.channels, net.reductions, strict=True)
    ]


def test_resnet101_channels_on_tiny_input():
    net = ResNetBackbone("resnet101", output_stride=8).eval()
    assert len(net.layer3) == 23
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == RESNET_CHANNELS["resnet101"]
    assert [f.shape[-1] for f in feats] == [8, 4, 4, 4]


def test_resnet_matches_torchvision_forward():
    torch.manual_seed(1)
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    net = ResNetBackbone("resnet50", output_stride=8).eval()
    net.load_state_dict(backbone_state(tv.state_dict()))
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        ref = tv.layer4(tv.layer3(tv.layer2(tv.layer1(tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))
        assert torch.allclose(net(x)[-1], ref, atol=1e-5)


def _conv_layout(net: ResNetBackbone) -> list[tuple]:
    return [(n, m.stride, m.dilation, m.padding) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_set_output_stride_equals_building_at_that_stride(resnets, name, output_stride):
    built = ResNetBackbone(name, output_stride=output_stride).eval()
    built.load_state_dict(resnets[name].state_dict())
    switched = ResNetBackbone(name).eval()
    switched.load_state_dict(resnets[name].state_dict())
    switched.set_output_stride(output_stride)
    assert _conv_layout(switched) == _conv_layout(built)
    assert switched.output_stride == output_stride and switched.reductions == built.reductions
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        a, b = switched(x), built(x)
    for fa, fb, r in zip(a, b, built.reductions, strict=True):
        assert fa.shape[-1] == 32 // r
        assert torch.allclose(fa, fb, atol=1e-5)
    # Back to stride 32: the original network again.
    switched.set_output_stride(32)
    assert _conv_layout(switched) == _conv_layout(resnets[name])
    with torch.no_grad():
        assert torch.allclose(switched(x)[-1], resnets[name](x)[-1], atol=1e-5)


def test_dilated_resnet50_is_torchvision_layout():
    # torchvision's replace_stride_with_dilation is the reference for Bottleneck nets.
    net = ResNetBackbone("resnet50", output_stride=8)
    block0, block1 = net.layer4[0], net.layer4[1]
    assert block0.conv2.dilation == (2, 2) and block0.conv2.stride == (1, 1)  # first block keeps the previous rate
    assert block1.conv2.dilation == (4, 4) and block1.conv2.padding == (4, 4)
    assert net.layer3[0].downsample[0].stride == (1, 1)


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [2, 4, 8]), (8, [4, 8, 16])])
def test_multi_grid_rates(output_stride, rates):
    net = ResNetBackbone("resnet50", output_stride=output_stride, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in net.layer4] == rates
    assert net.multi_grid == (1, 2, 4)


def test_pretrained_resnet_loads_torchvision_weights(tmp_path, monkeypatch):
    state = fake_checkpoint(tmp_path, monkeypatch, "resnet18", "ResNet18_Weights")
    net = ResNetBackbone("resnet18", pretrained=True, output_stride=8)
    got = net.state_dict()
    expected = backbone_state(state)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_pretrained_vgg_loads_torchvision_weights(tmp_path, monkeypatch):
    state = fake_checkpoint(tmp_path, monkeypatch, "vgg16_bn", "VGG16_BN_Weights")
    net = VGGBackbone("vgg16_bn", pretrained=True)
    got = net.state_dict()
    assert set(got) == set(state)
    for key, value in state.items():
        assert torch.equal(got[key], value), key


def test_build_backbone_dispatch_and_errors():
    assert isinstance(build_backbone("resnet18"), ResNetBackbone)
    with torch.device("meta"):
        assert isinstance(build_backbone("vgg16", keep_classifier=False), VGGBackbone)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet152")
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        ResNetBackbone("resnet18", output_stride=4)
    with pytest.raises(ValueError, match="unknown VGG"):
        VGGBackbone("vgg19")


def test_switching_output_stride_keeps_multi_grid_unless_told_otherwise():
    from seglearn.models.backbones import ResNetBackbone

    net = ResNetBackbone("resnet18", output_stride=16, multi_grid=(1, 2, 4))
    net.set_output_stride(8)
    assert net.multi_grid == (1, 2, 4)
    assert [b.conv1.dilation[0] for b in net.layer4] == [4, 8]  # base 4 at OS8 times unit rates 1, 2
    net.set_output_stride(8, multi_grid=None)
    assert net.multi_grid is None


def test_pretrained_without_network_says_how_to_go_on(tmp_path, monkeypatch):
    # An empty cache and no network (a GPU box with no internet): torch.hub's real download path fails.
    from urllib.error import URLError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with torch.device("meta"), pytest.raises(RuntimeError) as info:
        VGGBackbone("vgg16", pretrained=True)
    message = str(info.value)
    expected = tmp_path / "hub" / "checkpoints" / torchvision.models.VGG16_Weights.IMAGENET1K_V1.url.split("/")[-1]
    assert str(expected) in message and "SEGLEARN_PRETRAINED=0" in message and "pretrained_backbone=False" in message
    assert not expected.exists()
