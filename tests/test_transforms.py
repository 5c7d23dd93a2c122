"""Transform presets keep masks aligned with images, never invent label values, and pad masks with ignore_index."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from seglearn.data import CAMVID_PALETTE, SyntheticScenes, denormalize, eval_transforms, train_transforms

CLASSES = np.array([0, 3, 7, 10])


def _blocky_pair(rng: np.random.Generator, h: int = 37, w: int = 53, block: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """A mask of random 4x4 blocks and an image that paints each class in its own palette colour."""
    coarse = rng.integers(0, 11, (h // block + 1, w // block + 1)).astype(np.uint8)
    mask = np.kron(coarse, np.ones((block, block), np.uint8))[:h, :w]
    return CAMVID_PALETTE[mask], mask


def _run(preset, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = preset(image=image, mask=mask)
    assert out["image"].dtype == torch.float32 and out["image"].shape[0] == 3
    return denormalize(out["image"]), out["mask"].numpy()


def test_train_preset_keeps_every_pixel_aligned_with_nearest_images() -> None:
    """With nearest-neighbour images too, every labelled pixel keeps its class colour, every padded pixel is black."""
    rng = np.random.default_rng(0)
    preset = train_transforms((32, 48), scale=(0.5, 2.0), interpolation=cv2.INTER_NEAREST_EXACT)
    padded = 0
    for _ in range(30):
        image, mask = _blocky_pair(rng)
        out_image, out_mask = _run(preset, image, mask)
        assert out_mask.shape == (32, 48)
        labelled = out_mask != 255
        np.testing.assert_array_equal(out_image[labelled], CAMVID_PALETTE[out_mask[labelled]])
        np.testing.assert_array_equal(out_image[~labelled], 0)
        padded += (~labelled).sum()
    assert padded > 0, "scales below 1 must have needed padding in 30 draws"


def test_train_preset_aligned_with_bilinear_images() -> None:
    """Default bilinear images: pixels inside a uniform 3x3 mask neighbourhood keep their class colour."""
    rng = np.random.default_rng(1)
    preset = train_transforms(40, scale=(0.5, 2.0))
    checked = 0
    for _ in range(30):
        image, mask = _blocky_pair(rng, 45, 61)
        out_image, out_mask = _run(preset, image, mask)
        assert out_mask.shape == (40, 40)
        m = out_mask.astype(np.int32)
        uniform = np.ones_like(m, dtype=bool)[1:-1, 1:-1]
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                uniform &= m[1 + dy : m.shape[0] - 1 + dy, 1 + dx : m.shape[1] - 1 + dx] == m[1:-1, 1:-1]
        inner = uniform & (m[1:-1, 1:-1] != 255)
        got = out_image[1:-1, 1:-1][inner].astype(int)
        want = CAMVID_PALETTE[m[1:-1, 1:-1][inner]].astype(int)
        assert np.abs(got - want).max(initial=0) <= 2
        checked += inner.sum()
    assert checked > 10_000


def test_plain_cv2_nearest_would_misalign_masks() -> None:
    """Why the presets use INTER_NEAREST_EXACT: cv2's INTER_NEAREST is off by up to half a pixel at scale 1.7."""
    image, mask = _blocky_pair(np.random.default_rng(1), 45, 61)
    size = (104, 77)  # (W, H) at scale 1.7
    linear = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).astype(int)
    for interp, misaligned in ((cv2.INTER_NEAREST, True), (cv2.INTER_NEAREST_EXACT, False)):
        m = cv2.resize(mask, size, interpolation=interp)
        centre = m[1:-1, 1:-1]
        uniform = np.logical_and.reduce(
            [
                m[1 + dy : m.shape[0] - 1 + dy, 1 + dx : m.shape[1] - 1 + dx] == centre
                for dy in (-1, 0, 1)
                for dx in (-1, 0, 1)
            ]
        )
        err = np.abs(linear[1:-1, 1:-1][uniform] - CAMVID_PALETTE[centre[uniform]]).max()
        assert (err > 2) == misaligned


def test_no_new_label_values_and_255_only_from_padding() -> None:
    rng = np.random.default_rng(2)
    preset = train_transforms((48, 48), scale=(0.5, 2.0))
    for _ in range(30):
        mask = rng.choice(CLASSES, (50, 70)).astype(np.uint8)  # per-pixel noise: any interpolation would mix values
        image = rng.integers(1, 256, (50, 70, 3), dtype=np.uint8)  # never 0, so padding is recognisable
        out_image, out_mask = _run(preset, image, mask)
        assert set(np.unique(out_mask)) <= {*CLASSES.tolist(), 255}
        np.testing.assert_array_equal(out_mask == 255, (out_image == 0).all(-1))


def test_upscaling_needs_no_padding_and_custom_ignore_index() -> None:
    rng = np.random.default_rng(3)
    mask = rng.choice(CLASSES, (30, 40)).astype(np.uint8)
    image = rng.integers(1, 256, (30, 40, 3), dtype=np.uint8)
    _, out_mask = _run(train_transforms(24, scale=(2.0, 2.0)), image, mask)
    assert 255 not in out_mask
    _, out_mask = _run(train_transforms(64, scale=(1.0, 1.0), ignore_index=100), image, mask)
    assert (out_mask == 100).sum() == 64 * 64 - 30 * 40


def test_hflip_flips_image_and_mask_together() -> None:
    rng = np.random.default_rng(4)
    image, mask = _blocky_pair(rng, 32, 32)
    flips = 0
    for _ in range(20):
        out_image, out_mask = _run(train_transforms(32, scale=(1.0, 1.0)), image, mask)
        if np.array_equal(out_mask, mask[:, ::-1]) and not np.array_equal(mask, mask[:, ::-1]):
            np.testing.assert_array_equal(out_image, image[:, ::-1])
            flips += 1
        else:
            np.testing.assert_array_equal(out_mask, mask)
            np.testing.assert_array_equal(out_image, image)
    assert 0 < flips < 20
    out_image, out_mask = _run(train_transforms(32, scale=(1.0, 1.0), hflip=False), image, mask)
    np.testing.assert_array_equal(out_image, image)


def test_eval_preset_keeps_size_or_resizes_nearest() -> None:
    rng = np.random.default_rng(5)
    image, mask = _blocky_pair(rng, 37, 53)
    out_image, out_mask = _run(eval_transforms(), image, mask)
    np.testing.assert_array_equal(out_image, image)  # normalize + denormalize is exact on uint8
    np.testing.assert_array_equal(out_mask, mask)
    out_image, out_mask = _run(eval_transforms((20, 30), interpolation=cv2.INTER_NEAREST_EXACT), image, mask)
    assert out_mask.shape == (20, 30)
    np.testing.assert_array_equal(out_image, CAMVID_PALETTE[out_mask])
    _, out_mask = _run(eval_transforms(25), image, mask)
    assert out_mask.shape == (25, 25) and set(np.unique(out_mask)) <= set(np.unique(mask))


def test_normalize_uses_imagenet_statistics() -> None:
    image = np.full((4, 4, 3), 255, np.uint8)
    out = eval_transforms()(image=image, mask=np.zeros((4, 4), np.uint8))["image"]
    expected = (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected.numpy(), rtol=1e-6)


def test_denormalize_batches_and_rejects_bad_shapes() -> None:
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    batch = torch.stack([eval_transforms()(image=im, mask=np.zeros((5, 7), np.uint8))["image"] for im in images])
    np.testing.assert_array_equal(denormalize(batch), images)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        denormalize(torch.zeros(5, 7))


def test_bad_preset_arguments() -> None:
    with pytest.raises(ValueError, match="crop_size"):
        train_transforms(0)
    with pytest.raises(ValueError, match="scale"):
        train_transforms(32, scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="size"):
        eval_transforms((0, 10))


def test_dataset_with_preset_returns_float_image_and_long_mask() -> None:
    ds = SyntheticScenes(2, size=(40, 60), transforms=train_transforms((32, 32)))
    image, mask = ds[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.long and mask.shape == (32, 32)
    image, mask = SyntheticScenes(1, size=(40, 60), transforms=eval_transforms())[0]
    assert image.shape == (3, 40, 60) and mask.dtype == torch.long
