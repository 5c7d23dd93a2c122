"""PSPNet (arXiv:1612.01105): mmseg's parameter count, output stride 8, the pyramid side by side with smp's."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.decoders.pspnet.decoder import PSPModule

import seglearn.models.pspnet  # noqa: F401  (registers "pspnet")
from seglearn.losses import SegLoss
from seglearn.models import count_parameters, create_model, list_models, model_info, resize_to
from seglearn.models.backbones import RESNET_BACKBONES
from seglearn.models.ppm import PyramidPooling

NUM_CLASSES = 11
RESNET50 = 25_557_032 - (2048 * 1000 + 1000)  # torchvision's ResNet-50 without its fc


def _quick(**kwargs):
    info = model_info("pspnet")
    return create_model("pspnet", NUM_CLASSES, aux_loss=info.quick.aux_loss, **{**info.quick.model_kwargs, **kwargs})


def test_parameter_count_matches_mmseg_pspnet_r50_d8():
    # mmseg's configs/_base_/models/pspnet_r50-d8.py: PSPHead(in 2048, channels 512, bins 1/2/3/6, 3x3 bottleneck),
    # FCNHead aux on layer3 (1024 -> 256), 19 Cityscapes classes. Its ResNetV1c deep stem (3x3 convs 3-32-32-64)
    # has 19,232 parameters more than torchvision's 7x7 stem, the only difference.
    with torch.device("meta"):
        net = create_model("pspnet", 19, aux_loss=True)
    c, ch = 19, 512
    ppm = 4 * (2048 * ch + 2 * ch) + (2048 + 4 * ch) * ch * 9 + 2 * ch
    classifier = ch * c + c
    aux = 1024 * 256 * 9 + 2 * 256 + 256 * c + c
    assert count_parameters(net.backbone) == RESNET50
    assert count_parameters(net.head.ppm) == ppm == 23_073_792
    assert count_parameters(net) == RESNET50 + ppm + classifier + aux == 48_956_262
    v1c_stem_extra = (3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 2 * (32 + 32 + 64)) - (3 * 64 * 49 + 2 * 64)
    assert count_parameters(net) + v1c_stem_extra == 48_975_494  # mmseg's PSPNet-R50-D8, ~49.0 M
    with torch.device("meta"):
        assert count_parameters(create_model("pspnet", 19, backbone="resnet101", aux_loss=True)) == 67_948_390


def test_output_stride_8_shapes():
    with torch.device("meta"):
        net = create_model("pspnet", NUM_CLASSES, aux_loss=True).eval()
        x = torch.empty(2, 3, 64, 96)
        feats = net.backbone(x)
        logits = net.head(feats)
        out = net(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(256, 16, 24), (512, 8, 12), (1024, 8, 12), (2048, 8, 12)]
    assert tuple(logits.shape) == (2, NUM_CLASSES, 8, 12)  # 1/8 of the input, upsampled bilinearly to it
    assert tuple(out["out"].shape) == tuple(out["aux"].shape) == (2, NUM_CLASSES, 64, 96)
    body = net.backbone
    assert body.output_stride == 8 and body.reductions == [4, 8, 8, 8]
    assert body.layer3[0].conv2.dilation == (1, 1) and body.layer3[1].conv2.dilation == (2, 2)
    assert body.layer4[0].conv2.dilation == (2, 2) and body.layer4[1].conv2.dilation == (4, 4)
    ppm = net.head.ppm
    assert isinstance(ppm, PyramidPooling) and ppm.bins == (1, 2, 3, 6)
    assert ppm.stages[0][1][0].out_channels == 512 and ppm.bottleneck[0].kernel_size == (3, 3)
    assert net.head.dropout.p == 0.1 and net.head.classifier.kernel_size == (1, 1)
    assert net.aux_head[0].in_channels == 1024 and net.aux_head[0].out_channels == 256

    with torch.device("meta"):
        net16 = create_model("pspnet", NUM_CLASSES, output_stride=16).eval()
        feats16 = net16.backbone(x)
    assert [tuple(f.shape[-2:]) for f in feats16] == [(16, 24), (8, 12), (4, 6), (4, 6)]


def test_pyramid_branches_are_smp_psp_blocks():
    """Our pyramid and smp's ``PSPModule(2048)`` have the same four branches (pool to b x b, 1x1 conv 2048 -> 512, BN,
    ReLU) but for: smp's bin-1 branch has no BN (a conv bias instead; folded in below, eval mode), and smp upsamples
    with ``align_corners=True`` (ours False, as torchvision and mmseg). So the pooled maps agree exactly, and smp's
    upsampled ones are ours upsampled its way. Beyond the branches smp concatenates [branches, x] (ours [x, branches])
    and fuses by a 1x1 conv; our (mmseg's) 3x3 bottleneck is the paper's "convolution layer" after the concat."""
    torch.manual_seed(3)
    ours = PyramidPooling(2048, 512).eval()
    ref = PSPModule(2048).eval()
    with torch.no_grad():
        for stage in ours.stages:  # non-trivial BN statistics, so the folding is tested
            bn = stage[1][1]
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
        for stage, block in zip(ours.stages, ref.blocks, strict=True):
            conv, bn = stage[1][0], stage[1][1]
            if block.pool_size == 1:  # fold BN into smp's biased conv: w * g / s, b - g * mean / s
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                block.pool[1][0].weight.copy_(conv.weight * scale[:, None, None, None])
                block.pool[1][0].bias.copy_(bn.bias - scale * bn.running_mean)
            else:
                norm = {f"1.{k}": v for k, v in bn.state_dict().items()}
                block.pool[1].load_state_dict({"0.weight": conv.weight, **norm})

        x = torch.randn(2, 2048, 8, 12)
        for stage, block in zip(ours.stages, ref.blocks, strict=True):
            pooled = stage(x)
            torch.testing.assert_close(pooled, block.pool(x), rtol=1e-4, atol=1e-4)
            theirs = block(x)
            torch.testing.assert_close(F.interpolate(pooled, (8, 12), mode="bilinear", align_corners=True), theirs)
            if block.pool_size == 1:  # a 1x1 map upsamples to a constant either way
                torch.testing.assert_close(resize_to(pooled, (8, 12)), theirs)
            else:
                assert not torch.allclose(resize_to(pooled, (8, 12)), theirs, atol=1e-3)
        assert ref(x).shape == (2, 2048 + 4 * 512, 8, 12)


def test_smp_pspnet_is_a_lighter_design():
    """smp.PSPNet("resnet50") stops the encoder at layer2 (encoder_depth=3: stride 8 without dilation; layer3/4 stay
    in the module, unused), pools 512 channels into 4 x 128, fuses by a 1x1 conv to 512 (psp_out_channels), then
    Dropout2d(0.2), a 3x3 classifier and x8 bilinear upsampling. Its parameter count, exactly:"""
    c = NUM_CLASSES
    with torch.device("meta"):
        ref = smp.PSPNet("resnet50", encoder_weights=None, classes=c)
        ours = create_model("pspnet", c)
    body = ours.backbone
    used = sum(count_parameters(m) for m in (body.stem, body.layer1, body.layer2))
    unused = count_parameters(body.layer3) + count_parameters(body.layer4)
    psp = (512 * 128 + 128) + 3 * (512 * 128 + 2 * 128)  # bin 1: conv bias, no BN
    fuse = 1024 * 512 + 2 * 512
    head = 512 * c * 9 + c
    assert count_parameters(ref) == used + unused + psp + fuse + head == 24_347_083
    assert count_parameters(ours) - count_parameters(ours.backbone) == 23_073_792 + 512 * c + c
    assert ref.decoder.dropout.p == 0.2 and isinstance(ref.decoder.dropout, torch.nn.Dropout2d)

    torch.manual_seed(4)
    small = smp.PSPNet("resnet18", encoder_weights=None, classes=c).eval()
    net = _quick().eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert small(x).shape == net(x)["out"].shape == (1, c, 64, 96)


def test_train_step_odd_size_with_aux_loss():
    torch.manual_seed(2)
    net = _quick(output_stride=8).train()  # the paper's stride, really computed
    x = torch.randn(2, 3, 65, 97)
    target = torch.randint(0, NUM_CLASSES, (2, 65, 97))
    target[:, :5] = 255
    out = net(x)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == out["aux"].shape == (2, NUM_CLASSES, 65, 97)
    loss_fn = SegLoss(ignore_index=255)
    assert loss_fn.aux_weight == 0.4  # the paper's deep-supervision weight is SegLoss's default
    loss = loss_fn(out, target)
    by_hand = F.cross_entropy(out["out"], target, ignore_index=255) + 0.4 * F.cross_entropy(
        out["aux"], target, ignore_index=255
    )
    torch.testing.assert_close(loss, by_hand)
    loss.backward()
    ppm = net.head.ppm
    for name, p in [
        ("bin1", ppm.stages[0][1][0].weight),
        ("bin6", ppm.stages[3][1][0].weight),
        ("bottleneck", ppm.bottleneck[0].weight),
        ("classifier", net.head.classifier.weight),
        ("aux", net.aux_head[0].weight),
        ("stem", net.backbone.stem[0].weight),
    ]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    with pytest.raises(ValueError, match=r"1x1 bin.*batch size >= 2"):
        net(x[:1])
    with torch.no_grad():
        assert net.eval()(x[:1])["out"].shape == (1, NUM_CLASSES, 65, 97)


def test_registration_and_refused_options():
    info = model_info("pspnet")
    assert "pspnet" in list_models() and info.aux_loss and info.backbones == RESNET_BACKBONES
    assert info.quick.model_kwargs == {"backbone": "resnet18", "channels": 64, "output_stride": 16}
    assert info.quick.aux_loss
    with torch.device("meta"):
        r18 = create_model("pspnet", 3, backbone="resnet18")
        assert r18.head.ppm.stages[0][1][0].out_channels == 128  # 512 / 4 bins, mmseg's pspnet_r18-d8
        assert count_parameters(_quick()) == 11_899_606
    with pytest.raises(ValueError, match="output_stride 8 .* or 16, got 32"):
        create_model("pspnet", 3, output_stride=32)
    with pytest.raises(ValueError, match="channels must be >= 1"):
        create_model("pspnet", 3, channels=0)
    with pytest.raises(ValueError, match="pass one of: resnet50"):
        create_model("pspnet", 3, backbone="vgg16")
