"""CamVid32: RGB labels mapped through the 32-colour raw palette by all three channels (never one), index labels, the
31 classes (Void -> 255, Wall 31 -> 30), stray colours named, split lists, missing folders, and the download of the
fast.ai archive (local server)."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _http import serve
from PIL import Image

from seglearn.data import CAMVID32_CLASSES, CAMVID32_PALETTE, CamVid32, build_dataset, job_datasets, rgb_to_index
from seglearn.data.camvid32 import CAMVID32_LABELS, CAMVID32_RAW_PALETTE, CAMVID32_VOID, read_camvid32_label
from seglearn.data.download import download_camvid32, download_dataset
from seglearn.job import TrainJob
from seglearn.names import DATASETS, DOWNLOADABLE

H, W = 8, 12
C = {name: i for i, name in enumerate(CAMVID32_LABELS)}  # raw label indices, as the label files hold them


def _label(seed: int) -> np.ndarray:
    """Raw label indices (H, W): several classes, Void (30) in one corner, Wall (31) the last raw index."""
    rng = np.random.default_rng(seed)
    names = ["Road", "Sky", "Building", "Car", "Pedestrian", "Wall", "Animal"]
    mask = np.asarray(rng.choice([C[n] for n in names], (H, W)), np.uint8)
    mask[:2, :3] = C["Void"]
    return mask


def _expected(indices: np.ndarray) -> np.ndarray:
    """Raw indices -> the dataset's classes: Void (30) -> 255, Wall (31) -> 30, the rest unchanged."""
    return np.where(indices == C["Void"], 255, np.where(indices == C["Wall"], 30, indices)).astype(np.int64)


def make_camvid32(root: Path, labels: dict[str, np.ndarray], *, rgb: bool = True, valid: tuple[str, ...] = ()) -> Path:
    """Write images/X.png and labels/X_L.png (RGB colours) or labels/X_P.png (indices), plus valid.txt."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for stem, indices in labels.items():
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        if rgb:
            Image.fromarray(CAMVID32_RAW_PALETTE[indices]).save(root / "labels" / f"{stem}_L.png")
        else:
            Image.fromarray(indices).save(root / "labels" / f"{stem}_P.png")
    if valid:
        (root / "valid.txt").write_text("".join(f"{s}.png\n" for s in valid))
    return root


@pytest.fixture
def labels() -> dict[str, np.ndarray]:
    return {f"0001TP_00{k}": _label(k) for k in range(4)}


def test_raw_labels_are_the_official_32_in_label_colors_order() -> None:
    assert (
        len(CAMVID32_LABELS) == 32 and CAMVID32_RAW_PALETTE.shape == (32, 3) and CAMVID32_RAW_PALETTE.dtype == np.uint8
    )
    assert CAMVID32_LABELS[:5] == ("Animal", "Archway", "Bicyclist", "Bridge", "Building")
    assert CAMVID32_LABELS[-3:] == ("VegetationMisc", "Void", "Wall") and CAMVID32_VOID == 30
    rows = dict(zip(CAMVID32_LABELS, map(tuple, CAMVID32_RAW_PALETTE.tolist()), strict=True))
    assert rows["Animal"] == (64, 128, 64) and rows["Road"] == (128, 64, 128) and rows["Sky"] == (128, 128, 128)
    assert rows["Void"] == (0, 0, 0) and rows["Wall"] == (64, 192, 0) and rows["Truck_Bus"] == (192, 128, 192)
    assert len({tuple(c) for c in CAMVID32_RAW_PALETTE.tolist()}) == 32, "every label has its own colour"


def test_classes_and_palette_are_the_31_real_classes_without_void() -> None:
    assert len(CAMVID32_CLASSES) == 31 and CAMVID32_PALETTE.shape == (31, 3) and CAMVID32_PALETTE.dtype == np.uint8
    assert "Void" not in CAMVID32_CLASSES and CAMVID32_CLASSES[-2:] == ("VegetationMisc", "Wall")
    assert CAMVID32_CLASSES == CAMVID32_LABELS[:30] + CAMVID32_LABELS[31:], "same order, Void left out"
    np.testing.assert_array_equal(CAMVID32_PALETTE, np.delete(CAMVID32_RAW_PALETTE, CAMVID32_VOID, axis=0))
    assert tuple(CAMVID32_PALETTE[CAMVID32_CLASSES.index("Wall")]) == (64, 192, 0)


def test_the_label_map_sends_void_to_ignore_and_wall_to_30(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    ds = CamVid32(make_camvid32(tmp_path / "camvid32", labels, valid=("0001TP_000",)), "val")
    lut = ds._lut
    np.testing.assert_array_equal(lut[:30], np.arange(30))
    assert (lut[C["Void"]], lut[C["Wall"]], lut[255]) == (255, 30, 255)
    assert (lut[32:255] == -1).all(), "values past the 32 raw labels stay errors"
    assert ds.classes[lut[C["Wall"]]] == "Wall" and ds.classes[lut[C["Road"]]] == "Road"
    weights = ds.class_weights()
    assert weights.shape == (31,) and weights[30] > 0, "Wall (30) has targets; no output is dead"


def test_rgb_labels_map_to_indices_and_void_to_ignore(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels, valid=("0001TP_003",))
    ds = CamVid32(root, "train")
    assert (ds.num_classes, ds.ignore_index, ds.classes) == (31, 255, CAMVID32_CLASSES)
    assert [m.name for _, m in ds.samples] == [f"0001TP_00{k}_L.png" for k in range(3)]
    for k in range(3):
        image, mask = ds[k]
        assert image.dtype == np.uint8 and image.shape == (H, W, 3) and mask.dtype == np.int64
        np.testing.assert_array_equal(mask, _expected(labels[f"0001TP_00{k}"]))
        assert (mask[:2, :3] == 255).all() and mask[mask != 255].max() <= 30
        np.testing.assert_array_equal(mask == 30, labels[f"0001TP_00{k}"] == C["Wall"])


def test_index_labels_of_the_fastai_copy_give_the_same_masks(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    rgb = CamVid32(make_camvid32(tmp_path / "rgb", labels, valid=("0001TP_000",)), "val")
    index = CamVid32(make_camvid32(tmp_path / "index", labels, rgb=False, valid=("0001TP_000",)), "val")
    np.testing.assert_array_equal(rgb[0][1], index[0][1])
    # A palette ("P") PNG is read by its indices, whatever colours its palette shows.
    p = Image.fromarray(labels["0001TP_000"]).convert("P")
    p.putpalette(CAMVID32_RAW_PALETTE.ravel().tolist())
    p.save(tmp_path / "index" / "labels" / "0001TP_000_P.png")
    np.testing.assert_array_equal(index[0][1], rgb[0][1])


def test_all_three_channels_decide_not_one(tmp_path: Path) -> None:
    # Sidewalk, LaneMkgsDriv and MotorcycleScooter share G=0, B=192 and differ in R only; Tunnel, Car and
    # CartLuggagePram share R=64, G=0 and differ in B only: a one-channel reader gets at most one of each set right.
    # Void and Wall are in the row too: rgb_to_index and read_camvid32_label give raw indices (Wall 31, Void 30).
    names = ["Sidewalk", "LaneMkgsDriv", "MotorcycleScooter", "Tunnel", "Car", "CartLuggagePram", "Void", "Wall"]
    indices = np.array([[C[n] for n in names]] * 2, np.uint8)
    np.testing.assert_array_equal(rgb_to_index(CAMVID32_RAW_PALETTE[indices], CAMVID32_RAW_PALETTE), indices)
    Image.fromarray(CAMVID32_RAW_PALETTE[indices]).save(tmp_path / "x_L.png")
    raw = read_camvid32_label(tmp_path / "x_L.png")
    np.testing.assert_array_equal(raw, indices)
    assert raw[0, -2:].tolist() == [30, 31]


def test_a_stray_colour_names_the_file_the_colour_and_its_pixels(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels, valid=("0001TP_000",))
    path = root / "labels" / "0001TP_000_L.png"
    rgb = CAMVID32_RAW_PALETTE[labels["0001TP_000"]].copy()
    rgb[5, :4] = (129, 64, 128)  # one off Road: what interpolation leaves at edges
    Image.fromarray(rgb).save(path)
    with pytest.raises(ValueError, match=r"0001TP_000_L\.png has 4 pixels of 1 colours.*\(129, 64, 128\) x4.*palette"):
        CamVid32(root, "val")[0]


def test_many_stray_colours_are_summarised() -> None:
    rgb = np.zeros((1, 8, 3), np.uint8)
    rgb[0, :, 0] = np.arange(1, 9)
    with pytest.raises(ValueError, match=r"8 pixels of 8 colours.* and 3 more"):
        rgb_to_index(rgb, CAMVID32_RAW_PALETTE)


def test_lossy_or_wrong_mode_labels_are_refused(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels, valid=("0001TP_000",))
    path = root / "labels" / "0001TP_000_L.png"
    Image.fromarray(CAMVID32_RAW_PALETTE[labels["0001TP_000"]]).save(path, format="JPEG")
    with pytest.raises(ValueError, match="lossy format"):
        CamVid32(root, "val")[0]
    Image.fromarray(np.zeros((H, W), np.uint16)).save(path, format="PNG")  # 16-bit grayscale
    with pytest.raises(ValueError, match=r"mode 'I;16'.*8-bit index PNGs"):
        CamVid32(root, "val")[0]
    Image.fromarray(np.full((H, W), 40, np.uint8)).save(root / "labels" / "0001TP_001_P.png")
    (root / "labels" / "0001TP_001_L.png").unlink()
    (root / "valid.txt").write_text("0001TP_001.png\n")
    with pytest.raises(ValueError, match=r"values \[40\] outside 0\.\.31, 30 \(void\)"):
        CamVid32(root, "val")[0]


def test_split_lists(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels, valid=("0001TP_001", "0001TP_003"))
    assert [i.stem for i, _ in CamVid32(root, "train").samples] == ["0001TP_000", "0001TP_002"]
    assert [i.stem for i, _ in CamVid32(root, "val").samples] == ["0001TP_001", "0001TP_003"]
    with pytest.raises(FileNotFoundError, match=r"split 'test' has no list: expected .*test\.txt"):
        CamVid32(root, "test")
    (root / "test.txt").write_text("0001TP_000.png\n")
    (root / "train.txt").write_text("0001TP_002\n")  # a list may name stems or files
    assert [i.stem for i, _ in CamVid32(root, "test").samples] == ["0001TP_000"]
    assert [i.stem for i, _ in CamVid32(root, "train").samples] == ["0001TP_002"]
    (root / "valid.txt").write_text("0001TP_009.png\n")
    with pytest.raises(FileNotFoundError, match="0001TP_009 is listed but not in"):
        CamVid32(root, "val")
    (root / "labels" / "0001TP_002_L.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"no label for .*0001TP_002\.png \(expected .*0001TP_002_P\.png"):
        CamVid32(root, "train")
    with pytest.raises(ValueError, match="unknown CamVid32 split 'trainval'"):
        CamVid32(root, "trainval")


def test_no_split_list_at_all_says_what_to_write(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels)
    with pytest.raises(FileNotFoundError, match=r"split 'train' has no list.*write the list"):
        CamVid32(root, "train")


def test_missing_folder_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"not found under .*nothing.*download=True.*download camvid32"):
        CamVid32(tmp_path / "nothing")


def test_the_folder_camvid_tgz_unpacked_into_is_accepted(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    make_camvid32(tmp_path / "camvid", labels, valid=("0001TP_000",))
    assert CamVid32(tmp_path, "val").root == tmp_path / "camvid"


def test_class_files_are_checked(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels, rgb=False, valid=("0001TP_000",))
    (root / "codes.txt").write_text("\n".join(CAMVID32_LABELS) + "\n")  # fast.ai's: all 32 names, Void included
    (root / "label_colors.txt").write_text(
        "".join(
            f"{r} {g} {b}\t{n}\n" for (r, g, b), n in zip(CAMVID32_RAW_PALETTE.tolist(), CAMVID32_LABELS, strict=True)
        )
    )
    assert len(CamVid32(root, "val")) == 1
    (root / "codes.txt").write_text("\n".join(CAMVID32_CLASSES) + "\n")  # the 31 classes are not the files' indices
    with pytest.raises(ValueError, match="codes.txt lists other classes"):
        CamVid32(root, "val")
    (root / "codes.txt").write_text("Sky\nBuilding\n")
    with pytest.raises(ValueError, match="codes.txt lists other classes"):
        CamVid32(root, "val")
    (root / "codes.txt").unlink()
    (root / "label_colors.txt").write_text("0 0 0 Void\n")
    with pytest.raises(ValueError, match="label_colors.txt differs"):
        CamVid32(root, "val")


def test_registered_for_build_dataset_job_datasets_and_train_jobs(tmp_path: Path, labels) -> None:
    root = make_camvid32(tmp_path / "camvid32", labels, valid=("0001TP_003",))
    assert "camvid32" in DATASETS and "camvid32" in DOWNLOADABLE
    assert isinstance(build_dataset("camvid32", "val", root=root), CamVid32)
    train, val = job_datasets("camvid32", ["train", "val"], root=root, crop=(8, 8), preload=True)
    assert train.preloaded and len(train) == 3 and len(val) == 1
    image, mask = val[0]
    assert image.shape == (3, H, W) and mask.dtype == torch.long
    np.testing.assert_array_equal(mask.numpy(), _expected(labels["0001TP_003"]))
    TrainJob("tinyfcn", dataset="camvid32", root=root, device="cpu")  # the name passes the job's check


def _camvid_tgz(labels: dict[str, np.ndarray]) -> bytes:
    """A fast.ai-shaped camvid.tgz: camvid/{images,labels,codes.txt,valid.txt}."""
    files = {"camvid/codes.txt": "\n".join(CAMVID32_LABELS).encode(), "camvid/valid.txt": b"0001TP_000.png\n"}
    for stem, indices in labels.items():
        for name, array in ((f"images/{stem}.png", CAMVID32_RAW_PALETTE[indices]), (f"labels/{stem}_P.png", indices)):
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="PNG")
            files[f"camvid/{name}"] = buf.getvalue()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_end_to_end(tmp_path: Path, labels: dict[str, np.ndarray]) -> None:
    data = _camvid_tgz(labels)
    with serve({"/camvid.tgz": data}) as srv:
        root = download_camvid32(
            tmp_path / "camvid32", url=srv.url("/camvid.tgz"), md5=hashlib.md5(data).hexdigest(), progress=False
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["camvid32"], "archive and temporary folders are cleaned up"
    assert (len(CamVid32(root, "train")), len(CamVid32(root, "val"))) == (3, 1)
    np.testing.assert_array_equal(CamVid32(root, "val")[0][1], _expected(labels["0001TP_000"]))
    assert download_dataset("camvid32", root, progress=False) == root  # already there: no request


def test_download_of_an_archive_without_the_layout_fails_clearly(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("camvid/readme.txt")
        tf.addfile(info, io.BytesIO(b""))
    with serve({"/camvid.tgz": buf.getvalue()}) as srv:
        with pytest.raises(RuntimeError, match="no images/ and labels/ folders"):
            download_camvid32(tmp_path / "camvid32", url=srv.url("/camvid.tgz"), md5=None, progress=False)
    assert not (tmp_path / "camvid32").exists()
