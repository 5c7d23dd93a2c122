"""SegmentationFolder: a user's own images and masks, the formats it reads, and a clear error for each bad case."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglearn.data import SegmentationFolder, eval_transforms

CLASSES = ["background", "road", "car"]
PALETTE = [[0, 0, 0], [128, 64, 128], [64, 0, 128]]


def _image(rng: np.random.Generator, h: int = 12, w: int = 16) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _labels(rng: np.random.Generator, h: int = 12, w: int = 16, n: int = 3) -> np.ndarray:
    return rng.integers(0, n, (h, w), dtype=np.uint8)


def make_folder(root: Path, n: int = 4, *, classes: list[str] | None = CLASSES, mask_ext: str = ".png",
                image_ext: str = ".jpg") -> tuple[Path, list[np.ndarray]]:  # fmt: skip
    """root/images/000i.jpg, root/masks/000i.png (index masks) and classes.json; returns (root, label arrays)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    labels = []
    for i in range(n):
        Image.fromarray(_image(rng)).save(root / "images" / f"{i:04d}{image_ext}")
        lab = _labels(rng)
        Image.fromarray(lab).save(root / "masks" / f"{i:04d}{mask_ext}")
        labels.append(lab)
    if classes is not None:
        config = {"classes": classes, **({"palette": PALETTE} if len(classes) == len(PALETTE) else {})}
        (root / "classes.json").write_text(json.dumps(config))
    return root, labels


# ---------------------------------------------------------------- what it reads


def test_index_masks_pair_by_stem_with_classes_json(tmp_path):
    root, labels = make_folder(tmp_path)
    ds = SegmentationFolder(root / "images")
    assert len(ds) == 4 and ds.classes == tuple(CLASSES) and ds.num_classes == 3
    assert ds.palette.tolist() == PALETTE
    image, mask = ds[2]
    assert image.shape == (12, 16, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(mask, labels[2])
    assert mask.dtype == np.int64


def test_transforms_preload_and_class_weights_work_as_for_camvid(tmp_path):
    root, _ = make_folder(tmp_path)
    ds = SegmentationFolder(root / "images", transforms=eval_transforms())
    pre = SegmentationFolder(root / "images", transforms=eval_transforms(), preload=True)
    assert pre.preloaded and pre.preloaded_bytes > 0
    for i in range(len(ds)):
        a, b = ds[i], pre[i]
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    weights = ds.class_weights()
    assert weights.shape == (3,) and torch.all(weights > 0)


def test_palette_png_masks_give_their_indices(tmp_path):
    root, labels = make_folder(tmp_path)
    for i, lab in enumerate(labels):
        im = Image.fromarray(lab, mode="P")
        im.putpalette(np.asarray(PALETTE, np.uint8).ravel().tolist())
        im.save(root / "masks" / f"{i:04d}.png")
    ds = SegmentationFolder(root / "images")
    np.testing.assert_array_equal(ds[1][1], labels[1])


def test_rgb_colour_masks_map_through_the_palette(tmp_path):
    root, labels = make_folder(tmp_path)
    pal = np.asarray(PALETTE, np.uint8)
    for i, lab in enumerate(labels):
        rgb = pal[lab]
        rgb[0, 0] = (255, 255, 255)  # a void colour
        Image.fromarray(rgb).save(root / "masks" / f"{i:04d}.png")
    ds = SegmentationFolder(root / "images", void_values=[[255, 255, 255]])
    mask = ds[3][1]
    assert mask[0, 0] == 255
    np.testing.assert_array_equal(mask.ravel()[1:], labels[3].ravel()[1:])


def test_binary_0_255_masks_are_foreground_not_ignore(tmp_path):
    """The most common own-data format: black background, white foreground, often saved as RGB."""
    root, _ = make_folder(tmp_path, classes=["background", "object"])
    fg = np.zeros((12, 16), np.uint8)
    fg[3:9, 4:10] = 255
    for i in range(4):
        Image.fromarray(fg).save(root / "masks" / f"{i:04d}.png") if i % 2 else Image.fromarray(
            np.stack([fg] * 3, -1)
        ).save(root / "masks" / f"{i:04d}.png")
    ds = SegmentationFolder(root / "images")
    for i in range(4):
        mask = ds[i][1]
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert (mask == 1).sum() == 36
    assert ds.class_weights().shape == (2,)
    keep = SegmentationFolder(root / "images", binary=False)  # 255 as "unlabelled", when that is what it means
    assert set(np.unique(keep[0][1]).tolist()) == {0, 255}


def test_mask_suffix_and_mixed_image_formats(tmp_path):
    root, labels = make_folder(tmp_path, n=2)
    for p in (root / "masks").iterdir():
        p.rename(p.with_name(p.stem + "_mask.png"))
    Image.open(root / "images" / "0001.jpg").save(root / "images" / "0001.bmp")
    (root / "images" / "0001.jpg").unlink()
    ds = SegmentationFolder(root / "images", mask_suffix="_mask")
    assert [p.name for p, _ in ds.samples] == ["0000.jpg", "0001.bmp"]
    np.testing.assert_array_equal(ds[1][1], labels[1])


def test_val_fraction_split_is_seeded_disjoint_and_complete(tmp_path):
    root, _ = make_folder(tmp_path, n=10)
    train = SegmentationFolder(root / "images", split="train", val_fraction=0.3, seed=1)
    val = SegmentationFolder(root / "images", split="val", val_fraction=0.3, seed=1)
    again = SegmentationFolder(root / "images", split="val", val_fraction=0.3, seed=1)
    names = lambda ds: {p.name for p, _ in ds.samples}  # noqa: E731
    assert len(val) == 3 and len(train) == 7 and names(val) == names(again)
    assert not names(train) & names(val) and len(names(train) | names(val)) == 10
    other = SegmentationFolder(root / "images", split="val", val_fraction=0.3, seed=2)
    assert names(other) != names(val) or len(val) == 0


def test_split_lists_beside_the_data(tmp_path):
    root, _ = make_folder(tmp_path, n=4)
    (root / "val.txt").write_text("0003\n0001\n")
    val = SegmentationFolder(root / "images", split="val")
    assert [p.stem for p, _ in val.samples] == ["0003", "0001"]


def test_arguments_win_over_classes_json(tmp_path):
    root, _ = make_folder(tmp_path)
    ds = SegmentationFolder(root / "images", classes=["a", "b", "c"], palette=[[1, 1, 1], [2, 2, 2], [3, 3, 3]])
    assert ds.classes == ("a", "b", "c") and ds.palette[2].tolist() == [3, 3, 3]


def test_stats_cache_follows_a_mask_edited_in_place(tmp_path):
    root, labels = make_folder(tmp_path)
    before = SegmentationFolder(root / "images").class_frequencies()
    path = root / "masks" / "0000.png"
    Image.fromarray(np.full_like(labels[0], 2)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    after = SegmentationFolder(root / "images").class_frequencies()
    assert not np.allclose(before, after)


# ---------------------------------------------------------------- every way the data can be wrong


def _jpeg_mask(root):
    (root / "masks" / "0000.png").unlink()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / "0000.jpg")


def _jpeg_named_png(root):
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / "0002.png", format="JPEG")


def _unmatched(root):
    (root / "masks" / "0002.png").unlink()
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "masks" / "extra.png")


def _suffixed(root):
    for p in (root / "masks").iterdir():
        p.rename(p.with_name(p.stem + "_mask.png"))


def _stray_value(root):
    lab = np.zeros((12, 16), np.uint8)
    lab[:2, :3] = 7
    Image.fromarray(lab).save(root / "masks" / "0001.png")


def _size_mismatch(root):
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(root / "masks" / "0001.png")


def _sixteen_bit(root):
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(root / "masks" / "0001.png")


def _rgba(root):
    Image.fromarray(np.zeros((12, 16, 4), np.uint8), mode="RGBA").save(root / "masks" / "0001.png")


def _colour_without_palette(root):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(root / "masks" / "0001.png")
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES}))


def _colour_not_in_palette(root):
    rgb = np.zeros((12, 16, 3), np.uint8)
    rgb[5, 5] = (10, 20, 30)
    Image.fromarray(rgb).save(root / "masks" / "0001.png")


def _truncated_image(root):
    path = root / "images" / "0001.jpg"
    path.write_bytes(path.read_bytes()[:100])


def _not_an_image(root):
    (root / "masks" / "0001.png").write_text("this is not a PNG")


def _duplicate_stem(root):
    Image.open(root / "images" / "0001.jpg").save(root / "images" / "0001.png")


def _no_classes(root):
    (root / "classes.json").unlink()


def _bad_json(root):
    (root / "classes.json").write_text("{classes: [")


def _empty_masks(root):
    for p in (root / "masks").iterdir():
        p.unlink()


def _bad_palette(root):
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "palette": [[0, 0, 0]]}))


def _missing_listed(root):
    (root / "val.txt").write_text("0001\nnosuch\n")


BAD = [
    # (case, how to break the folder, what the message must say besides the file, which file it must name)
    ("jpeg mask", _jpeg_mask, "save masks as PNG", "0000.jpg"),
    ("JPEG-encoded mask named .png", _jpeg_named_png, "save masks as PNG", "0002.png"),
    ("unmatched stems", _unmatched, "paired by file name", "'0002'"),
    ("suffixed masks", _suffixed, "mask_suffix='_mask'", "masks"),
    ("stray mask value", _stray_value, "7 (6 pixels)", "0001.png"),
    ("size mismatch", _size_mismatch, "does not match", "0001.png"),
    ("16-bit mask", _sixteen_bit, "8-bit PNG", "0001.png"),
    ("RGBA mask", _rgba, "without transparency", "0001.png"),
    ("colour mask without palette", _colour_without_palette, "pass palette=", "0001.png"),
    ("colour not in palette", _colour_not_in_palette, "(10, 20, 30): 1 pixels", "0001.png"),
    ("truncated image", _truncated_image, "damaged or not an image", "0001.jpg"),
    ("mask that is not an image", _not_an_image, "damaged or not an image", "0001.png"),
    ("duplicate stem", _duplicate_stem, "keep one file per name", "0001.png"),
    ("no class names", _no_classes, "classes.json", "classes.json"),
    ("invalid classes.json", _bad_json, "not valid JSON", "classes.json"),
    ("empty mask folder", _empty_masks, "is this the right folder", "masks"),
    ("palette of the wrong size", _bad_palette, "one [r, g, b] per class", "palette"),
    ("split list naming a missing file", _missing_listed, "'nosuch'", "val.txt"),
]


@pytest.mark.parametrize("case, breaker, fix, names", BAD, ids=[b[0] for b in BAD])
def test_bad_data_gets_an_error_naming_the_file_and_the_fix(tmp_path, case, breaker, fix, names):
    root, _ = make_folder(tmp_path)
    breaker(root)
    with pytest.raises((ValueError, OSError)) as info:
        split = "val" if breaker is _missing_listed else None
        ds = SegmentationFolder(root / "images", split=split)
        for i in range(len(ds)):  # file contents are checked when read (or all at once by preload)
            ds[i]
    message = str(info.value)
    assert fix in message, message
    assert names in message, message


def test_missing_folder_says_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass the folder that holds your image files"):
        SegmentationFolder(tmp_path / "nosuch", classes=["a", "b"])


def test_preload_finds_a_bad_mask_before_training(tmp_path):
    root, _ = make_folder(tmp_path)
    _stray_value(root)
    with pytest.raises(ValueError, match="0001.png"):
        SegmentationFolder(root / "images", preload=True)
