"""SegNet: unpooling with pooling indices, VGG16-BN encoder and its weights, parameter counts, any input size."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from seglearn.models import count_parameters, create_model
from seglearn.models.segnet import SegNet, SegNetBasic


def conv_params(cin: int, cout: int, k: int, bn: bool = True) -> int:
    return cin * cout * k * k + cout + (2 * cout if bn else 0)


def argmax_mask(x: torch.Tensor) -> torch.Tensor:
    """1 where an element is the maximum of its 2x2 window (first in row-major order on ties), else 0."""
    n, c, h, w = x.shape
    windows = x[..., : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 2, 4, 3, 5)
    best = windows.reshape(n, c, h // 2, w // 2, 4).argmax(-1)
    mask = F.one_hot(best, 4).reshape(n, c, h // 2, w // 2, 2, 2).permute(0, 1, 2, 4, 3, 5)
    out = torch.zeros_like(x)
    out[..., : h // 2 * 2, : w // 2 * 2] = mask.reshape(n, c, h // 2 * 2, w // 2 * 2).to(x.dtype)
    return out


@pytest.fixture(scope="module")
def segnet() -> SegNet:
    torch.manual_seed(0)
    return create_model("segnet", 11).eval()


def test_unpooling_puts_values_back_at_argmax():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 10)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    up = nn.MaxUnpool2d(2, 2)(pooled, idx)
    mask = argmax_mask(x)
    assert mask.sum() == x.numel() / 4
    assert torch.equal(up, x * mask)
    # A hand-made case: the maxima sit at different corners of each window.
    x = torch.tensor([[[[1.0, 5, 0, 0], [2, 3, 0, 9], [7, 0, 0, 0], [0, 0, 4, 0]]]])
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    assert F.max_unpool2d(pooled, idx, 2, 2).tolist() == [[[[0, 5, 0, 0], [0, 0, 0, 9], [7, 0, 0, 0], [0, 0, 4, 0]]]]


def test_decoder_unpools_with_the_encoders_indices(segnet):
    seen = {}
    hooks = [
        segnet.encoder[4].register_forward_hook(lambda m, i, o: seen.__setitem__("pre_pool", o)),
        segnet.decoder[0].register_forward_pre_hook(lambda m, i: seen.__setitem__("unpooled", i[0])),
        segnet.decoder[4].register_forward_pre_hook(lambda m, i: seen.__setitem__("last_unpooled", i[0])),
    ]
    with torch.no_grad():
        out = segnet(torch.randn(1, 3, 64, 96))["out"]
    for h in hooks:
        h.remove()
    assert out.shape == (1, 11, 64, 96)
    pre = seen["pre_pool"]  # (1, 512, 4, 6), encoder stage 5 before pooling
    assert seen["unpooled"].shape == pre.shape
    assert torch.equal(seen["unpooled"], pre * argmax_mask(pre))
    last = seen["last_unpooled"]  # (1, 64, 64, 96): sparse, at most one non-zero per 2x2 window
    assert last.shape == (1, 64, 64, 96)
    assert (last != 0).float().mean() <= 0.25


def test_encoder_is_vgg16_bn_thirteen_convs(segnet):
    convs = [m for m in segnet.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 13 and len([m for m in segnet.decoder.modules() if isinstance(m, nn.Conv2d)]) == 13
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert not any(isinstance(m, nn.MaxPool2d) for m in segnet.modules())  # pooling with indices is in forward
    last = segnet.decoder[-1][-1]
    assert isinstance(last, nn.Conv2d) and last.out_channels == 11


def test_pretrained_encoder_loads_vgg16_bn(tmp_path, monkeypatch):
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16_bn().state_dict().items()}
    gen = torch.Generator().manual_seed(5)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(2)
        elif len(shape) >= 2:
            state[key] = torch.randn(1, *shape[1:], generator=gen).expand(shape)  # small file
        else:
            state[key] = torch.rand(shape, generator=gen) + 0.5
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url.split("/")[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = create_model("segnet", 11, pretrained_backbone=True)
    with torch.device("meta"):
        layout = list(torchvision.models.vgg16_bn().features)
    theirs = [i for i, m in enumerate(layout) if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    ours = [m for m in model.encoder.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
    assert len(ours) == len(theirs) == 26
    for module, index in zip(ours, theirs, strict=True):
        assert type(module) is type(layout[index])
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[f"features.{index}.{key}"]), (index, key)


def test_segnet_parameter_count():
    with torch.device("meta"):
        model = create_model("segnet", 11)
        encoder = count_parameters(torchvision.models.vgg16_bn().features)
    # Decoder mirrors the encoder; each conv has a bias and BN, except the last (64 -> classes, bias only).
    decoder = (
        3 * conv_params(512, 512, 3)
        + 2 * conv_params(512, 512, 3)
        + conv_params(512, 256, 3)
        + 2 * conv_params(256, 256, 3)
        + conv_params(256, 128, 3)
        + conv_params(128, 128, 3)
        + conv_params(128, 64, 3)
        + conv_params(64, 64, 3)
        + conv_params(64, 11, 3, bn=False)
    )
    total = count_parameters(model)
    assert total == encoder + decoder == 29_449_355
    # The paper (arXiv:1511.00561) gives 29.44 M for the 11-class CamVid model; its count leaves out a few
    # thousand bias/BN terms, so agree to 0.05 M.
    assert abs(total / 1e6 - 29.44) < 0.05


@pytest.mark.parametrize("size", [(45, 61), (20, 27)])
def test_segnet_any_size_forward_backward(segnet, size):
    segnet.train()
    x = torch.randn(1, 3, *size)
    out = segnet(x)["out"]
    segnet.eval()
    assert out.shape == (1, 11, *size)
    out.mean().backward()
    assert segnet.encoder[0][0].weight.grad.abs().sum() > 0
    segnet.zero_grad()


def test_padding_is_cropped_back(segnet):
    x = torch.randn(1, 3, 40, 50)
    with torch.no_grad():
        out = segnet(x)["out"]
        padded = segnet(F.pad(x, (0, 14, 0, 24)))["out"]  # 64 x 64: what forward pads to
    assert torch.allclose(out, padded[..., :40, :50], atol=1e-5)


def test_segnet_basic_structure_and_count():
    model = create_model("segnet_basic", 11)
    assert isinstance(model, SegNetBasic)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs[:-1]] == [(7, 7)] * 8 and convs[-1].kernel_size == (1, 1)
    assert all(c.out_channels == 64 for c in convs[:-1])
    assert not any(isinstance(m, nn.ReLU) for m in model.decoder.modules())  # the paper's decoder has no ReLU
    expected = conv_params(3, 64, 7) + 3 * conv_params(64, 64, 7) + 4 * conv_params(64, 64, 7) + 64 * 11 + 11
    assert count_parameters(model) == expected == 1_416_587
    x = torch.randn(2, 3, 45, 61)
    out = model(x)["out"]
    assert out.shape == (2, 11, 45, 61)
    out.mean().backward()
    assert model.encoder[0][0].weight.grad.abs().sum() > 0


def test_segnet_errors():
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("segnet", 11, aux_loss=True)
    with pytest.raises(ValueError, match="segnet does not take variant="):  # SegNet-Basic is `segnet_basic`
        create_model("segnet", 11, variant="basic")
    with pytest.raises(ValueError, match="pass one of: vgg16_bn"):
        create_model("segnet", 11, backbone="resnet50")
    with pytest.raises(ValueError, match="from scratch"):
        create_model("segnet_basic", 11, pretrained_backbone=True)
    with pytest.raises(ValueError, match="fixed encoder"):
        create_model("segnet_basic", 11, backbone="vgg16_bn")


def test_scatter_unpooling_equals_torchs_max_unpool():
    from seglearn.models.segnet import max_unpool2x2

    x = torch.randn(2, 3, 6, 10, requires_grad=True)
    pooled, idx = F.max_pool2d(x, 2, 2, return_indices=True)
    ref_in = pooled.detach().clone().requires_grad_(True)
    ours_in = pooled.detach().clone().requires_grad_(True)
    ref, ours = F.max_unpool2d(ref_in, idx, 2, 2), max_unpool2x2(ours_in, idx)
    assert torch.equal(ours, ref)
    weights = torch.randn_like(ref)
    (ref * weights).sum().backward()
    (ours * weights).sum().backward()
    assert torch.equal(ours_in.grad, ref_in.grad)
