"""The Encoding layer of EncNet: soft-assign residuals to K learned codewords and aggregate them (pure PyTorch)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class Encoding(nn.Module):
    r"""Encoding layer from "Context Encoding for Semantic Segmentation" (Zhang et al., 2018,
    https://arxiv.org/abs/1803.08904), §3.1; first in "Deep TEN" (https://arxiv.org/abs/1612.02844).

    For features :math:`x_i` (i over the HW positions, D channels), codewords :math:`d_k` and smoothing factors
    :math:`s_k` (k = 1..K):

    .. math::
        a_{ik} = \mathrm{softmax}_k\big(-s_k \lVert x_i - d_k \rVert^2\big), \qquad
        e_k = \sum_i a_{ik} (x_i - d_k).

    The parameter ``scale`` holds :math:`-s_k`, as PyTorch-Encoding's ``scaled_l2`` multiplies the squared distance
    by it; its initialisation uniform(-1, 0) (i.e. :math:`s_k > 0`) makes near codewords win.
    Codewords start uniform(-1/sqrt(K*D), 1/sqrt(K*D)), as PyTorch-Encoding's ``Encoding.reset_params``.

    Memory: the (N, HW, K, D) residual tensor of the naive form is never built. The distance is expanded as
    ``||x||^2 - 2 x.d + ||d||^2`` (two matrix products) and ``e_k = A^T X - (sum_i a_ik) d_k``, so the layer keeps
    only (N, K, HW) tensors beside its input: for 64x64 features of 512 channels with K = 32 the naive residual
    alone would be 4096 * 32 * 512 floats. tests/test_encoding.py checks the bound;
    ``python benchmarks/context_speed.py --encoding-memory`` measures both forms.

    Shapes: ``x`` (N, D, H, W) or (N, D, L) -> ``e`` (N, K, D); :meth:`assignments` gives ``a`` as (N, HW, K).
    """

    def __init__(self, channels: int, num_codes: int) -> None:
        super().__init__()
        if channels < 1 or num_codes < 1:
            raise ValueError(f"channels and num_codes must be positive, got {channels} and {num_codes}")
        self.channels, self.num_codes = channels, num_codes
        self.codewords = nn.Parameter(torch.empty(num_codes, channels))  # (K, D)
        self.scale = nn.Parameter(torch.empty(num_codes))  # (K,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.num_codes * self.channels)
        nn.init.uniform_(self.codewords, -bound, bound)
        nn.init.uniform_(self.scale, -1.0, 0.0)

    def _flatten(self, x: Tensor) -> Tensor:
        if x.dim() not in (3, 4) or x.shape[1] != self.channels:
            raise ValueError(
                f"Encoding expects (N, {self.channels}, H, W) or (N, {self.channels}, L) features, got {tuple(x.shape)}"
            )
        return x.flatten(2)  # (N, D, L), L = HW

    def _soft_assign(self, x: Tensor) -> Tensor:
        # x (N, D, L) -> a (N, K, L); ||x - d||^2 = ||x||^2 - 2 x.d + ||d||^2 without the (N, L, K, D) residuals.
        c = self.codewords
        dist = (
            torch.linalg.vector_norm(x, dim=1, keepdim=True).square()
            - 2.0 * torch.matmul(c, x)
            + (c * c).sum(1)[:, None]
        )
        return torch.softmax(self.scale[:, None] * dist, dim=1)

    def assignments(self, x: Tensor) -> Tensor:
        """Soft assignment of each position to each codeword: (N, D, H, W) -> (N, HW, K), rows sum to 1."""
        return self._soft_assign(self._flatten(x)).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self._flatten(x)
        a = self._soft_assign(x)  # (N, K, L)
        # e_k = sum_i a_ik x_i - (sum_i a_ik) d_k: (N, K, L) @ (N, L, D) -> (N, K, D)
        return torch.matmul(a, x.transpose(1, 2)) - a.sum(2, keepdim=True) * self.codewords

    def extra_repr(self) -> str:
        return f"channels={self.channels}, num_codes={self.num_codes}"
