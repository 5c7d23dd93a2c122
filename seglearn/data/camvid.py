"""CamVid, the SegNet 11-class version (360x480 road scenes from Cambridge)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .base import IMAGE_EXTENSIONS, SegmentationDataset
from .paths import default_root, is_camvid_root

__all__ = ["CamVid", "CAMVID_CLASSES", "CAMVID_PALETTE"]

CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
CAMVID_PALETTE = np.array(
    [
        [128, 128, 128],
        [128, 0, 0],
        [192, 192, 128],
        [128, 64, 128],
        [60, 40, 222],
        [128, 128, 0],
        [192, 128, 128],
        [64, 64, 128],
        [64, 0, 128],
        [64, 64, 0],
        [0, 128, 192],
    ],
    dtype=np.uint8,
)
_SPLITS = ("train", "val", "test")


def _find_by_stem(folder: Path, stem: str, preferred: str | None = None) -> Path | None:
    if preferred is not None and (folder / preferred).is_file():
        return folder / preferred
    for ext in IMAGE_EXTENSIONS:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def _list_file_entries(root: Path, split: str) -> list[tuple[str, str]] | None:
    """(image name, mask name) from ``<split>.txt`` lines like ``/SegNet/CamVid/train/X.png /SegNet/.../X.png``."""
    list_file = root / f"{split}.txt"
    if not list_file.is_file():
        return None
    entries = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise ValueError(f"{list_file} line {n}: expected 'IMAGE MASK', got {line!r}")
        # The SegNet lists hold absolute paths of the authors' machine: keep only the file names.
        entries.append((Path(parts[0]).name, Path(parts[1]).name))
    return entries


class CamVid(SegmentationDataset):
    """CamVid road scenes with the SegNet tutorial's 11 classes; annotation value 11 (void) becomes ``ignore_index``.

    Brostow, Fauqueur, Cipolla, "Semantic object classes in video: a high-definition ground truth database", PRL 2008;
    split and classes of Badrinarayanan et al., "SegNet" (https://arxiv.org/abs/1511.00561).

    Layout under ``root``: ``train/ trainannot/ val/ valannot/ test/ testannot/`` (+ optional ``train.txt`` lists).
    Images and labels are matched by file stem, so JPEG copies of the images work too. Items: ``uint8`` (360, 480, 3)
    and ``int64`` (360, 480) with values 0..10 and 255, or the outputs of ``transforms``.
    ``class_weights()`` gives the SegNet paper's median-frequency weights for the split. ``preload=True`` decodes
    every image once into memory (:meth:`~seglearn.data.base.SegmentationDataset.preload`; train: ~250 MB) so that
    DataLoader workers only augment: the same items, several times faster per worker.
    """

    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE
    void_values = (11,)

    def __init__(
        self,
        root: str | Path | None = None,
        split: str = "train",
        transforms: Callable[..., Any] | None = None,
        download: bool = False,
        *,
        preload: bool = False,
    ) -> None:
        if split not in _SPLITS:
            raise ValueError(f"unknown CamVid split {split!r}: choose one of {', '.join(_SPLITS)}")
        root = default_root("camvid") if root is None else Path(root).expanduser()
        if download and not is_camvid_root(root):
            from .download import download_camvid

            download_camvid(root)
        if not is_camvid_root(root):
            raise FileNotFoundError(
                f"CamVid not found under {root}: pass download=True, run `python -m seglearn download camvid`, "
                "or set SEGLEARN_DATA to the folder that holds camvid/"
            )
        self.split = split
        super().__init__(self._samples(root, split), transforms=transforms, root=root, preload=preload)

    @staticmethod
    def _samples(root: Path, split: str) -> list[tuple[Path, Path]]:
        image_dir, mask_dir = root / split, root / f"{split}annot"
        if not image_dir.is_dir() or not mask_dir.is_dir():
            raise FileNotFoundError(
                f"CamVid split {split!r} not found: expected folders {image_dir} and {mask_dir}; "
                "the shared test copy has train and val only, a full download has test too"
            )
        entries = _list_file_entries(root, split)
        if entries is None:
            names = sorted(p.name for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            entries = [(name, None) for name in names]
        samples = []
        for image_name, mask_name in entries:
            stem = Path(image_name).stem
            image = _find_by_stem(image_dir, stem, image_name)
            if image is None:
                raise FileNotFoundError(f"CamVid {split}: image {image_dir / image_name} is listed but missing")
            mask = _find_by_stem(mask_dir, Path(mask_name).stem if mask_name else stem, mask_name)
            if mask is None:
                raise FileNotFoundError(
                    f"CamVid {split}: no label for {image} in {mask_dir} (expected {mask_dir / (stem + '.png')}); "
                    "re-download the dataset or remove the unlabelled image"
                )
            samples.append((image, mask))
        if not samples:
            raise FileNotFoundError(
                f"CamVid {split}: no images in {image_dir}: the folder is empty; re-download with download=True"
            )
        return samples
