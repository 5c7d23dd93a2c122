"""PASCAL VOC 2012: palette PNGs read as indices, 255 kept, SBD trainaug; the real two-image sample when present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from seglearn.data import VOC_CLASSES, VOCSegmentation, eval_transforms, locate_dataset, voc_palette


def _palette_png(path: Path, indices: np.ndarray, palette: np.ndarray) -> None:
    im = Image.frombytes("P", (indices.shape[1], indices.shape[0]), np.ascontiguousarray(indices).tobytes())
    im.putpalette(palette.astype(np.uint8).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def make_voc(root: Path, masks: dict[str, np.ndarray], train: list[str], val: list[str]) -> Path:
    """A VOCdevkit/VOC2012 under root with JPEGs, palette-PNG labels and the Segmentation lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages").mkdir(parents=True)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        Image.fromarray(rng.integers(0, 256, (*mask.shape, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        _palette_png(voc / "SegmentationClass" / f"{name}.png", mask, voc_palette())
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return root


def make_sbd(root: Path, masks: dict[str, np.ndarray], train: list[str], val: list[str]) -> Path:
    """SBD's layout: dataset/{train,val}.txt and dataset/cls/<id>.mat holding GTcls.Segmentation."""
    data = root / "dataset"
    (data / "cls").mkdir(parents=True)
    for name, mask in masks.items():
        savemat(data / "cls" / f"{name}.mat", {"GTcls": {"Segmentation": mask, "CategoriesPresent": np.unique(mask)}})
    (data / "train.txt").write_text("".join(f"{i}\n" for i in train))
    (data / "val.txt").write_text("".join(f"{i}\n" for i in val))
    return root


def _mask(value: int, boundary: bool = True) -> np.ndarray:
    m = np.zeros((5, 7), np.uint8)
    m[1:4, 2:6] = value
    if boundary:
        m[0, :] = 255
    return m


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    masks = {"A": _mask(1), "B": _mask(15), "C": _mask(20)}
    return make_voc(tmp_path / "voc", masks, train=["A", "B"], val=["C"])


def test_items_attributes_and_indices(voc: Path) -> None:
    ds = VOCSegmentation(voc, "train")
    assert len(ds) == 2 and ds.classes == VOC_CLASSES and ds.num_classes == 21 and ds.ignore_index == 255
    np.testing.assert_array_equal(ds.palette, voc_palette(21))
    image, mask = ds[1]
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8 and mask.dtype == np.int64
    np.testing.assert_array_equal(mask, _mask(15))
    assert len(VOCSegmentation(voc, "val")) == 1


def test_labels_are_indices_not_colours(tmp_path: Path) -> None:
    """A PNG whose palette is scrambled still gives its indices: colours are never looked at."""
    root = make_voc(tmp_path / "v", {"A": _mask(7)}, train=["A"], val=[])
    scrambled = np.random.default_rng(1).integers(0, 256, (256, 3))
    _palette_png(root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "A.png", _mask(7), scrambled)
    np.testing.assert_array_equal(VOCSegmentation(root)[0][1], _mask(7))


def test_voc_palette_known_colours() -> None:
    pal = voc_palette()
    assert pal.shape == (256, 3)
    assert (
        pal[1].tolist() == [128, 0, 0] and pal[15].tolist() == [192, 128, 128] and pal[255].tolist() == [224, 224, 192]
    )


def test_root_forms_and_transforms(voc: Path) -> None:
    for root in (voc, voc / "VOCdevkit", voc / "VOCdevkit" / "VOC2012"):
        assert len(VOCSegmentation(root, "train")) == 2
    image, mask = VOCSegmentation(voc, "val", transforms=eval_transforms())[0]
    assert image.shape == (3, 5, 7) and mask.dtype == torch.long and (mask == 255).sum() == 7


def test_trainaug_is_sbd_plus_voc_train_minus_voc_val(voc: Path) -> None:
    sbd_masks = {"B": _mask(3, False), "C": _mask(4, False), "D": _mask(5, False), "E": _mask(6, False)}
    rng = np.random.default_rng(2)
    voc_dir = voc / "VOCdevkit" / "VOC2012"
    for name in ("D", "E"):
        Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(voc_dir / "JPEGImages" / f"{name}.jpg")
    make_sbd(voc / "SBD", sbd_masks, train=["B", "D", "C"], val=["E"])
    ds = VOCSegmentation(voc, "trainaug")
    assert [p.stem for p, _ in ds.samples] == ["A", "B", "D", "E"], "VOC val (C) never leaks into trainaug"
    # A VOC label wins over SBD's (it has the 255 boundaries); SBD-only images use the .mat.
    assert ds.samples[1][1].suffix == ".png" and ds.samples[2][1].suffix == ".mat"
    np.testing.assert_array_equal(ds[1][1], _mask(15))
    np.testing.assert_array_equal(ds[2][1], _mask(5, False))
    np.testing.assert_array_equal(ds[3][1], _mask(6, False))


def test_trainaug_accepts_sbd_root_and_benchmark_release(voc: Path, tmp_path: Path) -> None:
    make_sbd(tmp_path / "elsewhere" / "benchmark_RELEASE", {"A": _mask(2, False)}, train=["A"], val=[])
    assert len(VOCSegmentation(voc, "trainaug", sbd_root=tmp_path / "elsewhere")) == 2


def test_trainaug_without_sbd_says_how_to_get_it(voc: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"needs SBD.*benchmark\.tgz.*sbd_root"):
        VOCSegmentation(voc, "trainaug")


def test_missing_voc_and_bad_arguments(tmp_path: Path, voc: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"VOC2012 not found under .*download=True.*seglearn download voc"):
        VOCSegmentation(tmp_path / "nothing")
    with pytest.raises(ValueError, match="train, val, trainval, trainaug"):
        VOCSegmentation(voc, "test")
    with pytest.raises(ValueError, match="VOC 2012 only"):
        VOCSegmentation(tmp_path / "nothing", year="2007", download=True)


# ----- real data: the two-image VOC 2012 sample -----


def test_real_sample_keeps_boundary_255(shared_voc: Path) -> None:
    ds = VOCSegmentation(shared_voc, "train")
    assert len(ds) >= 1
    for i in range(len(ds)):
        raw = np.array(Image.open(ds.samples[i][1]))
        image, mask = ds[i]
        assert image.shape[:2] == mask.shape and image.shape[1] == 500
        assert (mask == 255).sum() == (raw == 255).sum() > 0
        np.testing.assert_array_equal(mask, raw)
        assert set(np.unique(mask)) <= {*range(21), 255}


def test_real_sample_palette_matches_files(shared_voc: Path) -> None:
    path = VOCSegmentation(shared_voc, "val").samples[0][1]
    with Image.open(path) as im:
        assert im.mode == "P"
        np.testing.assert_array_equal(np.array(im.getpalette()[: 21 * 3]).reshape(21, 3), voc_palette(21))


def test_real_root_none_finds_shared_sample(shared_voc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path))
    monkeypatch.setenv("SEGLEARN_SHARED_DATA", str(shared_voc.parent))
    assert locate_dataset("voc") == shared_voc
    assert VOCSegmentation(split="val").root == shared_voc
