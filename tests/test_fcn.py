"""FCN: fc6/fc7 as convolutions, bilinear transposed convolutions, crop alignment, parameter count, torchvision twin."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from seglearn.models import SegmentationModel, count_parameters, create_model, from_torchvision
from seglearn.models.fcn import OFFSETS, bilinear_upsampler, fc_to_conv, from_torchvision_fcn

NUM_CLASSES = 5


@pytest.fixture(scope="module")
def vgg_fcns() -> dict[int, SegmentationModel]:
    torch.manual_seed(0)
    return {s: create_model(f"fcn{s}s", NUM_CLASSES).eval() for s in (32, 16, 8)}


def fake_vgg16_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """VGG16 weights of known values where torchvision's weights API looks for them (offline, a few MB).

    Large tensors are one random row expanded (stride 0) over their first dimension.
    """
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg16().state_dict().items()}
    gen = torch.Generator().manual_seed(3)
    state = {
        k: torch.randn(1, *s[1:], generator=gen).expand(s) if len(s) >= 2 else torch.randn(s, generator=gen)
        for k, s in shapes.items()
    }
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / torchvision.models.VGG16_Weights.IMAGENET1K_V1.url.split("/")[-1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return state


def receptive_center(layers: list[nn.Module]) -> tuple[float, float]:
    """(stride, offset): output cell j of ``layers`` is centred on input pixel ``stride * j + offset``."""
    stride, offset = 1.0, 0.0
    for m in layers:
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            offset += stride * ((k - 1) / 2 - p)
            stride *= s
    return stride, offset


def test_scores_start_at_zero_and_upsamplers_bilinear(vgg_fcns):
    # Runs before the tests below overwrite the score layers of these shared models.
    for stride, model in vgg_fcns.items():
        head = model.head
        scores = [head.score_fr] + [getattr(head, n) for n in ("score_pool4", "score_pool3") if hasattr(head, n)]
        assert len(scores) == {32: 1, 16: 2, 8: 3}[stride]
        for conv in scores:
            assert conv.weight.abs().sum() == 0 and conv.bias.abs().sum() == 0
        assert head.upscore.stride == (stride, stride) and head.upscore.kernel_size == (2 * stride, 2 * stride)


def test_fc6_fc7_as_convolutions_reproduce_vgg16_classifier():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16().eval()
    fc6, fc7, fc8 = (fc_to_conv(vgg.classifier[i], c, k) for i, c, k in ((0, 512, 7), (3, 4096, 1), (6, 4096, 1)))
    assert (fc6.kernel_size, fc6.out_channels, fc7.kernel_size, fc7.out_channels) == ((7, 7), 4096, (1, 1), 4096)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        pool5 = vgg.features(x)  # (1, 512, 7, 7)
        fc7_ref = vgg.classifier[:5](torch.flatten(vgg.avgpool(pool5), 1))
        fc7_conv = F.relu(fc7(F.relu(fc6(pool5))))  # (1, 4096, 1, 1)
        logits = fc8(fc7_conv)
        ref = vgg(x)
    assert fc7_conv.shape == (1, 4096, 1, 1)
    assert (fc7_conv.flatten(1) - fc7_ref).abs().max() < 1e-4
    assert (logits.flatten(1) - ref).abs().max() < 1e-4
    with pytest.raises(ValueError, match="inputs"):
        fc_to_conv(vgg.classifier[0], 256, 7)


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_transposed_conv_starts_as_bilinear_interpolation(factor):
    up = bilinear_upsampler(2, factor)
    assert up.kernel_size == (2 * factor, 2 * factor) and up.stride == (factor, factor) and up.bias is None
    h, w = 6, 7
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    ramp = torch.stack([0.5 * i - 1.5 * j, 2.0 * i + 0.25 * j + 3]).unsqueeze(0)  # (1, 2, h, w), smooth
    with torch.no_grad():
        deconv = up(ramp)  # (1, 2, factor * (h + 1), factor * (w + 1))
    ref = F.interpolate(ramp, scale_factor=factor, mode="bilinear", align_corners=False)
    # deconv puts input cell i at factor*i + factor - 1/2, interpolate at factor*i + (factor - 1)/2.
    shift = factor // 2
    inner = slice(factor, factor * (h - 1))
    inner_w = slice(factor, factor * (w - 1))
    got = deconv[..., shift:, shift:][..., : factor * h, : factor * w]
    assert torch.allclose(got[..., inner, inner_w], ref[..., inner, inner_w], atol=1e-5)
    # Channels stay separate (diagonal kernel).
    assert up.weight[0, 1].abs().sum() == 0 and up.weight[1, 0].abs().sum() == 0


def _layers_to(model: SegmentationModel, score: str) -> list[nn.Module]:
    feats = list(model.backbone.features)
    if score == "score_fr":
        return [*feats, *model.head.fc]
    stage = {"score_pool4": 3, "score_pool3": 2}[score]
    return feats[: model.backbone.stage_slices[stage][1]]


@pytest.mark.parametrize(
    ("stride", "score", "size"),
    [(32, "score_fr", (45, 61)), (16, "score_pool4", (37, 23)), (8, "score_pool3", (2, 3, 53, 45))],
)
def test_output_is_bilinear_upsampling_of_score_map_at_its_input_position(vgg_fcns, stride, score, size):
    model = vgg_fcns[stride]
    torch.manual_seed(stride)
    # Only the tested path scores: the output must be that score map bilinearly upsampled, aligned with the input.
    for name in ("score_fr", "score_pool4", "score_pool3"):
        if hasattr(model.head, name):
            conv = getattr(model.head, name)
            nn.init.normal_(conv.weight, std=0.01 if name == score else 0.0)
            nn.init.normal_(conv.bias, std=1.0 if name == score else 0.0)
    maps = []
    hook = getattr(model.head, score).register_forward_hook(lambda m, i, o: maps.append(o))
    x = torch.randn(*size) if len(size) == 4 else torch.randn(1, 3, *size)
    with torch.no_grad():
        out = model(x)["out"]
    hook.remove()
    assert out.shape == (x.shape[0], NUM_CLASSES, *x.shape[-2:])
    cell_stride, center = receptive_center(_layers_to(model, score))
    assert cell_stride == stride
    # interpolate puts cell j at stride*j + (stride-1)/2; the model must put it at stride*j + center.
    shift = int(center - (stride - 1) / 2)
    score_map = maps[0]
    ref = F.interpolate(score_map, scale_factor=stride, mode="bilinear", align_corners=False)
    rows = torch.arange(x.shape[-2]) - shift
    cols = torch.arange(x.shape[-1]) - shift
    # Compare where interpolation is not clamped at the score map's border.
    lo, hi_r, hi_c = stride // 2, stride * (score_map.shape[-2] - 1) + stride // 2, stride * (score_map.shape[-1] - 1)
    keep_r = (rows >= lo) & (rows < hi_r)
    keep_c = (cols >= lo) & (cols < hi_c + stride // 2)
    assert keep_r.sum() >= 10 and keep_c.sum() >= 10
    expected = ref[..., rows[keep_r], :][..., cols[keep_c]]
    got = out[..., keep_r, :][..., keep_c]
    assert torch.allclose(got, expected, atol=1e-5)


def test_crop_offsets_are_the_papers():
    assert OFFSETS == {"pool4": 5, "pool3": 9, 32: 19, 16: 27, 8: 31}


def test_fcn8s_backward_and_frozen_final_upsampling(vgg_fcns):
    model = vgg_fcns[8].train()
    for conv in (model.head.score_fr, model.head.score_pool4, model.head.score_pool3):
        nn.init.normal_(conv.weight, std=0.01)
    model.zero_grad()
    out = model(torch.randn(1, 3, 33, 47))["out"]
    assert out.shape == (1, NUM_CLASSES, 33, 47)
    out.square().mean().backward()
    model.eval()
    head = model.head
    assert head.upscore.weight.grad is None and not head.upscore.weight.requires_grad  # fixed bilinear (§4.2)
    for p in (head.upscore2.weight, head.upscore_pool4.weight, head.score_pool3.weight, head.fc[0].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert model.backbone.features[0].weight.grad.abs().sum() > 0


def test_at_once_scales_skips(vgg_fcns):
    model = vgg_fcns[16]
    torch.manual_seed(1)
    nn.init.zeros_(model.head.score_fr.weight)
    nn.init.normal_(model.head.score_pool4.weight, std=0.01)
    x = torch.randn(1, 3, 9, 11)
    with torch.no_grad():
        model.head.at_once = True
        scaled = model(x)["out"]
        model.head.at_once = False
        model.head.score_pool4.weight.mul_(0.01)
        manual = model(x)["out"]
    assert torch.allclose(scaled, manual, atol=1e-6)


def test_fcn8s_parameter_count():
    with torch.device("meta"):
        model = create_model("fcn8s", 21)
        vgg_features = count_parameters(torchvision.models.vgg16().features)
    c = 21
    head = (
        (512 * 7 * 7 * 4096 + 4096)  # fc6 as a 7x7 conv
        + (4096 * 4096 + 4096)  # fc7 as a 1x1 conv
        + (4096 * c + c)  # score_fr
        + (512 * c + c)  # score_pool4
        + (256 * c + c)  # score_pool3
        + 2 * (c * c * 4 * 4)  # upscore2, upscore_pool4 (no bias)
        + c * c * 16 * 16  # upscore8
    )
    total = count_parameters(model)
    assert total == vgg_features + head == 134_489_759
    assert abs(total / 1e6 - 134.3) < 0.5  # the paper's 134 M
    assert count_parameters(model, trainable_only=True) == total - c * c * 16 * 16


def test_pretrained_vgg16_becomes_fc6_fc7_convolutions(tmp_path, monkeypatch):
    state = fake_vgg16_checkpoint(tmp_path, monkeypatch)
    model = create_model("fcn32s", 3, pretrained_backbone=True)
    assert torch.equal(model.backbone.features[2].weight, state["features.2.weight"])
    assert torch.equal(model.head.fc[0].weight, state["classifier.0.weight"].reshape(4096, 512, 7, 7))
    assert torch.equal(model.head.fc[0].bias, state["classifier.0.bias"])
    assert torch.equal(model.head.fc[3].weight, state["classifier.3.weight"].reshape(4096, 4096, 1, 1))
    assert model.backbone.classifier is None  # fc8 (ImageNet's 1000 classes) is dropped


def test_vgg_fcns_reject_aux_and_other_backbones():
    with pytest.raises(ValueError, match="no auxiliary head"):
        create_model("fcn8s", 21, aux_loss=True)
    with pytest.raises(ValueError, match="pass one of: vgg16"):
        create_model("fcn16s", 21, backbone="resnet50")
    with pytest.raises(ValueError, match="pass one of: resnet50, resnet101, resnet18, resnet34"):
        create_model("fcn", 21, backbone="vgg16")


@pytest.fixture(scope="module")
def tv_fcn50():
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    )
    return tv.eval()


def test_fcn_resnet50_equals_torchvision(tv_fcn50):
    model = from_torchvision_fcn(tv_fcn50)
    assert not model.training
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        ref, out = tv_fcn50(x), model(x)
    assert set(out) == {"out", "aux"}
    assert (out["out"] - ref["out"]).abs().max() < 1e-4
    assert (out["aux"] - ref["aux"]).abs().max() < 1e-4
    assert count_parameters(model) == count_parameters(tv_fcn50)
    # seglearn.models.from_torchvision dispatches here.
    assert torch.equal(from_torchvision(tv_fcn50).state_dict()["head.head.4.weight"], tv_fcn50.classifier[4].weight)


def test_fcn_resnet101_equals_torchvision():
    torch.manual_seed(0)
    tv = torchvision.models.segmentation.fcn_resnet101(weights=None, weights_backbone=None, num_classes=4).eval()
    model = from_torchvision_fcn(tv)
    assert model.aux_head is None and len(model.backbone.layer3) == 23
    x = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        assert (model(x)["out"] - tv(x)["out"]).abs().max() < 1e-4


def test_fcn_resnet_odd_size_forward_backward():
    model = create_model("fcn", NUM_CLASSES, aux_loss=True)
    assert model.backbone.output_stride == 8 and model.backbone.name == "resnet50"
    out = model(torch.randn(2, 3, 45, 61))
    assert out["out"].shape == out["aux"].shape == (2, NUM_CLASSES, 45, 61)
    (out["out"].mean() + 0.4 * out["aux"].mean()).backward()
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert model.aux_head[0].weight.grad.abs().sum() > 0


def test_state_dict_of_the_former_standalone_fcn_vgg_loads():
    """Model files from before FCN-VGG was a SegmentationModel (fc, score_*, upscore* at the top) load unchanged."""
    with torch.device("meta"):
        model = create_model("fcn16s", 3)
        fresh = create_model("fcn16s", 3)
    old = {k.removeprefix("head."): v for k, v in model.state_dict(keep_vars=True).items()}
    assert {"fc.0.weight", "score_fr.bias", "score_pool4.weight", "upscore2.weight"} <= set(old)
    fresh.load_state_dict(old, assign=True)
    new, ref = fresh.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    assert new.keys() == ref.keys() and all(new[k] is ref[k] for k in ref)  # every tensor landed where it belongs


def test_fusion_stages_are_what_fcn32s_and_fcn16s_predict_with_the_same_weights(vgg_fcns):
    """The paper's Fig. 4 read from one FCN-8s: stage 32 is FCN-32s, stage 16 FCN-16s, stage 8 the model itself."""
    from seglearn.models.fcn import fusion_predictions

    fcn8s = create_model("fcn8s", NUM_CLASSES).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero skip scores, or every stage would predict the same
        for conv in (fcn8s.head.score_fr, fcn8s.head.score_pool4, fcn8s.head.score_pool3):
            conv.weight.normal_(0, 0.01)
            conv.bias.normal_(0, 0.1)
    x = torch.randn(1, 3, 70, 90)
    stages = fusion_predictions(fcn8s, x)
    assert sorted(stages) == [8, 16, 32] and all(t.shape == (1, NUM_CLASSES, 70, 90) for t in stages.values())
    with torch.no_grad():
        assert torch.allclose(stages[8], fcn8s(x)["out"], atol=1e-5)
        for stride in (32, 16):
            coarser = vgg_fcns[stride]
            shared = {k: v for k, v in fcn8s.state_dict().items() if k != "head.upscore.weight"}  # fixed, per stride
            coarser.load_state_dict(shared, strict=False)  # pool3's score layer has no place there
            assert torch.allclose(stages[stride], coarser(x)["out"], atol=1e-5)
    assert (stages[32] - stages[8]).abs().max() > 1e-3  # the skips change the prediction
    with pytest.raises(TypeError, match="FCN-VGG"):
        fusion_predictions(create_model("tinyfcn", NUM_CLASSES), x)
