"""Transform presets keep masks aligned with images, never invent label values, and pad masks with ignore_index."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from seglearn.data import CAMVID_PALETTE, SyntheticScenes, denormalize, eval_transforms, train_transforms
from seglearn.data.transforms import MASK_INTERPOLATION

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
    for angle in (-10, 180.5, float("nan")):
        with pytest.raises(
            ValueError, match=r"rotate is the largest absolute angle in degrees: pass 0 <= rotate <= 180"
        ):
            train_transforms(32, rotate=angle)


def test_voc_image_smaller_than_the_crop_is_padded_with_0_and_ignore() -> None:
    """A 281x500 VOC image at crop 321 (height padded) or 513 (both padded), scale 1: every original pixel survives
    unchanged, in one block, and exactly the padding is 0 in the image and 255 in the mask."""
    rng = np.random.default_rng(8)
    mask = rng.choice(np.arange(21), (281, 500)).astype(np.uint8)
    image = rng.integers(1, 256, (281, 500, 3), dtype=np.uint8)  # never 0, so padding is recognisable
    for crop in (321, 513):
        out_image, out_mask = _run(train_transforms(crop, scale=(1.0, 1.0), hflip=False), image, mask)
        assert out_mask.shape == (crop, crop)
        rows, cols = np.nonzero(out_mask != 255)
        top, left = rows.min(), cols.min()
        kept_h, kept_w = min(281, crop), min(500, crop)
        assert (rows.max() - top + 1, cols.max() - left + 1) == (kept_h, kept_w)
        assert (out_mask == 255).sum() == crop * crop - kept_h * kept_w
        np.testing.assert_array_equal(out_mask == 255, (out_image == 0).all(-1))
        window = out_mask[top : top + kept_h, left : left + kept_w]
        hits = [x for x in range(500 - kept_w + 1) if np.array_equal(mask[:, x : x + kept_w], window)]
        assert len(hits) == 1  # the labelled block is the image's own, uncut rows and a window of its columns
        np.testing.assert_array_equal(
            out_image[top : top + kept_h, left : left + kept_w], image[:, hits[0] : hits[0] + kept_w]
        )


def _seeded(preset: A.Compose, seed: int, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    preset.set_random_seed(seed)
    return _run(preset, image, mask)


def test_rotate_exposes_ignore_corners_never_class_0() -> None:
    """rotate=10 on a constant class-3 mask: only 3 and 255 come out, the corners turn 255 for most angles, the centre
    disk (inside the image at any angle) stays 3, and the image is 0 exactly where the mask is 255."""
    mask = np.full((64, 64), 3, np.uint8)
    image = np.full((64, 64, 3), 200, np.uint8)
    preset = train_transforms(64, scale=(1.0, 1.0), hflip=False, rotate=10, interpolation=cv2.INTER_NEAREST_EXACT)
    yy, xx = np.mgrid[:64, :64]
    centre = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 < 30**2
    cornered = 0
    for seed in range(20):
        out_image, out_mask = _seeded(preset, seed, image, mask)
        assert set(np.unique(out_mask)) <= {3, 255}
        assert (out_mask[centre] == 3).all()
        np.testing.assert_array_equal(out_mask == 255, (out_image == 0).all(-1))
        cornered += all(out_mask[y, x] == 255 for y in (0, -1) for x in (0, -1))
    assert cornered >= 10, "angles beyond ~1.5 degrees must uncover all four corner pixels"
    _, out_mask = _seeded(train_transforms(64, scale=(1.0, 1.0), rotate=10, ignore_index=100), 0, image, mask)
    assert set(np.unique(out_mask)) == {3, 100}


def test_rotate_keeps_the_mask_on_the_bilinear_image() -> None:
    """Two classes drawn dark/bright: after a bilinear rotation the image's bright pixels are the mask's class 7.

    Aligned, under 1% of labelled pixels (block corners) disagree; a quarter-pixel shift of the mask makes ~3%.
    """
    rng = np.random.default_rng(9)
    coarse = rng.choice(np.array([3, 7], np.uint8), (17, 17))
    mask = np.kron(coarse, np.ones((4, 4), np.uint8))[:64, :64]
    image = np.where(mask[..., None] == 7, 250, 5).astype(np.uint8).repeat(3, -1)
    preset = train_transforms(64, scale=(1.0, 1.0), hflip=False, rotate=10)
    rotated = 0
    for seed in range(10):
        out_image, out_mask = _seeded(preset, seed, image, mask)
        labelled = out_mask != 255
        wrong = (out_image[..., 0] > 127) != (out_mask == 7)
        assert wrong[labelled].mean() < 0.01
        rotated += not np.array_equal(out_mask, mask)
    assert rotated >= 8  # only angles within a fraction of a degree leave the mask as it was


def test_rotate_0_is_the_unrotated_pipeline() -> None:
    """rotate=0 adds no step: the preset is the scale-pad-crop-flip pipeline and gives the same draws for a seed."""
    preset = train_transforms((32, 48), rotate=0.0)
    names = [type(t).__name__ for t in preset.transforms]
    assert names == ["RandomScale", "PadIfNeeded", "RandomCrop", "HorizontalFlip", "Normalize", "ToTensorV2"]
    assert "Rotate" in [type(t).__name__ for t in train_transforms((32, 48), rotate=5).transforms]
    reference = A.Compose(
        [
            A.RandomScale(scale_limit=(-0.5, 1.0), mask_interpolation=MASK_INTERPOLATION, p=1.0),
            A.PadIfNeeded(32, 48, position="random", border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=255),
            A.RandomCrop(32, 48),
            A.HorizontalFlip(p=0.5),
            A.Normalize(),
            ToTensorV2(),
        ]
    )
    rng = np.random.default_rng(10)
    for seed in range(5):
        image, mask = _blocky_pair(rng, 40, 30)
        got, want = _seeded(preset, seed, image, mask), _seeded(reference, seed, image, mask)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_dataset_with_preset_returns_float_image_and_long_mask() -> None:
    ds = SyntheticScenes(2, size=(40, 60), transforms=train_transforms((32, 32)))
    image, mask = ds[1]
    assert image.dtype == torch.float32 and image.shape == (3, 32, 32)
    assert mask.dtype == torch.long and mask.shape == (32, 32)
    image, mask = SyntheticScenes(1, size=(40, 60), transforms=eval_transforms())[0]
    assert image.shape == (3, 40, 60) and mask.dtype == torch.long
