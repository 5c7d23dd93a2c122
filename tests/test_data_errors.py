"""Bad input fails with a clear error naming the file and what to do; convertible images are converted."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from seglearn.data import CamVid, VOCSegmentation, build_dataset, locate_dataset, read_image, read_mask


def _camvid(root: Path, n: int = 1, size: tuple[int, int] = (4, 6)) -> Path:
    for d in ("train", "trainannot"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / "train" / f"f{i}.png")
        Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(root / "trainannot" / f"f{i}.png")
    return root


def test_image_mask_size_mismatch(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    Image.fromarray(np.zeros((5, 6), np.uint8)).save(root / "trainannot" / "f0.png")
    with pytest.raises(ValueError, match=r"f0\.png is 6x4 but its mask .*f0\.png is 6x5.*does not match"):
        CamVid(root)[0]


@pytest.mark.parametrize("bad", [12, 200])
def test_camvid_mask_values_out_of_range(tmp_path: Path, bad: int) -> None:
    root = _camvid(tmp_path / "camvid")
    mask = np.zeros((4, 6), np.uint8)
    mask[0, 0] = bad
    Image.fromarray(mask).save(root / "trainannot" / "f0.png")
    with pytest.raises(
        ValueError, match=rf"trainannot/f0\.png has values \[{bad}\] outside 0\.\.10, 11 \(void\) and 255"
    ):
        CamVid(root)[0]


def test_jpeg_encoded_mask_named_png_is_refused(tmp_path: Path) -> None:
    """JPEG changes labels along every edge (1.5 % of a real mask's pixels): refused whatever the file is called."""
    root = _camvid(tmp_path / "camvid")
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(root / "trainannot" / "f0.png", format="JPEG")
    with pytest.raises(ValueError, match=r"trainannot/f0\.png is stored as JPEG, a lossy format.*save masks as PNG"):
        CamVid(root)[0]


def test_voc_mask_with_stray_values(tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(voc / "JPEGImages" / "x.jpg")
    mask = np.zeros((4, 6), np.uint8)
    mask[1, 1], mask[2, 2] = 21, 128  # e.g. a mask re-saved through a lossy or colour pipeline
    Image.fromarray(mask).save(voc / "SegmentationClass" / "x.png")
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("x\n")
    with pytest.raises(ValueError, match=r"x\.png has values \[21, 128\] outside 0\.\.20 and 255"):
        VOCSegmentation(tmp_path)[0]


def test_colour_mask_is_rejected(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "trainannot" / "f0.png")
    with pytest.raises(ValueError, match=r"f0\.png has mode 'RGB'.*map its colours to class indices"):
        CamVid(root)[0]


def test_grayscale_rgba_and_palette_images_are_converted(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (4, 6), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    np.testing.assert_array_equal(read_image(tmp_path / "gray.png"), np.repeat(gray[..., None], 3, -1))
    rgba = rng.integers(0, 256, (4, 6, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_image(tmp_path / "rgba.png"), rgba[..., :3])  # alpha dropped, colour kept
    Image.fromarray(rgba[..., :3]).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (4, 6, 3)
    root = _camvid(tmp_path / "camvid")
    Image.fromarray(gray).save(root / "train" / "f0.png")
    image, _ = CamVid(root)[0]
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8


def test_16bit_images_and_masks_are_rejected(tmp_path: Path) -> None:
    deep = np.arange(24, dtype=np.uint16).reshape(4, 6) * 2000
    cv2.imwrite(str(tmp_path / "gray16.png"), deep)
    cv2.imwrite(str(tmp_path / "rgb48.png"), np.stack([deep] * 3, -1))
    for name in ("gray16.png", "rgb48.png"):
        with pytest.raises(ValueError, match=rf"{name} has mode .* more than 8 bits.*convert it"):
            read_image(tmp_path / name)
    with pytest.raises(ValueError, match=r"gray16\.png has mode .*single-channel 8-bit"):
        read_mask(tmp_path / "gray16.png")


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SEGLEARN_SHARED_DATA", str(tmp_path / "no-shared"))
    assert locate_dataset("camvid") is None and locate_dataset("voc") is None
    msg = (
        rf"CamVid not found under {tmp_path}/data/camvid: pass download=True, run `python -m seglearn download camvid`,"
        " or set SEGLEARN_DATA"
    )
    with pytest.raises(FileNotFoundError, match=msg):
        CamVid()
    with pytest.raises(FileNotFoundError, match=r"VOC2012 not found under .*data/voc"):
        VOCSegmentation()


def test_empty_dataset_folder(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid", n=0)
    with pytest.raises(FileNotFoundError, match=r"no images in .*train: the folder is empty"):
        CamVid(root)


def test_unknown_split_and_missing_split(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    with pytest.raises(ValueError, match=r"unknown CamVid split 'training': choose one of train, val, test"):
        CamVid(root, "training")
    with pytest.raises(FileNotFoundError, match=r"split 'test' not found: expected folders .*test and .*testannot"):
        CamVid(root, "test")


def test_image_without_label(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid", n=2)
    (root / "trainannot" / "f1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no label for .*train/f1\.png in .*trainannot"):
        CamVid(root)


def test_bad_list_files(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    (root / "train.txt").write_text(
        "/SegNet/CamVid/train/f0.png /SegNet/CamVid/trainannot/f0.png\n/x/train/gone.png /x/a/gone.png\n"
    )
    with pytest.raises(FileNotFoundError, match=r"image .*train/gone\.png is listed but missing"):
        CamVid(root)
    (root / "train.txt").write_text("only-one-column.png\n")
    with pytest.raises(ValueError, match=r"train\.txt line 1: expected 'IMAGE MASK'"):
        CamVid(root)


def test_unknown_dataset_names() -> None:
    with pytest.raises(ValueError, match="dataset 'cityscapes': choose one of camvid, camvid32, voc, synthetic"):
        build_dataset("cityscapes", "train")
    with pytest.raises(ValueError, match="camvid, voc, synthetic"):
        locate_dataset("ade20k")


def test_transforms_with_wrong_calling_convention(tmp_path: Path) -> None:
    root = _camvid(tmp_path / "camvid")
    with pytest.raises(TypeError, match=r"transforms\(image=\.\.\., mask=\.\.\.\)"):
        CamVid(root, transforms=lambda image, mask: (image, mask))[0]
