"""The full CamVid (Brostow et al.): the 32 labels of label_colors.txt, one of them Void (ignored): 31 classes to learn.

RGB ``*_L.png`` labels are mapped through the official 32-colour palette, and the index ``*_P.png`` labels of the
fast.ai copy are read as they are; both give the same raw label indices (0..31, Void = 30), which the dataset maps to
its 31 classes (raw 0..29 -> 0..29, raw 31 Wall -> 30) and Void to ``ignore_index``. fast.ai's ``codes.txt`` lists
the same 32 names incl. Void, so a model trained on fast.ai's indices with 32 outputs is the same task with one dead
output (index 30, never a target)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .base import IMAGE_EXTENSIONS, SegmentationDataset, _is_16bit, _named_decode_errors, check_lossless, read_mask
from .camvid import _find_by_stem
from .paths import data_root, shared_data_dir

__all__ = [
    "CamVid32",
    "CAMVID32_CLASSES",
    "CAMVID32_PALETTE",
    "CAMVID32_LABELS",
    "CAMVID32_RAW_PALETTE",
    "CAMVID32_VOID",
    "rgb_to_index",
    "read_camvid32_label",
]

# The rows of CamVid's label_colors.txt, in its order (the fast.ai codes.txt has the same names in the same order, so
# its index labels and these rows agree). "Void" (0, 0, 0) keeps its row here so that raw indices match; it is no
# class: the dataset maps it to ignore_index.
_LABEL_COLORS = (
    (64, 128, 64, "Animal"),
    (192, 0, 128, "Archway"),
    (0, 128, 192, "Bicyclist"),
    (0, 128, 64, "Bridge"),
    (128, 0, 0, "Building"),
    (64, 0, 128, "Car"),
    (64, 0, 192, "CartLuggagePram"),
    (192, 128, 64, "Child"),
    (192, 192, 128, "Column_Pole"),
    (64, 64, 128, "Fence"),
    (128, 0, 192, "LaneMkgsDriv"),
    (192, 0, 64, "LaneMkgsNonDriv"),
    (128, 128, 64, "Misc_Text"),
    (192, 0, 192, "MotorcycleScooter"),
    (128, 64, 64, "OtherMoving"),
    (64, 192, 128, "ParkingBlock"),
    (64, 64, 0, "Pedestrian"),
    (128, 64, 128, "Road"),
    (128, 128, 192, "RoadShoulder"),
    (0, 0, 192, "Sidewalk"),
    (192, 128, 128, "SignSymbol"),
    (128, 128, 128, "Sky"),
    (64, 128, 192, "SUVPickupTruck"),
    (0, 0, 64, "TrafficCone"),
    (0, 64, 64, "TrafficLight"),
    (192, 64, 128, "Train"),
    (128, 128, 0, "Tree"),
    (192, 128, 192, "Truck_Bus"),
    (64, 0, 64, "Tunnel"),
    (192, 192, 0, "VegetationMisc"),
    (0, 0, 0, "Void"),
    (64, 192, 0, "Wall"),
)
# Raw labels: the 32 names and colours of label_colors.txt (= codes.txt), Void included, indexed as the label files are.
CAMVID32_LABELS = tuple(row[3] for row in _LABEL_COLORS)
CAMVID32_RAW_PALETTE = np.array([row[:3] for row in _LABEL_COLORS], dtype=np.uint8)
CAMVID32_VOID = CAMVID32_LABELS.index("Void")  # raw index 30
# What models learn: the 31 real classes, Void left out, in the same order (raw 0..29 -> 0..29, raw 31 Wall -> 30).
CAMVID32_CLASSES = tuple(name for name in CAMVID32_LABELS if name != "Void")
CAMVID32_PALETTE = np.array([row[:3] for row in _LABEL_COLORS if row[3] != "Void"], dtype=np.uint8)
_SPLITS = ("train", "val", "test")
_LIST_NAMES = {"train": ("train.txt",), "val": ("val.txt", "valid.txt"), "test": ("test.txt",)}  # valid: fast.ai's
_LABEL_SUFFIXES = ("_P", "_L", "")  # index labels (fast.ai) first: no colour lookup needed when both are there


def _pack(rgb: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> int32 (...) keys R<<16 | G<<8 | B: one number per colour, from all three channels."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def rgb_to_index(rgb: np.ndarray, palette: np.ndarray, *, path: str | Path | None = None) -> np.ndarray:
    """Map a colour-coded label ``uint8 (H, W, 3)`` to the row of ``palette`` (K, 3) of each pixel: ``uint8 (H, W)``.

    The whole (R, G, B) triple decides (classes share single channels: Road and Building both have R=128), looked up
    with ``np.searchsorted`` over the sorted palette. A colour not in ``palette`` raises ValueError naming ``path``, the
    colours and their pixel counts.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a colour label must be (H, W, 3), got shape {rgb.shape}")
    table = _pack(np.asarray(palette, dtype=np.uint8).reshape(-1, 3))
    if len(np.unique(table)) != len(table) or len(table) > 256:
        raise ValueError("a palette needs at most 256 distinct colours: two classes with one colour are ambiguous")
    order = np.argsort(table)
    keys = _pack(rgb)
    pos = np.minimum(np.searchsorted(table[order], keys), len(table) - 1)
    known = table[order][pos] == keys
    if not known.all():
        colours, counts = np.unique(keys[~known], return_counts=True)
        top = np.argsort(-counts)[:5]
        listed = ", ".join(
            f"({c >> 16}, {(c >> 8) & 255}, {c & 255}) x{n}" for c, n in zip(colours[top], counts[top], strict=True)
        )
        more = f" and {len(colours) - 5} more" if len(colours) > 5 else ""
        raise ValueError(
            f"label {path or '(array)'} has {int((~known).sum())} pixels of {len(colours)} colours not in the "
            f"{len(table)}-colour palette: {listed}{more}. Was it resized with interpolation or saved lossy? Use the "
            "original label PNGs, or paint those pixels with a palette colour (Void is 0, 0, 0)"
        )
    return order[pos].astype(np.uint8)


def read_camvid32_label(path: str | Path) -> np.ndarray:
    """Read a CamVid label as raw label indices ``uint8 (H, W)`` (0..31 in label_colors.txt order, Void = 30).

    A single-channel PNG (``L``/``P``, the fast.ai ``*_P.png``) holds the indices; an RGB one (the original
    ``*_L.png``) is mapped through the 32-colour :data:`CAMVID32_RAW_PALETTE` by :func:`rgb_to_index`. These are not
    yet the dataset's classes: :class:`CamVid32` maps them (Void -> ignore, Wall 31 -> 30).
    """
    path = Path(path)
    with _named_decode_errors(path, "label"), Image.open(path) as im:
        check_lossless(im, path)
        if im.mode in ("L", "P"):
            rgb = None
        elif im.mode in ("RGB", "RGBA") and not _is_16bit(im):
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)  # alpha carries no class
        else:
            raise ValueError(
                f"label {path} has mode {im.mode!r}: CamVid32 reads 8-bit index PNGs (mode 'L' or 'P', *_P.png) or "
                "8-bit RGB colour labels (*_L.png); re-extract the original label files"
            )
    return read_mask(path) if rgb is None else rgb_to_index(rgb, CAMVID32_RAW_PALETTE, path=path)


def is_camvid32_root(path: Path) -> bool:
    """True for a folder with ``images/`` and ``labels/`` (the fast.ai layout, or the original files sorted so)."""
    return (path / "images").is_dir() and (path / "labels").is_dir()


def _resolve_root(root: str | Path | None) -> Path:
    """The given folder (or its ``camvid/`` child, where camvid.tgz unpacks), else the first existing default."""
    if root is not None:
        root = Path(root).expanduser()
        return root / "camvid" if not is_camvid32_root(root) and is_camvid32_root(root / "camvid") else root
    shared = shared_data_dir()
    # data/camvid also counts when it holds this layout: camvid.tgz unpacked in data/ (the 11-class copy has train/).
    candidates = [data_root() / "camvid32", data_root() / "camvid"] + ([shared / "camvid32"] if shared else [])
    return next((p for p in candidates if is_camvid32_root(p)), candidates[0])


def _check_class_files(root: Path) -> None:
    """``codes.txt`` (fast.ai) and ``label_colors.txt`` (original), when present, must list CamVid's 32 raw labels
    (Void included) in the official order, so that the label files' indices mean what this dataset reads them as."""
    codes = root / "codes.txt"
    if codes.is_file() and codes.read_text().split() != list(CAMVID32_LABELS):
        raise ValueError(
            f"{codes} lists other classes than CamVid's 32 labels ({', '.join(CAMVID32_LABELS)}): its index labels "
            "would be read as the wrong classes; use SegmentationFolder with your own class list for this data"
        )
    colors = root / "label_colors.txt"
    if colors.is_file():
        rows = [tuple(line.split()) for line in colors.read_text().splitlines() if line.strip()]
        expected = [tuple(str(v) for v in row) for row in _LABEL_COLORS]
        if rows != expected:
            raise ValueError(
                f"{colors} differs from CamVid's official 32-colour palette: its labels would be mapped to the wrong "
                "classes; use SegmentationFolder with your own palette for this data"
            )


def _read_list(root: Path, split: str) -> list[str] | None:
    """Image stems named in the split's list file (one name per line; a SegNet-style second column is ignored)."""
    for name in _LIST_NAMES[split]:
        if (root / name).is_file():
            lines = (root / name).read_text().splitlines()
            return [Path(line.split()[0]).stem for line in lines if line.strip()]
    return None


class CamVid32(SegmentationDataset):
    """CamVid road scenes with the 32 labels of label_colors.txt, one of them Void (ignored): 31 classes to learn.

    ``classes`` / ``palette`` are :data:`CAMVID32_CLASSES` / :data:`CAMVID32_PALETTE`, the 31 real classes in the
    official order without Void: raw labels 0..29 keep their index, raw 31 (Wall) becomes 30, and raw Void (30) becomes
    ``ignore_index``, so ``num_classes`` is 31 and every output has targets. fast.ai's ``codes.txt`` lists the same 32
    names incl. Void, so a model trained on fast.ai's indices with 32 outputs is the same task with one dead output.

    Brostow, Fauqueur, Cipolla, "Semantic object classes in video: a high-definition ground truth database", PRL 2008.

    Layout under ``root`` (default ``data_root()/camvid32``; the fast.ai ``camvid.tgz`` as unpacked):
    ``images/X.png`` and ``labels/X_P.png`` (index) or ``labels/X_L.png`` (RGB colours, mapped through the palette,
    never read by one channel), optional ``codes.txt`` / ``label_colors.txt`` (checked against the classes), and
    split lists ``train.txt``, ``val.txt`` or ``valid.txt``, ``test.txt`` (one image name per line). Without
    ``train.txt``, train is every image not in the val/test lists. Items: ``uint8`` (H, W, 3) and ``int64`` (H, W) with
    values 0..30 and 255 (720x960 for the full set), or the outputs of ``transforms``.
    """

    classes = CAMVID32_CLASSES
    palette = CAMVID32_PALETTE
    void_values = (CAMVID32_VOID,)  # a raw label index (Void), not a class index

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
            raise ValueError(f"unknown CamVid32 split {split!r}: choose one of {', '.join(_SPLITS)}")
        root = _resolve_root(root)
        if download and not is_camvid32_root(root):
            from .download import download_camvid32

            download_camvid32(root)
        if not is_camvid32_root(root):
            raise FileNotFoundError(
                f"CamVid (32 classes) not found under {root}: expected images/ and labels/ there. Pass download=True, "
                "run `python -m seglearn download camvid32`, or pass the folder camvid.tgz unpacked to (camvid/); "
                "SEGLEARN_DATA may point to the folder that holds camvid32/"
            )
        _check_class_files(root)
        self.split = split
        super().__init__(self._samples(root, split), transforms=transforms, root=root, preload=preload)

    @staticmethod
    def _samples(root: Path, split: str) -> list[tuple[Path, Path]]:
        image_dir, label_dir = root / "images", root / "labels"
        stems = _read_list(root, split)
        if stems is None and split == "train":
            held_out = set((_read_list(root, "val") or []) + (_read_list(root, "test") or []))
            if held_out:
                every = sorted(p.stem for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
                stems = [s for s in every if s not in held_out]
        if stems is None:
            wanted = " or ".join(str(root / name) for name in _LIST_NAMES[split])
            raise FileNotFoundError(
                f"CamVid32 split {split!r} has no list: expected {wanted} naming one image per line (the fast.ai copy "
                "has valid.txt only, so its splits are train and val); write the list to define the split"
            )
        samples = []
        for stem in stems:
            image = _find_by_stem(image_dir, stem)
            if image is None:
                raise FileNotFoundError(f"CamVid32 {split}: image {stem} is listed but not in {image_dir}")
            label = next((p for s in _LABEL_SUFFIXES if (p := label_dir / f"{stem}{s}.png").is_file()), None)
            if label is None:
                raise FileNotFoundError(
                    f"CamVid32 {split}: no label for {image} (expected {label_dir / (stem + '_P.png')} or "
                    f"{stem}_L.png); re-extract the dataset or remove the image from the split list"
                )
            samples.append((image, label))
        if not samples:
            raise FileNotFoundError(f"CamVid32 {split}: the split is empty; check the list files in {root}")
        return samples

    def _build_lut(self) -> np.ndarray:
        # raw label index (label_colors.txt order) -> class index; -1 marks a value that must not occur.
        lut = np.full(256, -1, dtype=np.int16)
        for raw, name in enumerate(CAMVID32_LABELS):
            lut[raw] = self.ignore_index if raw in self.void_values else self.classes.index(name)
        lut[self.ignore_index] = self.ignore_index
        return lut

    def _stats_key(self) -> str:
        # Counts per class index: a cache written when Void was class 30 (32 classes) must not be read as 31 classes.
        return f"{super()._stats_key()}:{self.num_classes}classes"

    def _allowed(self) -> str:
        void = "".join(f", {v} (void)" for v in self.void_values)
        return f"0..{len(CAMVID32_LABELS) - 1}{void} and {self.ignore_index} (ignore)"

    def _read_mask(self, index: int) -> np.ndarray:
        path = self.samples[index][1]
        raw = read_camvid32_label(path)
        mask = self._lut[raw]  # raw Void (30) -> ignore_index, raw Wall (31) -> class 30
        if (mask < 0).any():
            bad = np.unique(raw[mask < 0])
            raise ValueError(
                f"label {path} has values {bad[:10].tolist()} outside {self._allowed()}: is this CamVid's 32-class "
                "label folder? Re-extract or re-download the dataset."
            )
        return mask.astype(np.uint8)
