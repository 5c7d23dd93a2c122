"""``SegmentationDataset.preload``: every pair decoded once into memory gives the same items, batches and class
weights as reading from disk; bad files fail at preload time, named; CamVid, VOC and build_dataset take preload=."""

from __future__ import annotations

import multiprocessing
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from torch.utils.data import DataLoader

from seglearn.data import CamVid, SyntheticScenes, VOCSegmentation, build_dataset, train_transforms, voc_palette

SIZE = (24, 32)  # (H, W) of the fake images


def make_camvid(root: Path, n: int = 6, size: tuple[int, int] = SIZE) -> Path:
    """SegNet layout with ``n`` train and 2 val pairs: random RGB PNGs, masks with every value 0..11 (11 = void)."""
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("val", 2)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / f"f{i}.png")
            Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(root / f"{split}annot" / f"f{i}.png")
    return root


def make_voc(root: Path) -> Path:
    """VOCdevkit/VOC2012 with JPEGs of different sizes, palette-PNG labels (255 boundary), and SBD .mat labels."""
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    for d in (voc / "JPEGImages", voc / "SegmentationClass", lists, root / "SBD" / "dataset" / "cls"):
        d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(("A", "B", "C", "D")):
        h, w = 10 + 3 * i, 14 + i
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(voc / "JPEGImages" / f"{name}.jpg")
        mask = rng.integers(0, 21, (h, w), dtype=np.uint8)
        mask[0] = 255
        if name == "D":  # labelled by SBD only
            savemat(root / "SBD" / "dataset" / "cls" / "D.mat", {"GTcls": {"Segmentation": mask}})
            continue
        im = Image.frombytes("P", (w, h), mask.tobytes())
        im.putpalette(voc_palette().ravel().tolist())
        im.save(voc / "SegmentationClass" / f"{name}.png")
    (lists / "train.txt").write_text("A\nB\n")
    (lists / "val.txt").write_text("C\n")
    (root / "SBD" / "dataset" / "train.txt").write_text("B\nD\n")
    return root


@pytest.fixture
def camvid(tmp_path: Path) -> Path:
    return make_camvid(tmp_path / "camvid")


def _assert_same_items(a, b) -> None:
    assert len(a) == len(b)
    for i in range(len(a)):
        for x, y in zip(a[i], b[i], strict=True):
            assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape
            assert (x == y).all()


def test_preloaded_items_equal_disk_items(camvid: Path) -> None:
    disk, memory = CamVid(camvid), CamVid(camvid, preload=True)
    assert not disk.preloaded and disk.preloaded_bytes == 0
    assert memory.preloaded and memory.preloaded_bytes == 6 * SIZE[0] * SIZE[1] * (3 + 1)
    _assert_same_items(disk, memory)
    assert memory[0][0].dtype == np.uint8 and memory[0][1].dtype == np.int64
    assert (memory[0][1] == 255).any()  # void 11 mapped to ignore, as from disk
    assert memory.preload() is memory  # a second call keeps the arrays


def test_preloaded_items_equal_with_seeded_train_transforms(camvid: Path) -> None:
    disk, memory = (CamVid(camvid, transforms=train_transforms((16, 24))) for _ in range(2))
    memory.preload()
    for ds in (disk, memory):
        ds.transforms.set_random_seed(0)
    _assert_same_items(disk, memory)
    image, mask = memory[1]
    assert image.shape == (3, 16, 24) and image.dtype == torch.float32 and mask.dtype == torch.long


def test_preloaded_items_come_from_memory_and_are_copies(camvid: Path) -> None:
    ds = CamVid(camvid, preload=True)
    expected = ds.load_pair(2)
    for path in (camvid / "train").iterdir():
        path.unlink()  # nothing on disk to read any more
    image, mask = ds.load_pair(2)
    np.testing.assert_array_equal(image, expected[0])
    image[:] = 0
    mask[:] = 0
    np.testing.assert_array_equal(ds.load_pair(2)[0], expected[0])  # changing an item leaves the memory copy alone
    np.testing.assert_array_equal(ds.load_mask(2), expected[1])


def test_class_weights_equal_and_counted_from_memory(tmp_path: Path) -> None:
    # Two identical trees, so neither reuses the other's cached statistics.
    disk = CamVid(make_camvid(tmp_path / "a"))
    memory = CamVid(make_camvid(tmp_path / "b"), preload=True)
    for path in (tmp_path / "b" / "camvid" / "trainannot").glob("*.png"):
        path.unlink()
    assert torch.equal(memory.class_weights(), disk.class_weights())
    for got, want in zip(memory.class_pixel_stats(), disk.class_pixel_stats(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_corrupt_image_fails_at_preload_naming_the_file(camvid: Path) -> None:
    data = (camvid / "train" / "f3.png").read_bytes()
    (camvid / "train" / "f3.png").write_bytes(data[: len(data) // 2])
    ds = CamVid(camvid)  # lazy: nothing decoded yet
    with pytest.raises(OSError, match=r"cannot decode image .*train/f3\.png .*damaged"):
        ds.preload()
    assert not ds.preloaded  # all or nothing
    with pytest.raises(OSError, match=r"train/f3\.png"):
        CamVid(camvid, preload=True)


def test_stray_mask_value_fails_at_preload_naming_the_file(camvid: Path) -> None:
    mask = np.zeros(SIZE, np.uint8)
    mask[2, 3] = 12
    Image.fromarray(mask).save(camvid / "trainannot" / "f4.png")
    with pytest.raises(ValueError, match=r"trainannot/f4\.png has values \[12\] outside 0\.\.10, 11 \(void\) and 255"):
        CamVid(camvid, preload=True)


def test_mismatched_pair_fails_at_preload(camvid: Path) -> None:
    Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8)).save(camvid / "trainannot" / "f0.png")
    with pytest.raises(ValueError, match=r"f0\.png is 32x24 but its mask .*f0\.png is 32x25"):
        CamVid(camvid).preload(threads=1)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs the fork start method")
def test_forked_dataloader_workers_yield_the_same_batches(camvid: Path) -> None:
    batches = []
    for preload in (False, True):
        ds = CamVid(camvid, transforms=train_transforms((16, 24)), preload=preload)
        ds.transforms.set_random_seed(0)  # each forked worker inherits this state
        loader = DataLoader(
            ds, batch_size=2, shuffle=True, num_workers=2, multiprocessing_context="fork",
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        batches.append(list(loader))
    assert len(batches[0]) == len(batches[1]) == 3
    for (xa, ya), (xb, yb) in zip(*batches, strict=True):
        assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.long
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_pickled_preloaded_dataset_keeps_its_arrays(camvid: Path) -> None:
    # What spawn-started workers receive: a copy with the memory, not a dataset that reads disk again.
    ds = pickle.loads(pickle.dumps(CamVid(camvid, preload=True)))
    assert ds.preloaded
    _assert_same_items(CamVid(camvid), ds)


def test_voc_preload_keeps_indices_boundaries_and_sizes(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc")
    for split in ("train", "val", "trainaug"):
        disk, memory = VOCSegmentation(root, split), VOCSegmentation(root, split, preload=True)
        assert memory.preloaded and not disk.preloaded
        _assert_same_items(disk, memory)
        assert memory.preloaded_bytes == sum(m.size * 4 for _, m in (disk[i] for i in range(len(disk))))
    masks = [m for _, m in VOCSegmentation(root, "trainaug", preload=True)]
    assert [m.shape for m in masks] == [(10, 14), (13, 15), (19, 17)]  # A, B and the SBD-only D
    assert all((m[0] == 255).all() and m[1:].max() <= 20 for m in masks)


def test_build_dataset_passes_preload(camvid: Path, tmp_path: Path) -> None:
    assert build_dataset("camvid", "val", root=camvid, preload=True).preloaded
    assert not build_dataset("camvid", "val", root=camvid).preloaded
    assert build_dataset("voc", "train", root=make_voc(tmp_path / "voc"), preload=True).preloaded
    # Synthetic scenes are drawn on the fly: preload= is accepted and changes nothing.
    ds = build_dataset("synthetic", "val", preload=True, num_images=2, size=(8, 8))
    assert isinstance(ds, SyntheticScenes) and not hasattr(ds, "preloaded")
    ref = build_dataset("synthetic", "val", num_images=2, size=(8, 8))
    np.testing.assert_array_equal(ds[1][0], ref[1][0])


def test_preload_is_keyword_only(camvid: Path) -> None:
    with pytest.raises(TypeError):
        CamVid(camvid, "train", None, False, True)


def test_real_camvid_val_preloads_the_same_items(shared_camvid: Path) -> None:
    disk, memory = CamVid(shared_camvid, "val"), CamVid(shared_camvid, "val", preload=True)
    assert len(memory) == 101 and memory.preloaded_bytes == 101 * 360 * 480 * 4
    for i in (0, 50, 100):
        for x, y in zip(disk[i], memory[i], strict=True):
            np.testing.assert_array_equal(x, y)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="a platform without fork")
def test_preloaded_datasets_get_forked_workers(camvid: Path) -> None:
    from seglearn.data.base import worker_context

    # the CLI and the notebook loaders both ask this; fork shares the arrays, spawn/forkserver would copy them
    assert worker_context(CamVid(camvid, "train", preload=True), 2) == "fork"
    assert worker_context(CamVid(camvid, "train", preload=True), 0) is None
    assert worker_context(CamVid(camvid, "train"), 2) is None
    assert worker_context(SyntheticScenes(4, size=(8, 8)), 2) is None
