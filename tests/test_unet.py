"""U-Net: the paper's channel plan and 31.04 M parameters, depth/width/up-mode options, any input size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglearn.models import SegmentationModel, count_parameters, create_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def unet_params(num_classes: int, depth: int = 4, base: int = 64, in_channels: int = 3, bilinear: bool = False) -> int:
    """Parameters of a U-Net with bias-free 3x3 convs + BN, 2x2 transposed up-convs (or 1x1 after bilinear)."""

    def double(cin: int, cout: int) -> int:
        return cin * cout * 9 + cout * cout * 9 + 4 * cout  # two convs, two BNs (weight + bias)

    widths = [base * 2**i for i in range(depth + 1)]
    total = double(in_channels, widths[0]) + sum(double(widths[i], widths[i + 1]) for i in range(depth))
    for i in range(depth):
        cin = widths[i + 1]
        up = cin * (cin // 2) * (1 if bilinear else 4) + cin // 2
        total += up + double(cin, widths[i])
    return total + widths[0] * num_classes + num_classes


@pytest.fixture(scope="module")
def paper_unet() -> SegmentationModel:
    torch.manual_seed(0)
    return create_model("unet", 2).eval()


def test_paper_configuration_parameter_count(paper_unet):
    # 31.04 M for 2 classes: the count of milesial/Pytorch-UNet's UNet(3, 2) (padded convs + BN), the common
    # re-implementation; the paper itself does not state a parameter count.
    assert count_parameters(paper_unet) == unet_params(2) == 31_037_698
    assert abs(count_parameters(paper_unet) / 1e6 - 31.04) < 0.005


def test_paper_channel_plan(paper_unet):
    shapes = {}
    paper_unet.backbone.down[-1].register_forward_hook(lambda m, i, o: shapes.__setitem__("bottom", o.shape))
    paper_unet.head.up[-1].register_forward_hook(lambda m, i, o: shapes.__setitem__("top", o.shape))
    with torch.no_grad():
        out = paper_unet(torch.randn(1, 3, 64, 80))["out"]
    assert out.shape == (1, 2, 64, 80)
    assert shapes["bottom"] == (1, 1024, 4, 5) and shapes["top"] == (1, 64, 64, 80)
    assert [d[0].out_channels for d in paper_unet.backbone.down] == [128, 256, 512, 1024]
    assert all(isinstance(u.up, nn.ConvTranspose2d) and u.up.kernel_size == (2, 2) for u in paper_unet.head.up)


def test_equals_hand_written_reference(paper_unet, load_benchmark):
    # benchmarks/encdec_speed.py times against this independent, loop-free U-Net; with copied weights it must agree.
    bench = load_benchmark("encdec_speed")
    ref = bench.ReferenceUNet(3, 2).eval()
    bench.copy_weights(paper_unet, ref)
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert (paper_unet(x)["out"] - ref(x)["out"]).abs().max() < 1e-4


@pytest.mark.parametrize("size", [(45, 61), (7, 9), (16, 33)])
def test_any_input_size_forward_backward(size):
    torch.manual_seed(0)
    model = create_model("unet", 3, depth=3, base_channels=8)
    x = torch.randn(2, 3, *size)
    out = model(x)["out"]
    assert out.shape == (2, 3, *size)
    out.mean().backward()
    assert model.backbone.inc[0].weight.grad.abs().sum() > 0 and model.head.up[0].up.weight.grad.abs().sum() > 0


def test_paper_unet_backward_on_odd_size(paper_unet):
    paper_unet.train()
    out = paper_unet(torch.randn(1, 3, 29, 35))["out"]
    paper_unet.eval()
    assert out.shape == (1, 2, 29, 35)
    out.mean().backward()
    assert paper_unet.backbone.down[-1][0].weight.grad.abs().sum() > 0
    paper_unet.zero_grad()


def test_padding_is_cropped_back():
    torch.manual_seed(0)
    model = create_model("unet", 4, depth=2, base_channels=4).eval()
    x = torch.randn(1, 3, 13, 18)
    with torch.no_grad():
        out = model(x)["out"]
        padded = model(F.pad(x, (0, 2, 0, 3)))["out"]  # 16 x 20: multiples of 2**depth
    assert torch.allclose(out, padded[..., :13, :18], atol=1e-6)


@pytest.mark.parametrize(("depth", "base"), [(2, 16), (5, 4)])
def test_depth_and_width(depth, base):
    model = create_model("unet", 5, depth=depth, base_channels=base)
    assert len(model.backbone.down) == len(model.head.up) == depth
    assert model.backbone.down[-1][0].out_channels == base * 2**depth
    assert count_parameters(model) == unet_params(5, depth, base)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 33, 31))["out"].shape == (1, 5, 33, 31)


def test_bilinear_up_mode():
    model = create_model("unet", 3, base_channels=8, up_mode="bilinear")
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    ups = [m for m in model.modules() if isinstance(m, nn.Upsample)]
    assert len(ups) == 4 and all(u.mode == "bilinear" for u in ups)
    assert count_parameters(model) == unet_params(3, base=8, bilinear=True)
    out = model(torch.randn(1, 3, 21, 30))["out"]
    assert out.shape == (1, 3, 21, 30)
    out.mean().backward()


def test_in_channels():
    model = create_model("unet", 2, in_channels=1, depth=2, base_channels=4)
    assert model(torch.randn(1, 1, 10, 10))["out"].shape == (1, 2, 10, 10)


def test_unet_errors():
    with pytest.raises(ValueError, match="up_mode"):
        create_model("unet", 2, up_mode="nearest")
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("unet", 2, aux_loss=True)
    with pytest.raises(ValueError, match="no pretrained backbone"):
        create_model("unet", 2, pretrained_backbone=True)
    with pytest.raises(ValueError, match="fixed encoder"):
        create_model("unet", 2, backbone="resnet18")
    with pytest.raises(ValueError, match="depth"):
        create_model("unet", 2, depth=0)


def test_state_dict_of_the_former_standalone_unet_loads():
    """Model files from before U-Net was a SegmentationModel (keys inc/down/up/classifier) load unchanged."""
    torch.manual_seed(0)
    model = create_model("unet", 3, depth=2, base_channels=4).eval()
    old = {k.split(".", 1)[1]: v for k, v in model.state_dict().items()}  # backbone.inc.0.weight -> inc.0.weight
    assert {k.split(".")[0] for k in old} == {"inc", "down", "up", "classifier"}
    fresh = create_model("unet", 3, depth=2, base_channels=4).eval()
    fresh.load_state_dict(old)
    x = torch.randn(1, 3, 20, 24)
    with torch.no_grad():
        assert torch.equal(fresh(x)["out"], model(x)["out"])
    fresh.load_state_dict(model.state_dict())  # the new layout loads too
