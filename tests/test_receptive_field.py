"""Effective receptive fields: exact supports for small conv stacks, holes for dilation, dilated VGG sees wider."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from seglearn.models.backbones import VGGBackbone
from seglearn.models.deeplabv1 import make_atrous_vgg
from seglearn.receptive_field import effective_receptive_field, erf_radius

pytestmark = pytest.mark.usefixtures("one_thread")  # from conftest


SIZE = 21
CENTRE = SIZE // 2


def conv_stack(k: int, dilation: int = 1) -> nn.Sequential:
    torch.manual_seed(k)
    return nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=dilation, dilation=dilation) for _ in range(k)])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_stack_of_3x3_convs_has_exactly_the_theoretical_window(k: int) -> None:
    erf = effective_receptive_field(conv_stack(k), input_size=(SIZE, SIZE))
    assert erf.shape == (SIZE, SIZE)
    rows, cols = np.nonzero(erf > 0)
    assert (rows.min(), rows.max()) == (CENTRE - k, CENTRE + k)
    assert (cols.min(), cols.max()) == (CENTRE - k, CENTRE + k)
    assert len(rows) == (2 * k + 1) ** 2  # no holes inside the (2k+1) x (2k+1) window


@pytest.mark.parametrize(("k", "offsets"), [(1, [-2, 0, 2]), (2, [-4, -2, 0, 2, 4])])
def test_dilated_convs_leave_holes(k: int, offsets: list[int]) -> None:
    erf = effective_receptive_field(conv_stack(k, dilation=2), input_size=(SIZE, SIZE))
    expected = np.zeros((SIZE, SIZE), bool)
    idx = [CENTRE + o for o in offsets]
    expected[np.ix_(idx, idx)] = True
    np.testing.assert_array_equal(erf > 0, expected)


def test_averages_over_inputs_and_restores_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1))
    model.train()
    one = effective_receptive_field(model, input_size=(15, 15), n=1, seed=0)
    three = effective_receptive_field(model, input_size=(15, 15), n=3, seed=0)
    assert model.training
    assert not np.allclose(one, three)  # ReLU makes the gradient depend on the input
    assert (three > 0).sum() >= (one > 0).sum()
    np.testing.assert_array_equal(three, effective_receptive_field(model, input_size=(15, 15), n=3, seed=0))


def test_accepts_a_function_and_a_feature_fn() -> None:
    conv = conv_stack(1)

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        return [conv(x), conv(conv(x))]

    last = effective_receptive_field(features, input_size=(SIZE, SIZE))
    first = effective_receptive_field(features, input_size=(SIZE, SIZE), feature_fn=lambda out: out[0])
    assert (last > 0).sum() == 25 and (first > 0).sum() == 9
    with pytest.raises(TypeError, match="feature_fn"):
        effective_receptive_field(lambda x: "nothing", input_size=(8, 8))


def test_erf_radius_of_known_shapes() -> None:
    yy, xx = np.indices((101, 101)) - 50
    sigma = 6.0
    gaussian = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    assert erf_radius(gaussian, 0.9) == pytest.approx(sigma * np.sqrt(2 * np.log(10)), rel=0.03)
    disc = (np.hypot(yy, xx) <= 20).astype(float)
    assert erf_radius(disc, 1.0) == pytest.approx(20, abs=0.5)
    assert erf_radius(disc, 0.25) == pytest.approx(10, abs=0.6)
    with pytest.raises(ValueError, match="all zeros"):
        erf_radius(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="fraction"):
        erf_radius(disc, 0.0)


def test_dilated_vgg_sees_wider_than_the_same_vgg_without_dilation() -> None:
    torch.manual_seed(0)
    vgg = make_atrous_vgg(VGGBackbone("vgg16", keep_classifier=False))  # output stride 8, conv5 at dilation 2
    conv5 = [m for m in vgg.stage(4) if isinstance(m, nn.Conv2d)]
    dilated = effective_receptive_field(vgg, input_size=(112, 112))
    for m in conv5:
        m.dilation, m.padding = (1, 1), (1, 1)  # same weights, same output stride, conv5 not dilated
    plain = effective_receptive_field(vgg, input_size=(112, 112))
    # removing pool4's stride without dilating conv5 shrinks what conv5 sees; dilation gives it back
    assert erf_radius(dilated, 0.5) > 1.15 * erf_radius(plain, 0.5)  # 36.6 vs 29.0 px measured
    assert erf_radius(dilated, 0.9) > erf_radius(plain, 0.9)
