"""Dense CRF: it snaps blurry/noisy probabilities to a colour edge, stays a distribution, validates its inputs and
runs batches in processes with exactly the sequential result."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from seglearn.crf import DenseCRF, check_inputs, crf_batch, format_grid, grid_search
from seglearn.metrics import ConfusionMatrix

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

H, W = 40, 56


def two_colour_scene(seed: int = 0, edge: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Red left of column ``edge``, blue right of it, with mild pixel noise; truth 0 left, 1 right."""
    rng = np.random.default_rng(seed)
    image = np.zeros((H, W, 3), np.int64)
    image[:, :edge] = (200, 40, 40)
    image[:, edge:] = (40, 40, 200)
    image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
    truth = np.zeros((H, W), np.int64)
    truth[:, edge:] = 1
    return image, truth


def blurry_probs(edge: int, seed: int = 0, flip: float = 0.25) -> np.ndarray:
    """A coarse network's guess: a soft ramp at the wrong column plus random confident-ish mistakes."""
    rng = np.random.default_rng(seed)
    p1 = 1 / (1 + np.exp(-(np.arange(W) - edge) / 3.0))  # (W,) sigmoid ramp
    p1 = np.broadcast_to(0.1 + 0.8 * p1, (H, W)).copy()
    flips = rng.random((H, W)) < flip
    p1[flips] = 1 - p1[flips]
    return np.stack([1 - p1, p1]).astype(np.float32)


def miou(probs: np.ndarray, truth: np.ndarray, num_classes: int = 2) -> float:
    cm = ConfusionMatrix(num_classes)
    cm.update(torch.from_numpy(probs.argmax(0))[None], torch.from_numpy(truth)[None])
    return cm.compute().miou


def test_defaults_are_deeplab_largefov() -> None:
    crf = DenseCRF()
    assert (crf.iterations, crf.pos_w, crf.pos_xy_std) == (10, 3.0, 3.0)  # the paper, §4
    assert (crf.bi_w, crf.bi_xy_std, crf.bi_rgb_std) == (4.0, 121.0, 5.0)  # DeepLab-LargeFOV's released setting


def test_crf_moves_a_misplaced_boundary_onto_the_colour_edge() -> None:
    image, truth = two_colour_scene(edge=30)
    probs = blurry_probs(edge=24)  # boundary 6 columns too far left, 25% of pixels flipped
    refined = DenseCRF()(image, probs)
    before, after = miou(probs, truth), miou(refined, truth)
    assert before < 0.6
    assert after > 0.95
    assert after > before + 0.3
    # the columns between the guessed and the true edge are now labelled by colour
    assert (refined.argmax(0)[:, 24:30] == 0).mean() > 0.95


def test_output_is_a_distribution_of_the_same_shape() -> None:
    image, _ = two_colour_scene()
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(5, H, W))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    out = DenseCRF(iterations=5)(image, probs)
    assert out.shape == (5, H, W) and out.dtype == np.float32
    assert out.min() >= 0
    np.testing.assert_allclose(out.sum(0), 1.0, atol=1e-5)


def test_deterministic_and_accepts_tensors() -> None:
    image, _ = two_colour_scene()
    probs = blurry_probs(edge=24)
    crf = DenseCRF()
    first = crf(image, probs)
    np.testing.assert_array_equal(first, crf(image, probs))
    np.testing.assert_array_equal(first, crf(torch.from_numpy(image), torch.from_numpy(probs)))


def test_zero_pairwise_weights_keep_the_unary_argmax() -> None:
    image, _ = two_colour_scene()
    probs = blurry_probs(edge=24)
    out = DenseCRF(bi_w=0, pos_w=0)(image, probs)
    np.testing.assert_array_equal(out.argmax(0), probs.argmax(0))


def test_non_contiguous_image_is_made_contiguous() -> None:
    image, _ = two_colour_scene()
    probs = blurry_probs(edge=24)
    flipped = image[:, ::-1]  # a view with negative strides
    assert not flipped.flags.c_contiguous
    np.testing.assert_array_equal(
        DenseCRF()(flipped, probs[:, :, ::-1]), DenseCRF()(flipped.copy(), probs[:, :, ::-1].copy())
    )


def test_read_only_arrays_are_accepted() -> None:
    from PIL import Image

    image, _ = two_colour_scene()
    read_only = np.asarray(Image.fromarray(image))  # what np.asarray gives for a PIL image
    assert not read_only.flags.writeable
    probs = blurry_probs(edge=24)
    probs.setflags(write=False)
    np.testing.assert_array_equal(DenseCRF()(read_only, probs), DenseCRF()(image, blurry_probs(edge=24)))


@pytest.mark.parametrize(
    ("image", "probs", "error", "match"),
    [
        (np.zeros((H, W, 3), np.float32), np.full((2, H, W), 0.5, np.float32), TypeError, "uint8"),
        (np.zeros((3, H, W), np.uint8), np.full((2, H, W), 0.5, np.float32), ValueError, r"\(H, W, 3\)"),
        (np.zeros((H, W, 3), np.uint8), np.full((2, H, W - 1), 0.5, np.float32), ValueError, "resize"),
        (np.zeros((H, W, 3), np.uint8), np.full((2, H, W), 0.7, np.float32), ValueError, "softmax"),
        (np.zeros((H, W, 3), np.uint8), np.full((H, W), 0.5, np.float32), ValueError, r"\(C, H, W\)"),
        (np.zeros((H, W, 3), np.uint8), np.stack([np.full((H, W), 2.0), np.full((H, W), -1.0)]), ValueError, "logits"),
    ],
    ids=["float-image", "chw-image", "size-mismatch", "not-summing-to-1", "2d-probs", "negative"],
)
def test_bad_inputs_raise_clear_errors(image, probs, error, match) -> None:
    with pytest.raises(error, match=match):
        DenseCRF()(image, probs)
    with pytest.raises(error, match=match):
        check_inputs(image, probs)


@pytest.mark.parametrize("kwargs", [{"iterations": 0}, {"bi_xy_std": 0}, {"pos_w": -1}])
def test_bad_parameters_raise(kwargs) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DenseCRF(**kwargs)


def test_batch_in_two_processes_equals_sequential() -> None:
    scenes = [two_colour_scene(seed=s, edge=20 + 4 * s) for s in range(4)]
    images = [image for image, _ in scenes]
    probs = [blurry_probs(edge=16 + 4 * s, seed=s) for s in range(4)]
    images[3] = np.ascontiguousarray(images[3][:, :40])  # sizes may differ between images
    probs[3] = probs[3][:, :, :40] / probs[3][:, :, :40].sum(0)
    sequential = crf_batch(images, probs, workers=1, iterations=5)
    parallel = crf_batch(images, probs, workers=2, iterations=5)
    assert len(parallel) == 4
    for s, p, image, prob in zip(sequential, parallel, images, probs, strict=True):
        np.testing.assert_array_equal(s, p)
        np.testing.assert_array_equal(s, DenseCRF(iterations=5)(image, prob))


def test_batch_validates_before_starting_processes() -> None:
    image, _ = two_colour_scene()
    with pytest.raises(ValueError, match="one per image"):
        crf_batch([image, image], [blurry_probs(24)], workers=2)
    with pytest.raises(ValueError, match="softmax"):
        crf_batch([image, image], [blurry_probs(24), blurry_probs(24) * 2], workers=2)


def test_grid_search_finds_the_parameters_that_fix_the_edge() -> None:
    scenes = [two_colour_scene(seed=s) for s in range(2)]
    images = [image for image, _ in scenes]
    targets = [truth for _, truth in scenes]
    probs = [blurry_probs(edge=24, seed=s) for s in range(2)]
    best, table = grid_search(images, probs, targets, w1s=[0.0, 5.0], alphas=[50.0], betas=[3.0, 5.0], num_classes=2)
    assert len(table) == 1 + 4
    assert table[0]["bi_w"] is None and table[0]["miou"] == pytest.approx(
        miou(np.concatenate(probs, 1), np.concatenate(targets, 0))
    )
    assert best["bi_w"] == 5.0  # without the bilateral term nothing follows the colour edge
    assert max(row["miou"] for row in table[1:]) == next(
        row["miou"] for row in table[1:] if all(row[k] == v for k, v in best.items())
    )
    assert DenseCRF(**best).bi_w == 5.0
    text = format_grid(table)
    assert "no CRF" in text and "*" in text


def test_grid_search_rejects_mismatched_lists() -> None:
    image, truth = two_colour_scene()
    with pytest.raises(ValueError, match="as many"):
        grid_search([image], [blurry_probs(24)], [truth, truth], [4], [50], [5], num_classes=2)


def test_crf_on_a_real_camvid_image(shared_camvid) -> None:
    from PIL import Image

    name = sorted((shared_camvid / "val").glob("*.png"))[0].name
    image = np.asarray(Image.open(shared_camvid / "val" / name).convert("RGB"))[::4, ::4]  # 90 x 120
    label = np.asarray(Image.open(shared_camvid / "valannot" / name))[::4, ::4].astype(np.int64)
    label[label == 11] = 255
    # truth made coarse (8x8 blocks, as a stride-8 network sees it) and softened: the CRF should recover detail.
    coarse = np.kron(label[::8, ::8], np.ones((8, 8), np.int64))[: label.shape[0], : label.shape[1]]
    coarse[coarse == 255] = 0
    probs = np.full((11, *label.shape), 0.3 / 10, np.float32)
    np.put_along_axis(probs, coarse[None], 0.7, axis=0)
    refined = DenseCRF()(np.ascontiguousarray(image), probs)
    assert miou(refined, label, 11) > miou(probs, label, 11)
