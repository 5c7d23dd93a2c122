"""The Encoding layer (EncNet, arXiv:1803.08904 §3.1) against its naive definition, gradcheck, init and memory."""

from __future__ import annotations

import math

import pytest
import torch

from seglearn.memory import peak_new_bytes
from seglearn.models.encoding import Encoding


def naive_encoding(x: torch.Tensor, codewords: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's formulas with explicit loops over codewords: returns (E (N, K, D), A (N, HW, K))."""
    n, d = x.shape[:2]
    xs = x.reshape(n, d, -1).transpose(1, 2)  # (N, L, D)
    residuals = [xs - codewords[k] for k in range(codewords.shape[0])]  # K x (N, L, D)
    logits = torch.stack([scale[k] * (r * r).sum(-1) for k, r in enumerate(residuals)], dim=-1)  # (N, L, K)
    a = torch.softmax(logits, dim=-1)
    e = torch.stack([(a[..., k : k + 1] * r).sum(1) for k, r in enumerate(residuals)], dim=1)  # (N, K, D)
    return e, a


@pytest.mark.parametrize("shape", [(2, 8, 5, 7), (1, 16, 3, 3), (3, 8, 11)])
def test_matches_naive_values_and_gradients(shape):
    torch.manual_seed(0)
    layer = Encoding(shape[1], num_codes=5).double()
    with torch.no_grad():  # spread codewords and scales so the softmax is far from uniform
        layer.codewords.normal_()
        layer.scale.uniform_(-2.0, -0.1)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    c_ref = layer.codewords.detach().clone().requires_grad_(True)
    s_ref = layer.scale.detach().clone().requires_grad_(True)

    e = layer(x)
    e_ref, a_ref = naive_encoding(x_ref, c_ref, s_ref)
    torch.testing.assert_close(e, e_ref)
    torch.testing.assert_close(layer.assignments(x), a_ref)
    assert a_ref.std() > 0.05  # the check is not vacuous: assignments are not all 1/K

    w = torch.randn_like(e)
    (e * w).sum().backward()
    (e_ref * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad)
    torch.testing.assert_close(layer.codewords.grad, c_ref.grad)
    torch.testing.assert_close(layer.scale.grad, s_ref.grad)


def test_gradcheck_float64():
    torch.manual_seed(1)
    layer = Encoding(4, num_codes=3).double()
    x = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    c = layer.codewords.detach().clone().requires_grad_(True)
    s = layer.scale.detach().clone().requires_grad_(True)

    def fn(x, c, s):
        return torch.func.functional_call(layer, {"codewords": c, "scale": s}, (x,))

    assert torch.autograd.gradcheck(fn, (x, c, s), eps=1e-6, atol=1e-5)


def test_shapes_init_and_assignment_rows():
    torch.manual_seed(0)
    k, d = 32, 512
    layer = Encoding(d, k)
    bound = 1 / math.sqrt(k * d)  # PyTorch-Encoding's reset_params
    assert layer.codewords.shape == (k, d) and layer.scale.shape == (k,)
    assert layer.codewords.abs().max() <= bound and layer.codewords.abs().max() > 0.9 * bound
    assert (layer.scale <= 0).all() and (layer.scale >= -1).all() and layer.scale.min() < -0.5
    x = torch.randn(2, d, 4, 5)
    assert layer(x).shape == (2, k, d)
    a = layer.assignments(x)
    assert a.shape == (2, 20, k)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 20))


def test_negative_scale_prefers_the_nearest_codeword():
    layer = Encoding(2, 3)
    with torch.no_grad():
        layer.codewords.copy_(torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]))
        layer.scale.fill_(-4.0)
    x = torch.tensor([[[0.1, 4.9, 0.2], [0.0, 0.1, 5.1]]])  # (1, D=2, L=3): near codewords 0, 1, 2
    assert layer.assignments(x).argmax(-1).tolist() == [[0, 1, 2]]


def test_bad_input_says_what_is_expected():
    layer = Encoding(8, 4)
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\)"):
        layer(torch.randn(1, 6, 3, 3))
    with pytest.raises(ValueError, match="positive"):
        Encoding(0, 4)


def test_forward_never_builds_the_residual_tensor():
    torch.manual_seed(0)
    n, d, h, w, k = 1, 64, 32, 32, 16
    layer = Encoding(d, k)
    x = torch.randn(n, d, h, w)
    residual_bytes = n * h * w * k * d * 4  # the (N, HW, K, D) float32 tensor of the naive form: 4 MiB
    with torch.no_grad():
        fast = peak_new_bytes(lambda: layer(x))
        naive = peak_new_bytes(lambda: naive_encoding(x, layer.codewords, layer.scale))
    assert naive >= residual_bytes  # the measurement sees the naive form's residuals
    assert fast < residual_bytes / 8, f"Encoding forward peaked at {fast} B"
