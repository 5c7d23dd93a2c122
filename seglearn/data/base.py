"""Shared Dataset plumbing: read and validate an image + mask pair, map label values, apply transforms, and
optionally hold every decoded pair in memory (``preload``) so DataLoader workers only augment.

Image rule: 8-bit RGB is used as is; grayscale (``L``, ``P``, ``LA``) is repeated to three channels and RGBA drops its
alpha channel (the colour is kept, not composited); anything with more than 8 bits per channel (16-bit PNGs, float
TIFFs) is rejected, because silently rescaling it would change what the model sees.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from seglearn.atomic import write_json

__all__ = ["ClassStatistics", "SegmentationDataset", "apply_transforms", "read_image", "read_mask", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

_CONVERTIBLE_MODES = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "CMYK", "YCbCr", "1"}
_STATS_FILE = ".seglearn_class_stats.json"
_STATS_MEMORY: dict[str, dict[str, list[int]]] = {}


def _is_16bit(im: Image.Image) -> bool:
    # Pillow decodes 48/64-bit PNGs to 8-bit "RGB"/"RGBA" silently; the tile's raw mode still says ";16".
    return any(";16" in str(tile.args) for tile in getattr(im, "tile", []) or [])


@contextmanager
def _named_decode_errors(path: Path, kind: str) -> Iterator[None]:
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as err:  # Pillow's "image file is truncated" does not say which file
        raise OSError(
            f"cannot decode {kind} {path} ({err}): the file is damaged or not an image; re-download or remove it"
        ) from err


def read_image(path: str | Path) -> np.ndarray:
    """Read an 8-bit image as ``uint8`` (H, W, 3) RGB; grayscale/RGBA are converted (see module docstring)."""
    path = Path(path)
    with _named_decode_errors(path, "image"), Image.open(path) as im:
        if im.mode not in _CONVERTIBLE_MODES or _is_16bit(im):
            raise ValueError(
                f"image {path} has mode {im.mode!r} with more than 8 bits per channel: seglearn reads 8-bit images "
                "only; convert it (e.g. scale to 0..255 and save as 8-bit PNG or JPEG)"
            )
        if im.mode != "RGB":
            im = im.convert("RGB")
        return np.asarray(im, dtype=np.uint8).copy()


def read_mask(path: str | Path) -> np.ndarray:
    """Read a label mask as ``uint8`` (H, W) class indices.

    Palette (``P``) PNGs give their indices, never their colours; ``.mat`` files are SBD's ``GTcls`` labels.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        from scipy.io import loadmat

        return np.asarray(loadmat(path)["GTcls"][0]["Segmentation"][0], dtype=np.uint8)
    with _named_decode_errors(path, "mask"), Image.open(path) as im:
        check_lossless(im, path)
        if im.mode not in ("L", "P") or _is_16bit(im):
            raise ValueError(
                f"mask {path} has mode {im.mode!r}: a label mask must be a single-channel 8-bit PNG of class indices "
                "(mode 'L' or 'P'); if it is a colour-coded label image, map its colours to class indices first"
            )
        return np.array(im, dtype=np.uint8)


LOSSY_FORMATS = ("JPEG", "MPO", "WEBP", "JPEG2000")  # may be lossy: labels along every edge change


def check_lossless(im: Image.Image, path: Path) -> None:
    """Refuse a mask stored in a lossy format, whatever its file name says (a JPEG saved as ``.png`` included)."""
    if im.format in LOSSY_FORMATS:
        raise ValueError(
            f"mask {path} is stored as {im.format}, a lossy format: compression changes the labels along every edge "
            "(a JPEG-encoded mask named .png included); save masks as PNG"
        )


def apply_transforms(transforms: Callable[..., Any] | None, image: np.ndarray, mask: np.ndarray) -> tuple[Any, Any]:
    """``transforms(image=, mask=)`` (albumentations style); the mask comes back int64 (numpy) or long (tensor)."""
    if transforms is None:
        return image, mask.astype(np.int64)
    out = transforms(image=image, mask=mask)
    if not isinstance(out, dict) or "image" not in out or "mask" not in out:
        raise TypeError(
            "transforms must be called as transforms(image=..., mask=...) and return a dict with 'image' and "
            "'mask' (an albumentations Compose, e.g. seglearn.data.train_transforms(...))"
        )
    image, mask = out["image"], out["mask"]
    mask = mask.long() if isinstance(mask, torch.Tensor) else np.asarray(mask, dtype=np.int64)
    return image, mask


class ClassStatistics:
    """Per-class pixel statistics and median-frequency class weights, for any dataset with ``num_classes``,
    ``__len__`` and ``load_mask(i) -> uint8 (H, W)``. Subclasses give a cache key and, optionally, a cache file."""

    num_classes: int

    def __len__(self) -> int:
        raise NotImplementedError

    def load_mask(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _stats_key(self) -> str:
        raise NotImplementedError

    def _stats_file(self) -> Path | None:
        return None

    def class_pixel_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per class: (pixels of c, total pixels of images where c is present), both int64 (num_classes,).

        Computed once over all masks, then cached in memory and, for datasets on disk, in
        ``.seglearn_class_stats.json`` next to the data (unless that folder is read-only), keyed by split and file list.
        """
        key = self._stats_key()
        cache_file = self._stats_file()
        mem_key = f"{cache_file}|{key}"
        stats = _STATS_MEMORY.get(mem_key)
        if stats is None and cache_file is not None and cache_file.is_file():
            try:
                stats = json.loads(cache_file.read_text()).get(key)
            except (OSError, ValueError):
                stats = None
        if stats is None:
            stats = self._count_pixels()
            _STATS_MEMORY[mem_key] = stats
            if cache_file is not None:
                self._write_stats(cache_file, key, stats)
        return np.asarray(stats["class_pixels"], np.int64), np.asarray(stats["image_pixels"], np.int64)

    def _count_pixels(self) -> dict[str, list[int]]:
        c = self.num_classes
        class_pixels, image_pixels = np.zeros(c, np.int64), np.zeros(c, np.int64)
        indices = range(len(self))
        if len(self) >= 200:  # about a second or more of PNG decoding
            indices = tqdm(indices, desc="class pixel counts", leave=False)
        for i in indices:
            mask = self.load_mask(i)
            counts = np.bincount(mask.ravel(), minlength=256)[:c]
            class_pixels += counts
            image_pixels[counts > 0] += mask.size
        return {"class_pixels": class_pixels.tolist(), "image_pixels": image_pixels.tolist()}

    @staticmethod
    def _write_stats(cache_file: Path, key: str, stats: dict[str, list[int]]) -> None:
        if not _writable(cache_file.parent):
            return
        try:
            data = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
        except (OSError, ValueError):
            data = {}
        data[key] = stats
        try:
            write_json(cache_file, data, indent=1)
        except OSError:  # read-only data folder: the in-memory cache still holds the numbers
            pass

    def class_frequencies(self) -> np.ndarray:
        """freq(c) = pixels of c / total pixels of the images where c is present, float64 (num_classes,)."""
        class_pixels, image_pixels = self.class_pixel_stats()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(image_pixels > 0, class_pixels / np.maximum(image_pixels, 1), 0.0)

    def class_weights(self, method: str = "median") -> torch.Tensor:
        """Per-class loss weights counted on this split, float32 (num_classes,).

        ``"median"``: median frequency balancing (SegNet, arXiv:1511.00561), median(freq) / freq(c).
        ``"enet"``: ENet's weighting (arXiv:1606.02147, §5.2), 1 / ln(1.02 + p(c)) with p(c) the class's share of all
        labelled pixels: bounded by 1 / ln(1.02) = 50.5 for a class that is almost absent.
        Classes that never occur get weight 0 (they cannot contribute to the loss anyway).
        """
        if method not in ("median", "enet"):
            raise ValueError(f"class weights method must be 'median' or 'enet', got {method!r}")
        freq = self.class_frequencies()
        present = freq > 0
        if not present.any():
            raise ValueError(f"{type(self).__name__}: no labelled pixels in any mask, cannot compute class weights")
        weights = np.zeros_like(freq)
        if method == "median":
            weights[present] = np.median(freq[present]) / freq[present]
        else:
            class_pixels, _ = self.class_pixel_stats()
            share = class_pixels / class_pixels.sum()
            weights[present] = 1.0 / np.log(1.02 + share[present])
        return torch.tensor(weights, dtype=torch.float32)


class SegmentationDataset(ClassStatistics, Dataset):
    """Pairs of (image file, mask file) with class names, a palette and a label map.

    Subclasses fill ``samples`` and set ``classes``/``palette``; ``void_values`` are raw mask values that mean "not
    labelled" and become ``ignore_index``. Items are ``(uint8 (H, W, 3), int64 (H, W))`` numpy arrays, or what
    ``transforms(image=..., mask=...)`` returns with the mask as a long tensor (H, W).

    Files are decoded on every access unless :meth:`preload` has decoded them all once into memory; the items are
    the same either way.
    """

    classes: tuple[str, ...] = ()
    palette: np.ndarray = np.zeros((0, 3), np.uint8)
    ignore_index: int = 255
    void_values: tuple[int, ...] = ()

    def __init__(
        self,
        samples: Sequence[tuple[Path, Path]],
        transforms: Callable[..., Any] | None = None,
        root: Path | None = None,
        *,
        preload: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.transforms = transforms
        self.root = root
        self._lut = self._build_lut()
        self._pairs: list[tuple[np.ndarray, np.ndarray]] | None = None
        if preload:
            self.preload()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _build_lut(self) -> np.ndarray:
        # raw uint8 value -> label; -1 marks a value that must not occur.
        lut = np.full(256, -1, dtype=np.int16)
        lut[: self.num_classes] = np.arange(self.num_classes)
        lut[self.ignore_index] = self.ignore_index
        for v in self.void_values:
            lut[v] = self.ignore_index
        return lut

    def __len__(self) -> int:
        return len(self.samples)

    def _allowed(self) -> str:
        void = "".join(f", {v} (void)" for v in self.void_values)
        return f"0..{self.num_classes - 1}{void} and {self.ignore_index} (ignore)"

    def load_mask(self, index: int) -> np.ndarray:
        """The label mask of item ``index`` as ``uint8`` (H, W): classes 0..C-1 and ``ignore_index``."""
        if self._pairs is not None:
            return self._pairs[index][1].copy()
        return self._read_mask(index)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``uint8`` (H, W, 3) and mask ``uint8`` (H, W), checked to have the same size.

        After :meth:`preload` these are copies of the arrays in memory, so callers may change them in place.
        """
        if self._pairs is not None:
            image, mask = self._pairs[index]
            return image.copy(), mask.copy()
        return self._read_pair(index)

    def _read_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        raw = read_mask(path)
        mask = self._lut[raw]
        if (mask < 0).any():
            bad = np.unique(raw[mask < 0])
            raise ValueError(
                f"mask {path} has values {bad[:10].tolist()} outside {self._allowed()}: is this the right label folder "
                f"for a {type(self).__name__} dataset? Re-extract or re-download the dataset."
            )
        return mask.astype(np.uint8)

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.samples[index]
        image, mask = read_image(image_path), self._read_mask(index)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[1]}x{image.shape[0]} but its mask {mask_path} is "
                f"{mask.shape[1]}x{mask.shape[0]} (WxH): the pair does not match; fix or remove this file"
            )
        return image, mask

    def preload(self, threads: int | None = None) -> SegmentationDataset:
        """Decode and check every (image, mask) pair once and keep them in memory; returns ``self``.

        Later items come from memory (the same arrays as from disk), so DataLoader workers only augment. A bad file
        fails here, named in the error. Costs ``H * W * 4`` bytes per image (CamVid train: 367 x 360x480, ~250 MB;
        VOC trainaug would need ~7 GB, hence opt-in). ``threads`` decode in parallel (default: up to 8, one per
        core). Call it before the DataLoader starts its workers: with the ``fork`` start method (Linux's default)
        they share the arrays; with ``spawn`` each worker receives its own pickled copy.
        """
        if self._pairs is not None:
            return self
        threads = threads or min(8, os.cpu_count() or 1)
        pool = ThreadPoolExecutor(max_workers=threads)  # PIL and zlib release the GIL while decoding
        try:
            pairs = pool.map(self._read_pair, range(len(self)))
            if len(self) >= 200:  # a second or more of decoding
                pairs = tqdm(pairs, total=len(self), desc=f"preload {type(self).__name__}", leave=False)
            # Filled in the main process: forked workers share these buffers copy-on-write (refcounts live in the
            # array objects, never in their data pages).
            self._pairs = list(pairs)
        finally:
            pool.shutdown(cancel_futures=True)  # a bad file stops the decoding of the rest
        return self

    @property
    def preloaded(self) -> bool:
        """Whether :meth:`preload` holds every decoded pair in memory."""
        return self._pairs is not None

    @property
    def preloaded_bytes(self) -> int:
        """Bytes of the decoded images and masks held in memory (0 when not preloaded)."""
        return sum(image.nbytes + mask.nbytes for image, mask in self._pairs or ())

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, mask = self.load_pair(index)
        return apply_transforms(self.transforms, image, mask)

    def _stats_key(self) -> str:
        # Keyed on each mask's name, size and modification time: a mask edited in place gets new statistics.
        names = "\n".join(
            f"{m.relative_to(self.root) if self.root else m} {_size_and_mtime(m)}" for _, m in self.samples
        )
        return f"{getattr(self, 'split', '')}:{hashlib.sha1(names.encode()).hexdigest()[:16]}"

    def _stats_file(self) -> Path | None:
        return self.root / _STATS_FILE if self.root is not None else None


def _size_and_mtime(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:  # a missing file fails later, when it is read, with its name
        return "-"
    return f"{st.st_size}:{st.st_mtime_ns}"


def _writable(folder: Path) -> bool:
    """Whether ``folder`` may be written; for root, whose writes always succeed, its mode bits must allow it."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return bool(mode & 0o222)
    return os.access(folder, os.W_OK)


def worker_context(dataset: Dataset, num_workers: int) -> str | None:
    """The DataLoader ``multiprocessing_context`` for ``dataset``: "fork" when it is preloaded and has workers, so
    they share its decoded arrays (spawn/forkserver would pickle a copy into each); else None, the default."""
    preloaded = getattr(dataset, "preloaded", False)
    return "fork" if preloaded and num_workers > 0 and "fork" in multiprocessing.get_all_start_methods() else None
