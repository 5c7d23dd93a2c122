"""Datasets (CamVid 11 and 32 classes, PASCAL VOC, SyntheticScenes, your own folders), downloads, transforms."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from seglearn.names import DATASETS

from .base import SegmentationDataset, read_image, read_mask
from .camvid import CAMVID_CLASSES, CAMVID_PALETTE, CamVid
from .camvid32 import CAMVID32_CLASSES, CAMVID32_PALETTE, CamVid32, rgb_to_index
from .download import (
    DownloadError,
    download_camvid,
    download_camvid32,
    download_dataset,
    download_voc,
    extract_archive,
)
from .folder import SegmentationFolder
from .loaders import job_datasets, make_loader
from .paths import data_root, locate_dataset
from .synthetic import SyntheticScenes
from .transforms import IMAGENET_MEAN, IMAGENET_STD, denormalize, eval_transforms, train_transforms
from .voc import VOC_CLASSES, VOCSegmentation, voc_palette

__all__ = [
    "CamVid",
    "CamVid32",
    "VOCSegmentation",
    "SyntheticScenes",
    "SegmentationFolder",
    "SegmentationDataset",
    "build_dataset",
    "make_loader",
    "job_datasets",
    "DATASETS",
    "data_root",
    "locate_dataset",
    "train_transforms",
    "eval_transforms",
    "denormalize",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CAMVID32_CLASSES",
    "CAMVID32_PALETTE",
    "rgb_to_index",
    "VOC_CLASSES",
    "voc_palette",
    "read_image",
    "read_mask",
    "download_camvid",
    "download_camvid32",
    "download_voc",
    "download_dataset",
    "extract_archive",
    "DownloadError",
]


# Synthetic splits differ by seed so that train, val and test never share an image.
_SYNTHETIC_SPLITS = {"train": (0, 200), "val": (1, 50), "test": (2, 50)}


def build_dataset(
    name: str,
    split: str,
    *,
    root: str | Path | None = None,
    transforms: Callable[..., Any] | None = None,
    download: bool = False,
    **kw: Any,
) -> Dataset:
    """Build dataset ``name`` (one of ``DATASETS``) for ``split``; extra keywords go to the dataset class.

    For "synthetic", ``split`` picks the seed (train/val/test) and ``num_images`` / ``size`` may be given.
    ``preload=True`` decodes every camvid/camvid32/voc image once into memory (``SegmentationDataset.preload``);
    synthetic scenes are drawn on the fly and ignore it.
    """
    if name == "camvid":
        return CamVid(root, split=split, transforms=transforms, download=download, **kw)
    if name == "camvid32":
        return CamVid32(root, split=split, transforms=transforms, download=download, **kw)
    if name == "voc":
        return VOCSegmentation(root, split=split, transforms=transforms, download=download, **kw)
    if name == "folder":
        if root is None:
            raise ValueError("your own data needs its folder: pass --data PATH (root=) holding images/ and masks/")
        return SegmentationFolder.from_root(root, split=split, transforms=transforms, **kw)
    if name == "synthetic":
        if split not in _SYNTHETIC_SPLITS:
            raise ValueError(f"unknown synthetic split {split!r}: choose one of {', '.join(_SYNTHETIC_SPLITS)}")
        seed, num_images = _SYNTHETIC_SPLITS[split]
        kw.setdefault("num_images", num_images)
        kw["seed"] = kw.get("seed", 0) * 1000 + seed
        kw.pop("preload", None)
        return SyntheticScenes(transforms=transforms, **kw)
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
