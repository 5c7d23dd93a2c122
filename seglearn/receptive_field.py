"""Effective receptive fields measured by gradients, and a one-number summary of their size.

Luo et al., "Understanding the Effective Receptive Field in Deep Convolutional Neural Networks", NeurIPS 2016,
https://arxiv.org/abs/1701.04128: back-propagate a unit gradient placed at the centre of an output map to the input;
the magnitude of the input gradient shows how much each input pixel can move that output unit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["effective_receptive_field", "erf_radius"]


def _as_tensor(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict) and "out" in output:
        return output["out"]
    if isinstance(output, (list, tuple)) and output and isinstance(output[-1], Tensor):
        return output[-1]  # a backbone's feature list: the coarsest map
    raise TypeError(
        f"cannot find a feature map in a {type(output).__name__}: pass feature_fn mapping the output to an "
        "(N, C, h, w) tensor"
    )


def effective_receptive_field(
    model_or_fn: nn.Module | Callable[[Tensor], object],
    input_size: tuple[int, int] = (224, 224),
    feature_fn: Callable[[object], Tensor] | None = None,
    n: int = 1,
    *,
    in_channels: int = 3,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Mean ``|d y_centre / d x|`` over input channels and ``n`` random N(0, 1) inputs: an (H, W) float64 map.

    ``y_centre`` is the sum over channels of the output (or ``feature_fn(output)``) at its centre cell
    ``(h // 2, w // 2)``. A model's output dict gives ``"out"``, a feature list its last map. A module is measured in
    eval mode (BatchNorm statistics and dropout fixed) and put back in its previous mode afterwards.
    """
    if n < 1:
        raise ValueError(f"n (number of random inputs) must be >= 1, got {n}")
    if len(input_size) != 2 or min(input_size) < 1:
        raise ValueError(f"input_size must be (H, W) with positive sizes, got {input_size}")
    module = model_or_fn if isinstance(model_or_fn, nn.Module) else None
    was_training = module.training if module is not None else False
    if device is None and module is not None:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(input_size, dtype=torch.float64)
    try:
        if module is not None:
            module.eval()
        for _ in range(n):
            x = torch.randn(1, in_channels, *input_size, generator=generator).to(device).requires_grad_(True)
            with torch.enable_grad():
                out = model_or_fn(x)
                y = feature_fn(out) if feature_fn is not None else _as_tensor(out)
                if y.ndim != 4:
                    raise ValueError(f"expected an (N, C, h, w) feature map, got shape {tuple(y.shape)}")
                h, w = y.shape[-2:]
                (grad,) = torch.autograd.grad(y[:, :, h // 2, w // 2].sum(), x)
            total += grad[0].abs().mean(dim=0).double().cpu()
    finally:
        if module is not None:
            module.train(was_training)
    return (total / n).numpy()


def erf_radius(erf: np.ndarray, fraction: float = 0.9) -> float:
    """Radius (pixels) of the smallest disc around the map's centre of mass holding ``fraction`` of its total.

    For a 2-D Gaussian of standard deviation s and ``fraction=0.9`` this is ``s * sqrt(2 ln 10)`` ~ 2.146 s.
    """
    erf = np.asarray(erf, dtype=np.float64)
    if erf.ndim != 2:
        raise ValueError(f"erf must be an (H, W) map, got shape {erf.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if np.any(erf < 0) or not np.isfinite(erf).all():
        raise ValueError("erf must be finite and non-negative (e.g. the output of effective_receptive_field)")
    mass = erf.sum()
    if mass <= 0:
        raise ValueError("erf is all zeros: the centre output does not depend on the input")
    yy, xx = np.indices(erf.shape, dtype=np.float64)
    cy, cx = (erf * yy).sum() / mass, (erf * xx).sum() / mass
    dist = np.hypot(yy - cy, xx - cx).ravel()
    order = np.argsort(dist, kind="stable")
    cumulative = np.cumsum(erf.ravel()[order])
    index = int(np.searchsorted(cumulative, fraction * mass * (1 - 1e-12)))
    return float(dist[order][min(index, dist.size - 1)])
