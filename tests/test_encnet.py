"""EncNet (arXiv:1803.08904): output dict, SE-loss branch, codeword assignments, parameter count, options."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from seglearn.losses import SegLoss, presence_targets
from seglearn.models import count_parameters, create_model, list_models
from seglearn.models.encnet import EncHead, EncModule, codeword_assignments
from seglearn.models.encoding import Encoding

NUM_CLASSES = 11


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("encnet", NUM_CLASSES, aux_loss=True)


def test_registered_with_the_papers_defaults(model):
    assert "encnet" in list_models()
    assert model.backbone.name == "resnet50" and model.backbone.output_stride == 8
    assert model.backbone.layer4[0].conv2.dilation == (2, 2) and model.backbone.layer4[1].conv2.dilation == (4, 4)
    enc = model.head.encmodule.encoding
    assert isinstance(enc, Encoding) and (enc.num_codes, enc.channels) == (32, 512)
    assert model.head.conv5[0].in_channels == 2048 and model.head.conv5[0].kernel_size == (3, 3)
    assert model.head.dropout.p == 0.1
    assert model.aux_head[0].in_channels == 1024  # FCNHead on layer3


def test_train_step_odd_size_with_segloss(model):
    torch.manual_seed(1)
    model.train()
    model.zero_grad()
    x = torch.randn(1, 3, 45, 53)
    target = torch.randint(0, NUM_CLASSES, (1, 45, 53))
    target[:, :10] = 255
    out = model(x)
    assert set(out) == {"out", "aux", "se"}
    assert out["out"].shape == (1, NUM_CLASSES, 45, 53) and out["aux"].shape == (1, NUM_CLASSES, 45, 53)
    assert out["se"].shape == (1, NUM_CLASSES)

    loss_fn = SegLoss(ignore_index=255, aux_weight=0.4, se_weight=0.2)
    loss = loss_fn(out, target)
    by_hand = (
        F.cross_entropy(out["out"], target, ignore_index=255)
        + 0.4 * F.cross_entropy(out["aux"], target, ignore_index=255)
        + 0.2 * F.binary_cross_entropy_with_logits(out["se"], presence_targets(target, NUM_CLASSES))
    )
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    head = model.head.encmodule
    for name, p in [
        ("codewords", head.encoding.codewords),
        ("scale", head.encoding.scale),
        ("se", head.se.weight),
        ("fc", head.fc.weight),
        ("aux", model.aux_head[0].weight),
        ("stem", model.backbone.stem[0].weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_eval_any_size_and_assignments(model):
    model.eval()
    x = torch.randn(1, 3, 37, 50)
    with torch.no_grad():
        out = model(x)
        feats = model.backbone(x)
        direct = model.head.encmodule.encoding.assignments(model.head.encmodule.conv(model.head.conv5(feats[-1])))
    assert out["out"].shape == (1, NUM_CLASSES, 37, 50) and out["se"].shape == (1, NUM_CLASSES)
    a = codeword_assignments(model, x)
    assert a.shape == (1, 32, 5, 7)  # ceil(37 / 8), ceil(50 / 8) at output stride 8
    torch.testing.assert_close(a.sum(1), torch.ones(1, 5, 7))
    torch.testing.assert_close(a, direct.transpose(1, 2).reshape(1, 32, 5, 7))
    with pytest.raises(TypeError, match="EncNet"):
        codeword_assignments(create_model("tinyfcn", 3), x)


def test_parameter_count_breakdown(model):
    c = NUM_CLASSES
    resnet50 = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's ResNet-50 without its fc
    conv5 = 2048 * 512 * 9 + 2 * 512
    encmodule = (512 * 512 + 2 * 512) + (32 * 512 + 32) + 2 * 32 + (512 * 512 + 512) + (512 * c + c)
    classifier = 512 * c + c
    aux = 1024 * 256 * 9 + 2 * 256 + 256 * c + c
    assert count_parameters(model.backbone) == resnet50
    assert count_parameters(model.head.encmodule) == encmodule
    assert count_parameters(model) == resnet50 + conv5 + encmodule + classifier + aux == 35_862_465


def test_modulation_is_residual_relu():
    # PyTorch-Encoding's EncModule: relu(x + x * sigmoid(fc(e))), not the bare x * gamma.
    torch.manual_seed(0)
    module = EncModule(8, num_classes=3, num_codes=4).eval()
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        y, se = module(x)
        gamma = torch.sigmoid(module.fc(module.encode(x)))[:, :, None, None]
    torch.testing.assert_close(y, F.relu(x + x * gamma))
    assert se.shape == (2, 3)


def test_se_branch_learns_class_presence(one_thread):
    # Class c is present when channel c of the features holds a bright blob; the SE logits, fed only by the
    # orderless encoding, must learn which classes an image contains.
    torch.manual_seed(0)
    c, d = 4, 16

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        present = torch.rand(n, c) < 0.5
        x = 0.3 * torch.randn(n, d, 8, 8)
        for i, k in present.nonzero().tolist():
            r, s = torch.randint(0, 6, (2,)).tolist()
            x[i, k, r : r + 3, s : s + 3] += 3.0
        return x, present.float()

    head = EncHead(d, c, channels=32, num_codes=8)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(80):
        x, y = batch(16)
        loss = F.binary_cross_entropy_with_logits(head([x])["se"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    x, y = batch(256)
    with torch.no_grad():
        accuracy = ((head([x])["se"] > 0).float() == y).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_options_and_errors():
    torch.manual_seed(0)
    small = create_model("encnet", 3, backbone="resnet18", se_loss=False, num_codes=8).eval()
    with torch.no_grad():
        out = small(torch.randn(1, 3, 33, 21))
    assert set(out) == {"out"} and out["out"].shape == (1, 3, 33, 21)
    assert small.head.encmodule.encoding.num_codes == 8 and small.head.conv5[0].in_channels == 512
    with pytest.raises(ValueError, match="pass one of: resnet50"):
        create_model("encnet", 3, backbone="vgg16")


def test_resnet101_backbone():
    deep = create_model("encnet", 5, backbone="resnet101")
    assert len(deep.backbone.layer3) == 23 and deep.backbone.output_stride == 8
    resnet101 = 44_549_160 - (2048 * 1000 + 1000)  # torchvision's ResNet-101 without its fc
    assert count_parameters(deep.backbone) == resnet101


def test_pretrained_backbone_from_local_cache(tmp_path, monkeypatch):
    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    torch.save(reference.state_dict(), checkpoints / url.rsplit("/", 1)[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    net = create_model("encnet", 3, backbone="resnet18", pretrained_backbone=True)
    torch.testing.assert_close(net.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
