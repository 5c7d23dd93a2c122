"""PASCAL VOC 2012 segmentation, with the SBD-augmented ``trainaug`` split."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import SegmentationDataset
from .paths import default_root

__all__ = ["VOCSegmentation", "VOC_CLASSES", "voc_palette"]

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
_SPLITS = ("train", "val", "trainval", "trainaug")
_SBD_HELP = (
    "download SBD (Hariharan et al., http://home.bharathh.info/pubs/codes/SBD/download.html, benchmark.tgz), extract "
    "it and put (or link) its benchmark_RELEASE folder at {sbd} so that {sbd}/dataset/cls/*.mat exists, "
    "or pass sbd_root="
)


def voc_palette(num_colors: int = 256) -> np.ndarray:
    """The VOC devkit colour map (from the label's bits), uint8 (num_colors, 3); index 255 is (224, 224, 192)."""
    palette = np.zeros((num_colors, 3), np.uint8)
    for i in range(num_colors):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _resolve_voc_dir(root: Path, year: str) -> Path:
    """Accept the folder holding VOCdevkit/, VOCdevkit/ itself, or VOC<year>/ itself."""
    for candidate in (root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root):
        if (candidate / "ImageSets" / "Segmentation").is_dir():
            return candidate
    return root / "VOCdevkit" / f"VOC{year}"


class VOCSegmentation(SegmentationDataset):
    """PASCAL VOC segmentation: 21 classes, palette PNG labels read as indices, boundary value 255 kept as ignore.

    Everingham et al., "The PASCAL Visual Object Classes Challenge: A Retrospective", IJCV 2015. ``trainaug`` is the
    10,582-image set of Chen et al., "DeepLab" (https://arxiv.org/abs/1606.00915): SBD train+val plus VOC train,
    minus VOC val; an image with a VOC label uses it (it has the 255 boundaries), the rest use SBD's ``cls/*.mat``.

    ``root`` is the folder holding ``VOCdevkit/VOC<year>`` (also accepted: ``VOCdevkit`` or ``VOC<year>`` itself);
    SBD is looked for at ``root/SBD`` (or ``sbd_root``). Items: ``uint8`` (H, W, 3) and ``int64`` (H, W) in
    {0..20, 255}, or the outputs of ``transforms``. ``preload=True`` decodes every image once into memory
    (:meth:`~seglearn.data.base.SegmentationDataset.preload`; about 0.7 MB per image: train ~1 GB, trainaug ~7 GB).
    """

    classes = VOC_CLASSES
    palette = voc_palette(21)

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        year: str = "2012",
        transforms: Callable[..., Any] | None = None,
        download: bool = False,
        sbd_root: str | Path | None = None,
        *,
        preload: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"unknown VOC split {split!r}: choose one of {', '.join(_SPLITS)}")
        year = str(year)
        root = default_root("voc") if root is None else Path(root).expanduser()
        voc_dir = _resolve_voc_dir(root, year)
        if download and not voc_dir.is_dir():
            if year != "2012":
                raise ValueError(f"download=True fetches VOC 2012 only, not {year}: download VOC{year} by hand")
            from .download import download_voc

            download_voc(root)
            voc_dir = _resolve_voc_dir(root, year)
        if not (voc_dir / "ImageSets" / "Segmentation").is_dir():
            raise FileNotFoundError(
                f"VOC{year} not found under {root} (expected {voc_dir}/ImageSets/Segmentation): pass download=True, "
                "run `python -m seglearn download voc`, or set SEGLEARN_DATA to the folder that holds voc/VOCdevkit"
            )
        self.split, self.year, self.voc_dir = split, year, voc_dir
        if split == "trainaug":
            sbd = Path(sbd_root).expanduser() if sbd_root is not None else root / "SBD"
            samples = self._trainaug_samples(voc_dir, sbd)
        else:
            samples = self._voc_samples(voc_dir, split)
        super().__init__(samples, transforms=transforms, root=root, preload=preload)

    @staticmethod
    def _voc_samples(voc_dir: Path, split: str) -> list[tuple[Path, Path]]:
        list_file = voc_dir / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split list {list_file} is missing: re-extract the VOC tar")
        ids = _read_ids(list_file)
        if not ids:
            raise FileNotFoundError(f"VOC split list {list_file} is empty: re-extract the VOC tar")
        samples = [(voc_dir / "JPEGImages" / f"{i}.jpg", voc_dir / "SegmentationClass" / f"{i}.png") for i in ids]
        for image, mask in samples:
            for path in (image, mask):
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is listed in {list_file} but missing: re-extract the VOC tar")
        return samples

    @staticmethod
    def _trainaug_samples(voc_dir: Path, sbd: Path) -> list[tuple[Path, Path]]:
        if not (sbd / "dataset" / "cls").is_dir() and (sbd / "benchmark_RELEASE" / "dataset" / "cls").is_dir():
            sbd = sbd / "benchmark_RELEASE"
        sbd_data = sbd / "dataset"
        if not (sbd_data / "cls").is_dir():
            raise FileNotFoundError(
                f"split 'trainaug' needs SBD, not found under {sbd}: " + _SBD_HELP.format(sbd=sbd) + " (or use 'train')"
            )
        lists = voc_dir / "ImageSets" / "Segmentation"
        sbd_ids = [
            i for name in ("train.txt", "val.txt") if (sbd_data / name).is_file() for i in _read_ids(sbd_data / name)
        ]
        voc_train = _read_ids(lists / "train.txt")
        voc_val = set(_read_ids(lists / "val.txt"))
        ids = sorted(set(sbd_ids).union(voc_train) - voc_val)
        samples = []
        for i in ids:
            image = voc_dir / "JPEGImages" / f"{i}.jpg"
            if not image.is_file():
                image = sbd_data / "img" / f"{i}.jpg"
            mask = voc_dir / "SegmentationClass" / f"{i}.png"
            if not mask.is_file():
                mask = sbd_data / "cls" / f"{i}.mat"
            if not image.is_file() or not mask.is_file():
                raise FileNotFoundError(f"trainaug image {i}: {image} or {mask} is missing; re-extract VOC and SBD")
            samples.append((image, mask))
        return samples
