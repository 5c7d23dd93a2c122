"""``SegmentationFolder``: your own images and label masks, paired by file name, with clear errors for bad data.

Layout (the folder that ``python -m seglearn train --data PATH`` takes)::

    PATH/images/0001.jpg  PATH/masks/0001.png  ...   PATH/classes.json

``classes.json`` holds ``{"classes": ["background", "road", ...], "palette": [[0, 0, 0], [128, 64, 128], ...]}`` and
optionally ``"ignore_index"``, ``"void_values"`` and ``"binary"``; arguments given to the constructor win over it.

Masks may be class-index PNGs (mode ``L``), palette PNGs (their indices are the classes, as in VOC) or RGB colour
masks (each pixel's colour is looked up in ``palette``). Binary masks saved as 0/255 (black background, white
foreground; also as 3-channel PNGs) are recognised in a two-class dataset: 255 is the foreground, never "ignore".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import IMAGE_EXTENSIONS, SegmentationDataset, _is_16bit, _named_decode_errors, check_lossless
from .voc import voc_palette

__all__ = ["SegmentationFolder", "CLASSES_FILE"]

CLASSES_FILE = "classes.json"
MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")
_LOSSY = (".jpg", ".jpeg", ".webp")  # lossy formats blur label edges into values no class has
_SPLITS = ("train", "val")


def _files(folder: Path, kind: str, extensions: Sequence[str]) -> dict[str, Path]:
    """``{stem: path}`` of the files in ``folder`` with one of ``extensions`` (case-insensitive)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{kind} folder {folder} not found: pass the folder that holds your {kind} files")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in extensions or not path.is_file():
            continue
        if path.stem in found:
            raise ValueError(
                f"{kind} {found[path.stem]} and {path} share the name {path.stem!r}: keep one file per name"
            )
        found[path.stem] = path
    if not found:
        raise FileNotFoundError(
            f"no {kind} files in {folder} (looked for {', '.join(extensions)}): is this the right folder?"
        )
    return found


def _few(names: Sequence[str], n: int = 5) -> str:
    more = f" and {len(names) - n} more" if len(names) > n else ""
    return ", ".join(map(repr, names[:n])) + more


def _pair(images: dict[str, Path], masks: dict[str, Path], mask_suffix: str) -> list[tuple[Path, Path]]:
    """Image/mask pairs by stem (the mask's stem is the image's plus ``mask_suffix``); every file must have a twin."""
    wanted = {stem + mask_suffix: stem for stem in images}
    lonely_images = sorted(s for s in images if s + mask_suffix not in masks)
    lonely_masks = sorted(s for s in masks if s not in wanted)
    if lonely_images or lonely_masks:
        parts = []
        if lonely_images:
            folder = next(iter(masks.values())).parent
            parts.append(f"{len(lonely_images)} image(s) without a mask in {folder}: {_few(lonely_images)}")
        if lonely_masks:
            folder = next(iter(images.values())).parent
            parts.append(f"{len(lonely_masks)} mask(s) without an image in {folder}: {_few(lonely_masks)}")
        hint = _suffix_hint(images, masks)
        raise ValueError(
            "; ".join(parts)
            + ". Images and masks are paired by file name (0001.jpg with 0001.png): "
            + (hint or "rename or remove the unpaired files")
        )
    return [(images[stem], masks[stem + mask_suffix]) for stem in sorted(images)]


def _suffix_hint(images: dict[str, Path], masks: dict[str, Path]) -> str:
    """'pass mask_suffix="_mask"' when the masks are the image names plus one common suffix."""
    suffixes = {m[len(i) :] for m in masks for i in images if m.startswith(i) and m != i}
    if len(suffixes) == 1:
        return (
            f"your masks look named like the image plus {next(iter(suffixes))!r}: pass mask_suffix="
            f"{next(iter(suffixes))!r}"
        )
    return ""


def _read_config(root: Path) -> dict[str, Any]:
    path = root / CLASSES_FILE
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f'{path} is not valid JSON ({err}): fix it, e.g. {{"classes": ["bg", "fg"]}}') from None
    if not isinstance(config, dict) or not isinstance(config.get("classes"), list):
        raise ValueError(f'{path} must be a JSON object with a "classes" list, e.g. {{"classes": ["bg", "fg"]}}')
    return config


class SegmentationFolder(SegmentationDataset):
    """Your own data: images in one folder, label masks in another, paired by file name.

    Args:
        images: folder of images (PNG, JPEG, TIFF, BMP, WebP), 8-bit.
        masks: folder of masks (PNG, BMP, TIFF: lossless); default ``images``' sibling ``masks/``.
        classes: class names (default: ``classes.json`` in the folder above ``images``).
        palette: (C, 3) colours, one per class: needed for RGB colour masks, used to draw the others.
        ignore_index: the label that means "not labelled" (not scored, not trained on).
        void_values: mask values (ints) or colours ((r, g, b)) that become ``ignore_index``.
        binary: in a two-class dataset, whether mask value 255 is the foreground (default: yes, as 0/255 masks
            are written by most tools); False keeps 255 as ``ignore_index``.
        split: ``"train"`` or ``"val"``: the stems listed in ``split_file`` (default: ``<root>/<split>.txt`` when it
            exists), else a seeded random ``val_fraction`` of the pairs; None takes every pair.
        mask_suffix: masks named like the image plus this (``"_mask"``: 0001.jpg with 0001_mask.png).

    Items as every seglearn dataset: ``(uint8 (H, W, 3), int64 (H, W))`` or the outputs of ``transforms``.
    """

    def __init__(
        self,
        images: str | Path,
        masks: str | Path | None = None,
        *,
        classes: Sequence[str] | None = None,
        palette: Any = None,
        ignore_index: int | None = None,
        void_values: Sequence[Any] | None = None,
        binary: bool | None = None,
        split: str | None = None,
        val_fraction: float = 0.2,
        seed: int = 0,
        split_file: str | Path | None = None,
        mask_suffix: str = "",
        transforms: Callable[..., Any] | None = None,
        preload: bool = False,
    ) -> None:
        image_dir = Path(images).expanduser()
        mask_dir = Path(masks).expanduser() if masks is not None else image_dir.parent / "masks"
        root = image_dir.parent
        config = _read_config(root)
        names = list(classes if classes is not None else config.get("classes") or [])
        if len(names) < 2:
            raise ValueError(
                f"{type(self).__name__} needs at least two class names: pass classes=[...] or write them to "
                f'{root / CLASSES_FILE} as {{"classes": ["background", "object"]}}'
            )
        self.classes = tuple(map(str, names))
        self.ignore_index = int(ignore_index if ignore_index is not None else config.get("ignore_index", 255))
        self.palette, self.colour_palette = self._palette(palette if palette is not None else config.get("palette"))
        void = list(void_values if void_values is not None else config.get("void_values", []))
        self.void_values = tuple(int(v) for v in void if np.ndim(v) == 0)
        self.void_colours = tuple(tuple(int(c) for c in v) for v in void if np.ndim(v) == 1)
        want_binary = binary if binary is not None else config.get("binary", True)
        self.binary = bool(want_binary) and len(self.classes) == 2 and self.ignore_index == 255
        self.split = split or ""
        pairs = _pair(_files(image_dir, "image", IMAGE_EXTENSIONS), self._mask_files(mask_dir), mask_suffix)
        pairs = self._select(pairs, split, val_fraction, seed, split_file, root)
        super().__init__(pairs, transforms=transforms, root=root, preload=preload)

    @classmethod
    def from_root(cls, root: str | Path, split: str | None = None, **kwargs: Any) -> SegmentationFolder:
        """The dataset of a folder laid out as ``root/images``, ``root/masks`` and ``root/classes.json``
        (``python -m seglearn train --data root``); ``split`` "train"/"val" as in the constructor."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} not found: pass the folder that holds images/ and masks/")
        return cls(root / "images", root / "masks", split=split, **kwargs)

    def _palette(self, given: Any) -> tuple[np.ndarray, bool]:
        """(C, 3) uint8 palette and whether it was given (only a given one may decode colour masks)."""
        if given is None:
            return voc_palette(len(self.classes)), False
        palette = np.asarray(given)
        if palette.shape != (len(self.classes), 3) or palette.min() < 0 or palette.max() > 255:
            raise ValueError(
                f"palette must be {len(self.classes)} colours (one per class) of 3 values in 0..255, got shape "
                f"{palette.shape}: give one [r, g, b] per class name"
            )
        if len({tuple(c) for c in palette.tolist()}) < len(palette):
            raise ValueError("palette has the same colour for two classes: colour masks could not tell them apart")
        return palette.astype(np.uint8), True

    @staticmethod
    def _mask_files(folder: Path) -> dict[str, Path]:
        masks = _files(folder, "mask", MASK_EXTENSIONS + _LOSSY)
        lossy = [p for p in masks.values() if p.suffix.lower() in _LOSSY]
        if lossy:
            raise ValueError(
                f"mask {lossy[0]} is a {lossy[0].suffix} file ({len(lossy)} such): lossy compression changes the "
                "labels along every edge; save masks as PNG"
            )
        return masks

    def _select(self, pairs: list, split: str | None, val_fraction: float, seed: int, split_file: Any,
                root: Path) -> list[tuple[Path, Path]]:  # fmt: skip
        if split is None:
            return pairs
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}: choose 'train', 'val' or None (every pair)")
        listed = Path(split_file) if split_file is not None else root / f"{split}.txt"
        if split_file is not None or listed.is_file():
            stems = [line.strip() for line in listed.read_text().splitlines() if line.strip()]
            by_stem = {image.stem: (image, mask) for image, mask in pairs}
            missing = [s for s in stems if s not in by_stem]
            if missing:
                raise ValueError(f"{listed} lists {len(missing)} name(s) with no image/mask pair: {_few(missing)}; "
                                 "fix the list or add the files")  # fmt: skip
            return [by_stem[s] for s in stems]
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be between 0 and 1 (e.g. 0.2), got {val_fraction!r}")
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
        if len(pairs) < 2:
            raise ValueError(f"{len(pairs)} image/mask pair cannot be split into train and val: add images")
        chosen = sorted(order[:n_val] if split == "val" else order[n_val:])
        return [pairs[i] for i in chosen]

    def _build_lut(self) -> np.ndarray:
        lut = super()._build_lut()
        if self.binary:
            lut[255] = 1  # 0/255 masks: white is the foreground
        return lut

    def _allowed(self) -> str:
        if self.binary:
            return "0 (background) and 1 or 255 (foreground)"
        return super()._allowed()

    def _read_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        raw, labels = self._decode_mask(path)
        if labels:  # colour masks map straight to labels
            return raw
        mask = self._lut[raw]
        bad = mask < 0
        if bad.any():
            values, counts = np.unique(raw[bad], return_counts=True)
            found = ", ".join(
                f"{v} ({c} pixels)" for v, c in zip(values[:5].tolist(), counts[:5].tolist(), strict=True)
            )
            raise ValueError(
                f"mask {path} has values {found} outside {self._allowed()}: give every class a name in classes= "
                f"(or classes.json), list values that mean 'unlabelled' in void_values=, or fix the mask"
            )
        return mask.astype(np.uint8)

    def _decode_mask(self, path: Path) -> tuple[np.ndarray, bool]:
        """(H, W) uint8 of a mask file and whether they are labels already: an index/palette PNG's raw values (for
        the label map), or an RGB mask's labels through the palette."""
        with _named_decode_errors(path, "mask"), Image.open(path) as im:
            check_lossless(im, path)
            if _is_16bit(im) or im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise ValueError(f"mask {path} is a 16-bit or float image (mode {im.mode!r}): save it as an 8-bit "
                                 "PNG of class indices (mode 'L')")  # fmt: skip
            if im.mode in ("RGBA", "LA", "PA", "RGBa"):
                raise ValueError(f"mask {path} has an alpha channel (mode {im.mode!r}): save it without transparency, "
                                 "as an 8-bit PNG of class indices (or RGB colours with palette=)")  # fmt: skip
            if im.mode in ("L", "P"):
                return np.array(im, dtype=np.uint8), False
            if im.mode == "1":
                return np.array(im.convert("L"), dtype=np.uint8), False
            if im.mode != "RGB":
                raise ValueError(f"mask {path} has mode {im.mode!r}: save it as an 8-bit PNG of class indices")
            rgb = np.asarray(im, dtype=np.uint8)
        if not self.colour_palette:
            if (rgb == rgb[..., :1]).all():  # a grey mask saved with three equal channels
                return rgb[..., 0].copy(), False
            raise ValueError(f"mask {path} is an RGB colour image: pass palette= (one [r, g, b] per class, in the "
                             f"order of classes) or put \"palette\" in {CLASSES_FILE}")  # fmt: skip
        return self._colours_to_labels(rgb, path), True

    def _colours_to_labels(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        out = np.full(codes.shape, 0, np.uint8)
        known = np.zeros(codes.shape, bool)
        for label, (r, g, b) in enumerate(self.palette.tolist()):
            hit = codes == (r << 16 | g << 8 | b)
            out[hit], known[hit] = label, True
        for r, g, b in self.void_colours:
            hit = codes == (r << 16 | g << 8 | b)
            out[hit], known[hit] = self.ignore_index, True
        if not known.all():
            values, counts = np.unique(codes[~known], return_counts=True)
            found = ", ".join(f"({v >> 16}, {v >> 8 & 255}, {v & 255}): {c} pixels"
                              for v, c in zip(values[:5].tolist(), counts[:5].tolist(), strict=True))  # fmt: skip
            raise ValueError(
                f"mask {path} has colours not in the palette: {found}; add them to palette= (one per class) or to "
                "void_values= as [r, g, b], or fix the mask (a resized or JPEG-saved mask blends colours)"
            )
        return out
