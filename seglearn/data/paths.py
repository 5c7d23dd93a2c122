"""Where datasets live: one data root, and a finder for datasets that already exist on disk.

Order of search for ``locate_dataset(name)``:
1. ``$SEGLEARN_DATA/<folder>`` (the user's explicit choice),
2. ``data_root()/<folder>`` (the checkout's ``data/`` or ``./data``),
3. the shared test-data copy beside a checkout, ``../shared/data/<folder>`` (``$SEGLEARN_SHARED_DATA`` overrides it;
   CI keeps real data there).
"""

from __future__ import annotations

import os
from pathlib import Path

import seglearn

__all__ = ["data_root", "locate_dataset", "is_camvid_root", "is_voc_root", "shared_data_dir"]

# Folder of each dataset under a data root; the shared copy of VOC is a two-image sample.
_FOLDERS = {"camvid": "camvid", "voc": "voc"}
_SHARED_FOLDERS = {"camvid": "camvid", "voc": "voc-sample"}


def _checkout_root() -> Path | None:
    """The source checkout seglearn is imported from, or None for an installed package."""
    root = Path(seglearn.__file__).resolve().parents[1]
    return root if (root / "data").is_dir() else None


def data_root() -> Path:
    """``$SEGLEARN_DATA`` if set, else the checkout's ``data/`` folder, else ``./data``."""
    env = os.environ.get("SEGLEARN_DATA")
    if env:
        return Path(env).expanduser()
    checkout = _checkout_root()
    return checkout / "data" if checkout is not None else Path("data")


def shared_data_dir() -> Path | None:
    """``$SEGLEARN_SHARED_DATA`` if set, else ``<checkout>/../shared/data`` (None outside a checkout)."""
    env = os.environ.get("SEGLEARN_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    checkout = _checkout_root()
    return checkout.parent / "shared" / "data" if checkout is not None else None


def is_camvid_root(path: Path) -> bool:
    """True for a SegNet-layout CamVid folder (has ``train/`` and ``trainannot/``)."""
    return (path / "train").is_dir() and (path / "trainannot").is_dir()


def is_voc_root(path: Path, year: str = "2012") -> bool:
    """True for a folder holding ``VOCdevkit/VOC<year>``."""
    return (path / "VOCdevkit" / f"VOC{year}").is_dir()


def _candidates(name: str) -> list[Path]:
    folder = _FOLDERS[name]
    out = []
    env = os.environ.get("SEGLEARN_DATA")
    if env:
        out.append(Path(env).expanduser() / folder)
    out.append(data_root() / folder)
    if name == "voc":
        # data/README.md also allows VOCdevkit directly under the data root.
        out.append(data_root())
    shared = shared_data_dir()
    if shared is not None:
        out.append(shared / _SHARED_FOLDERS[name])
    return out


def locate_dataset(name: str) -> Path | None:
    """Find an existing dataset folder for ``name`` ("camvid" or "voc"); None if there is none.

    For "voc" the returned folder is the one that contains ``VOCdevkit/``. "synthetic" is drawn on the fly and is never
    on disk, so it gives None.
    """
    if name == "synthetic":
        return None
    if name not in _FOLDERS:
        raise ValueError(f"unknown dataset {name!r}: choose one of camvid, voc, synthetic")
    check = is_camvid_root if name == "camvid" else is_voc_root
    for path in _candidates(name):
        if check(path):
            return path
    return None


def default_root(name: str) -> Path:
    """``locate_dataset(name)`` or, if nothing exists yet, ``data_root()/<folder>`` (where a download goes)."""
    found = locate_dataset(name)
    return found if found is not None else data_root() / _FOLDERS[name]
