"""SegLoss and presence_targets, side by side with F.cross_entropy / F.binary_cross_entropy_with_logits."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from seglearn.losses import SegLoss, presence_targets

C = 5


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, C, (2, 6, 7), generator=g)
    target[0, :2] = 255
    out = torch.randn(2, C, 6, 7, generator=g, requires_grad=True)
    aux = torch.randn(2, C, 6, 7, generator=g, requires_grad=True)
    se = torch.randn(2, C, generator=g, requires_grad=True)
    return out, aux, se, target


def test_paper_default_weights():
    # EncNet (arXiv:1803.08904): SE-loss weight 0.2, auxiliary FCN loss weight 0.4 (as PSPNet, arXiv:1612.01105).
    params = inspect.signature(SegLoss).parameters
    assert params["ignore_index"].default == 255
    assert params["aux_weight"].default == 0.4
    assert params["se_weight"].default == 0.2
    assert params["class_weights"].default is None


def test_bare_tensor_equals_cross_entropy(batch):
    out, _, _, target = batch
    expected = F.cross_entropy(out, target, ignore_index=255)
    torch.testing.assert_close(SegLoss()(out, target), expected)
    torch.testing.assert_close(SegLoss()({"out": out}, target), expected)


def test_aux_and_se_terms(batch):
    out, aux, se, target = batch
    # presence by hand: a class is present in an image if any non-ignored pixel has it
    presence = torch.stack([torch.stack([((t == k) & (t != 255)).any() for k in range(C)]) for t in target]).float()
    expected = (
        F.cross_entropy(out, target, ignore_index=255)
        + 0.4 * F.cross_entropy(aux, target, ignore_index=255)
        + 0.2 * F.binary_cross_entropy_with_logits(se, presence)
    )
    loss = SegLoss()({"out": out, "aux": aux, "se": se}, target)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (out, aux, se))

    custom = SegLoss(aux_weight=1.0, se_weight=0.5)({"out": out, "aux": aux, "se": se}, target)
    torch.testing.assert_close(
        custom,
        F.cross_entropy(out, target, ignore_index=255)
        + F.cross_entropy(aux, target, ignore_index=255)
        + 0.5 * F.binary_cross_entropy_with_logits(se, presence),
    )
    # Zero weights switch a term off entirely.
    only_out = SegLoss(aux_weight=0, se_weight=0)({"out": out, "aux": aux, "se": se}, target)
    torch.testing.assert_close(only_out, F.cross_entropy(out, target, ignore_index=255))


def test_terms_are_unweighted(batch):
    out, aux, se, target = batch
    terms = SegLoss().terms({"out": out, "aux": aux, "se": se}, target)
    assert set(terms) == {"out", "aux", "se"}
    torch.testing.assert_close(terms["aux"], F.cross_entropy(aux, target, ignore_index=255))
    assert set(SegLoss().terms({"out": out}, target)) == {"out"}


def test_class_weights_match_weighted_cross_entropy(batch):
    out, aux, _, target = batch
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25])
    expected = F.cross_entropy(out, target, weight=w, ignore_index=255) + 0.4 * F.cross_entropy(
        aux, target, weight=w, ignore_index=255
    )
    torch.testing.assert_close(SegLoss(class_weights=w)({"out": out, "aux": aux}, target), expected)
    # A plain list works too and the weights follow .to() (a non-persistent buffer: not in state_dict).
    loss = SegLoss(class_weights=w.tolist())
    torch.testing.assert_close(loss({"out": out, "aux": aux}, target), expected)
    assert "class_weights" not in loss.state_dict()
    with pytest.raises(ValueError, match="class_weights"):
        SegLoss(class_weights=[1.0, 2.0])(out, target)
    with pytest.raises(ValueError, match="non-negative"):
        SegLoss(class_weights=[1.0, -1.0])


def test_custom_ignore_index(batch):
    out, _, _, target = batch
    t = target.clone()
    t[t == 255] = -100
    torch.testing.assert_close(SegLoss(ignore_index=-100)(out, t), F.cross_entropy(out, t))


@pytest.mark.parametrize("weights", [None, [1.0, 2.0, 3.0, 4.0, 5.0]])
def test_all_ignored_batch_gives_zero_and_finite_gradients(weights):
    out = torch.randn(2, C, 4, 4, requires_grad=True)
    se = torch.randn(2, C, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    assert torch.isnan(F.cross_entropy(out, target, ignore_index=255))  # what the plain mean does
    loss = SegLoss(class_weights=weights)({"out": out, "aux": out * 2, "se": se}, target)
    assert torch.isfinite(loss)
    # CE terms are 0; the SE term remains: nothing is present, so every class's target is 0.
    torch.testing.assert_close(loss, 0.2 * F.binary_cross_entropy_with_logits(se, torch.zeros(2, C)))
    loss.backward()
    assert torch.isfinite(out.grad).all() and (out.grad == 0).all()


def test_half_precision_logits_are_reduced_in_float32(batch):
    out, _, _, target = batch
    w = [0.5, 1.0, 2.0, 4.0, 0.25]
    loss = SegLoss(class_weights=w)(out.detach().bfloat16(), target)
    assert loss.dtype == torch.float32
    ref = F.cross_entropy(out.detach().bfloat16().float(), target, weight=torch.tensor(w), ignore_index=255)
    torch.testing.assert_close(loss, ref, rtol=1e-2, atol=1e-2)


def test_presence_targets():
    masks = torch.tensor(
        [
            [[0, 0, 255], [2, 2, 255]],  # classes 0 and 2
            [[255, 255, 255], [255, 255, 255]],  # nothing labelled
            [[3, 1, 1], [3, 0, 255]],  # classes 0, 1, 3
        ]
    )
    p = presence_targets(masks, 4)
    assert p.dtype == torch.float32 and p.shape == (3, 4)
    assert p.tolist() == [[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 1]]
    assert presence_targets(masks.to(torch.uint8), 4).tolist() == p.tolist()
    with pytest.raises(ValueError, match=r"label 3, outside \[0, 3\)"):
        presence_targets(masks, 3)
    with pytest.raises(ValueError, match="integer"):
        presence_targets(masks.float(), 4)


def test_presence_targets_error_names_the_bad_label():
    with pytest.raises(ValueError, match="label 7"):
        presence_targets(torch.tensor([[[0, 7]]]), 4)


def test_bad_inputs_raise_clear_errors(batch):
    out, _, _, target = batch
    with pytest.raises(ValueError, match="same size"):
        SegLoss()(out[..., :3], target)
    with pytest.raises(KeyError, match="'out'"):
        SegLoss()({"logits": out}, target)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_logits_with_cpu_weights_and_target(batch):
    out, aux, se, target = batch
    w = torch.tensor([0.5, 1.0, 2.0, 4.0, 0.25])
    cpu = SegLoss(class_weights=w)({"out": out, "aux": aux, "se": se}, target)
    gpu = SegLoss(class_weights=w)({"out": out.cuda(), "aux": aux.cuda(), "se": se.cuda()}, target)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu)


def test_side_outputs_are_scored_at_their_own_resolution_and_summed():
    # G-FRNet's deep supervision: each stage prediction against the target nearest-resized to the stage's size
    torch.manual_seed(0)
    target = torch.randint(0, 4, (2, 16, 24))
    target[:, :4] = 255
    out = torch.randn(2, 4, 16, 24)
    sides = [torch.randn(2, 4, 4, 6, requires_grad=True), torch.randn(2, 4, 8, 12, requires_grad=True)]
    loss = SegLoss(side_weight=0.5)
    terms = loss.terms({"out": out, "side": sides}, target)
    small = [F.interpolate(target[:, None].float(), size=s.shape[-2:], mode="nearest")[:, 0].long() for s in sides]
    expected = sum(F.cross_entropy(s, t, ignore_index=255) for s, t in zip(sides, small, strict=True))
    torch.testing.assert_close(terms["side"], expected)
    assert set(small[0].unique().tolist()) <= {0, 1, 2, 3, 255}  # labels stay labels, void stays void
    total = loss({"out": out, "side": sides}, target)
    torch.testing.assert_close(total, terms["out"] + 0.5 * expected)
    total.backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in sides)
    assert "side" not in SegLoss(side_weight=0).terms({"out": out, "side": sides}, target)
