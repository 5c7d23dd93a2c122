"""Fully connected CRF post-processing (pydensecrf), parallel batches and a small parameter search.

Krähenbühl & Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge Potentials", NeurIPS 2011,
https://arxiv.org/abs/1210.5644, as used by DeepLab (arXiv:1412.7062 §4): unary ``-log p`` from the network's softmax,
a bilateral kernel ``w1 exp(-|p_i-p_j|^2/2 sa^2 - |I_i-I_j|^2/2 sb^2)`` and a Gaussian kernel
``w2 exp(-|p_i-p_j|^2/2 sg^2)`` with Potts compatibility, solved by mean-field iterations.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["DenseCRF", "crf_batch", "grid_search", "format_grid"]

_SUM_TOLERANCE = 1e-3


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def check_inputs(image: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return ``(image uint8 (H, W, 3) C-contiguous, probs float32 (C, H, W) C-contiguous)``."""
    image, probs = _to_numpy(image), _to_numpy(probs)
    if image.dtype != np.uint8:
        raise TypeError(
            f"image must be uint8 (H, W, 3), got dtype {image.dtype}: pass the un-normalised RGB image, e.g. "
            "(img * 255).round().astype(np.uint8) for an image in [0, 1]"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"image must be (H, W, 3) RGB, got shape {image.shape}; a (3, H, W) array needs .transpose(1, 2, 0)"
        )
    if probs.ndim != 3:
        raise ValueError(f"probs must be (C, H, W) class probabilities for one image, got shape {probs.shape}")
    if probs.shape[1:] != image.shape[:2]:
        raise ValueError(
            f"image is {image.shape[0]}x{image.shape[1]} but probs are {probs.shape[1]}x{probs.shape[2]}: resize the "
            "logits to the image size (bilinear) before the softmax"
        )
    probs = probs.astype(np.float32, copy=False)
    if not np.isfinite(probs).all() or probs.min() < 0:
        raise ValueError("probs must be finite and non-negative: pass softmax probabilities, not logits")
    deviation = float(np.abs(probs.sum(axis=0) - 1).max())
    if deviation > _SUM_TOLERANCE:
        raise ValueError(
            f"probs must sum to 1 over classes (dim 0), max deviation {deviation:.3g}: apply softmax over the class "
            "dimension first"
        )
    # pydensecrf takes writable C-contiguous buffers: copy views (crops, ::-1 flips) and read-only arrays (np.asarray
    # of a PIL image) instead of failing inside Cython.
    return np.require(image, requirements=["C", "W"]), np.require(probs, requirements=["C", "W"])


@dataclass(frozen=True)
class DenseCRF:
    """Dense CRF refinement: ``crf(image uint8 (H, W, 3), probs (C, H, W)) -> probs (C, H, W)`` float32, summing to 1.

    Defaults are DeepLab-LargeFOV's (arXiv:1412.7062): ``pos_w`` = w2 = 3, ``pos_xy_std`` = sigma_gamma = 3 and
    10 mean-field iterations from the paper (§4); ``bi_w`` = w1 = 4, ``bi_xy_std`` = sigma_alpha = 121,
    ``bi_rgb_std`` = sigma_beta = 5 cross-validated for DeepLab-LargeFOV in DeepLab's released code
    (``matlab/my_script/SetupEnv.m``, model ``vgg128_noup_pool3_20M_largewin3``). Cross-validate them for another
    network or data set with :func:`grid_search`. Also accepts torch tensors (moved to the CPU).
    """

    iterations: int = 10
    bi_w: float = 4.0
    bi_xy_std: float = 121.0
    bi_rgb_std: float = 5.0
    pos_w: float = 3.0
    pos_xy_std: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise ValueError(f"iterations must be a positive int, got {self.iterations!r}")
        for name in ("bi_xy_std", "bi_rgb_std", "pos_xy_std"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (a standard deviation), got {getattr(self, name)!r}")
        for name in ("bi_w", "pos_w"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0 (a kernel weight), got {getattr(self, name)!r}")

    def __call__(self, image: Any, probs: Any) -> np.ndarray:
        try:
            import pydensecrf.densecrf as dcrf
            from pydensecrf.utils import unary_from_softmax
        except ImportError:
            raise ImportError(
                "the dense CRF needs pydensecrf: pip install 'seglearn[crf]' (or pip install pydensecrf2)"
            ) from None

        image, probs = check_inputs(image, probs)
        c, h, w = probs.shape
        crf = dcrf.DenseCRF2D(w, h, c)
        crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))  # (C, H*W) float32, -log p
        crf.addPairwiseGaussian(sxy=self.pos_xy_std, compat=self.pos_w)
        crf.addPairwiseBilateral(sxy=self.bi_xy_std, srgb=self.bi_rgb_std, rgbim=image, compat=self.bi_w)
        q = crf.inference(self.iterations)
        return np.asarray(q, dtype=np.float32).reshape(c, h, w)


def _default_workers(n: int) -> int:
    return max(1, min(n, os.cpu_count() or 1))


def crf_batch(
    images: Sequence[Any],
    probs: Sequence[Any],
    workers: int | None = None,
    *,
    start_method: str | None = None,
    **params: Any,
) -> list[np.ndarray]:
    """Apply :class:`DenseCRF` (``**params``: its fields) to each (image, probs) pair; a list of (C, H, W) arrays.

    ``workers`` processes run images in parallel (``None``: one per CPU core, at most one per image; ``0`` or ``1``:
    in this process). The result equals the sequential one exactly: every image is an independent, deterministic
    computation. Images may differ in size. Inputs are validated before any process starts.

    ``start_method`` (``None``: ``"fork"`` on Linux, else ``"spawn"``) is the multiprocessing start method; fork
    needs no ``if __name__ == "__main__":`` guard in scripts and starts fast; the workers only run pydensecrf.
    """
    crf = DenseCRF(**params)
    if len(images) != len(probs):
        raise ValueError(f"got {len(images)} images but {len(probs)} probability maps: pass one per image")
    pairs = [check_inputs(image, p) for image, p in zip(images, probs, strict=True)]
    workers = _default_workers(len(pairs)) if workers is None else workers
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers <= 1 or len(pairs) <= 1:
        return [crf(image, p) for image, p in pairs]
    context = multiprocessing.get_context(start_method or ("fork" if sys.platform.startswith("linux") else "spawn"))
    with ProcessPoolExecutor(max_workers=min(workers, len(pairs)), mp_context=context) as pool:
        return list(pool.map(crf, *zip(*pairs, strict=True)))


def grid_search(
    images: Sequence[Any],
    probs: Sequence[Any],
    targets: Sequence[Any],
    w1s: Sequence[float],
    alphas: Sequence[float],
    betas: Sequence[float],
    num_classes: int,
    *,
    ignore_index: int = 255,
    workers: int | None = None,
    **params: Any,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every (w1 = ``bi_w``, sigma_alpha = ``bi_xy_std``, sigma_beta = ``bi_rgb_std``) by mIoU on a subset.

    DeepLab (arXiv:1412.7062 §4) fixes w2 = 3, sigma_gamma = 3 and searches w1 in [5, 10], sigma_alpha in
    [50:10:100], sigma_beta in [3:6] on 100 validation images, coarse to fine. ``params`` fixes the other
    :class:`DenseCRF` fields. ``targets`` are (H, W) label maps (``ignore_index`` ignored).

    Returns ``(best, table)``: ``best`` holds the :class:`DenseCRF` keyword arguments of the highest mIoU (first on
    ties), so ``DenseCRF(**best)`` rebuilds it; ``table`` has one row per combination, in grid order, with those
    arguments plus ``"miou"``; the first row (``bi_w=None``) is the score without the CRF, for comparison.
    """
    import torch

    from .metrics import ConfusionMatrix

    if not (len(images) == len(probs) == len(targets)) or len(images) == 0:
        raise ValueError(
            f"need as many images, probs and targets (and at least one), got {len(images)}, {len(probs)}, "
            f"{len(targets)}"
        )
    if not (len(w1s) and len(alphas) and len(betas)):
        raise ValueError("w1s, alphas and betas must each hold at least one value")
    labels = [torch.as_tensor(np.asarray(_to_numpy(t), dtype=np.int64))[None] for t in targets]

    def score(refined: Sequence[Any]) -> float:
        cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
        for p, t in zip(refined, labels, strict=True):
            cm.update(torch.as_tensor(np.asarray(_to_numpy(p)).argmax(axis=0))[None], t)
        return float(cm.compute().miou)

    table: list[dict[str, Any]] = [{"bi_w": None, "bi_xy_std": None, "bi_rgb_std": None, "miou": score(probs)}]
    for w1, alpha, beta in itertools.product(w1s, alphas, betas):
        kwargs = {**params, "bi_w": w1, "bi_xy_std": alpha, "bi_rgb_std": beta}
        refined = crf_batch(images, probs, workers=workers, **kwargs)
        table.append({**asdict(DenseCRF(**kwargs)), "miou": score(refined)})
    best_row = max(table[1:], key=lambda row: row["miou"])
    best = {k: v for k, v in best_row.items() if k != "miou"}
    return best, table


def format_grid(table: Sequence[dict[str, Any]]) -> str:
    """The table of :func:`grid_search` as aligned text (mIoU in percent, best row marked with ``*``)."""
    best = max((row["miou"] for row in table if row["bi_w"] is not None), default=None)
    lines = [f"{'w1':>6} {'s_alpha':>8} {'s_beta':>7} {'mIoU %':>8}"]
    for row in table:
        if row["bi_w"] is None:
            lines.append(f"{'no CRF':>23} {100 * row['miou']:8.2f}")
            continue
        mark = " *" if row["miou"] == best else ""
        lines.append(f"{row['bi_w']:6g} {row['bi_xy_std']:8g} {row['bi_rgb_std']:7g} {100 * row['miou']:8.2f}{mark}")
    return "\n".join(lines)
