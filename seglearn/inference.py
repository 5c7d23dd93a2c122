"""Predict on image files: a coloured mask and an overlay per image, never one output written over another.

``python -m seglearn predict IMAGE_OR_FOLDER ... --checkpoint model.pt`` calls :func:`predict_files`; images are read
with the datasets' reader (8-bit only: a 16-bit PNG is refused rather than clipped to white).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from seglearn.atomic import write_file
from seglearn.data.base import IMAGE_EXTENSIONS, read_image

__all__ = ["Prediction", "image_files", "predict_files"]


@dataclass(frozen=True)
class Prediction:
    """One image's outputs: the coloured mask and the overlay (image blended with the mask)."""

    source: Path
    mask: Path
    overlay: Path


def image_files(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given and every image inside a given folder (sorted); FileNotFoundError names a missing one."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            inside = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not inside:
                raise FileNotFoundError(f"no images in folder {item} (looked for {', '.join(IMAGE_EXTENSIONS)})")
            found += inside
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"image {item} not found: pass image files or folders of images")
    return found


def _output_names(sources: Sequence[Path]) -> list[str]:
    """A distinct name per source: its stem, or ``parent_stem`` (then ``-2``, ...) where stems collide."""
    stems = [p.stem for p in sources]
    names, used = [], set()
    for path, stem in zip(sources, stems, strict=True):
        name = stem if stems.count(stem) == 1 else f"{path.parent.name}_{stem}"
        base, k = name, 2
        while name in used:
            name, k = f"{base}-{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def _save_png(array: np.ndarray, path: Path) -> None:
    write_file(path, lambda f: Image.fromarray(array).save(f, format="PNG"))  # the old file or the new one


@torch.no_grad()
def predict_files(
    model: nn.Module,
    inputs: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    palette: np.ndarray,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    alpha: float = 0.5,
    progress: bool = True,
) -> list[Prediction]:
    """Write ``out/<name>_mask.png`` (palette colours) and ``out/<name>_overlay.png`` for every input image.

    ``inputs``: image files and/or folders of images. Each image is normalized as the eval preset does, predicted at
    its own size (``scales``/``flip`` as :func:`seglearn.engine.predict`) and its argmax coloured with ``palette``
    (C, 3) uint8. Returns what was written, in input order.
    """
    from seglearn.data import eval_transforms
    from seglearn.engine import predict
    from seglearn.plot import decode_mask
    from seglearn.progress import progress_bar

    sources = image_files(inputs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    tf = eval_transforms()
    written = []
    bar = progress_bar(list(zip(sources, _output_names(sources), strict=True)), enabled=progress and len(sources) > 1,
                       desc="predict", unit="image")  # fmt: skip
    for source, name in bar:
        image = read_image(source)
        probs = predict(model, tf(image=image)["image"].unsqueeze(0).to(device), scales=tuple(scales), flip=flip)
        colour = decode_mask(probs.argmax(1)[0].cpu().numpy(), palette)
        blend = ((1 - alpha) * image + alpha * colour).astype(np.uint8)
        result = Prediction(source, out / f"{name}_mask.png", out / f"{name}_overlay.png")
        _save_png(colour, result.mask)
        _save_png(blend, result.overlay)
        written.append(result)
    return written
