"""SyntheticScenes: street scenes drawn on the fly with CamVid's 11 classes, so everything runs with no download."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from .base import ClassStatistics, apply_transforms
from .camvid import CAMVID_CLASSES, CAMVID_PALETTE

__all__ = ["SyntheticScenes"]

SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, SIGN, FENCE, CAR, PEDESTRIAN, BICYCLIST = range(11)
VOID = 255

# Materials shared between classes: colour ranges overlap on purpose, so no colour names a class on its own.
_GREY = ((70, 70, 70), (200, 200, 205))
_MATERIALS = {
    SKY: [((150, 160, 170), (250, 250, 255)), ((90, 130, 180), (180, 210, 250))],
    BUILDING: [
        _GREY,
        ((120, 60, 40), (200, 140, 110)),
        ((160, 150, 120), (230, 220, 190)),
        ((40, 40, 50), (110, 100, 100)),
    ],
    ROAD: [((60, 55, 70), (150, 140, 160)), _GREY],
    PAVEMENT: [_GREY, ((120, 90, 80), (200, 160, 150)), ((60, 50, 110), (150, 130, 200))],
    TREE: [((30, 60, 20), (110, 160, 80)), ((80, 90, 40), (150, 150, 90)), ((50, 50, 40), (110, 110, 90))],
    POLE: [_GREY, ((30, 30, 30), (120, 110, 90))],
    SIGN: [((150, 20, 20), (250, 90, 90)), ((20, 40, 140), (90, 120, 230)), ((190, 170, 40), (250, 240, 140)), _GREY],
    FENCE: [((80, 60, 40), (160, 130, 90)), _GREY, ((40, 70, 40), (110, 140, 100))],
    CAR: [((10, 10, 10), (250, 250, 250)), _GREY, ((40, 0, 60), (160, 80, 200))],
    PEDESTRIAN: [((10, 10, 10), (240, 230, 220)), ((40, 40, 80), (120, 120, 200))],
    BICYCLIST: [((10, 10, 10), (240, 230, 220)), ((0, 80, 120), (120, 180, 230))],
    VOID: [((0, 0, 0), (255, 255, 255))],
}


class _Canvas:
    """A label map (H, W) uint8 and a colour image (H, W, 3) float32 painted together, far objects first."""

    def __init__(self, h: int, w: int, rng: np.random.Generator) -> None:
        self.h, self.w, self.rng = h, w, rng
        self.label = np.full((h, w), SKY, np.uint8)
        self.image = np.zeros((h, w, 3), np.float32)

    def color(self, cls: int) -> np.ndarray:
        choices = _MATERIALS[cls]
        lo, hi = choices[self.rng.integers(len(choices))]
        return self.rng.uniform(lo, hi).astype(np.float32)

    def rect(self, y0: float, y1: float, x0: float, x1: float, cls: int, color: np.ndarray | None = None) -> None:
        y0, y1 = max(int(y0), 0), min(max(int(np.ceil(y1)), int(y0) + 1), self.h)
        x0, x1 = max(int(x0), 0), min(max(int(np.ceil(x1)), int(x0) + 1), self.w)
        if y0 < y1 and x0 < x1:
            self.label[y0:y1, x0:x1] = cls
            self.image[y0:y1, x0:x1] = self.color(cls) if color is None else color

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, cls: int, color: np.ndarray | None = None) -> None:
        ry, rx = max(ry, 0.5), max(rx, 0.5)
        y0, y1 = max(int(cy - ry), 0), min(int(cy + ry) + 1, self.h)
        x0, x1 = max(int(cx - rx), 0), min(int(cx + rx) + 1, self.w)
        if y0 >= y1 or x0 >= x1:
            return
        yy, xx = np.ogrid[y0:y1, x0:x1]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        self.label[y0:y1, x0:x1][inside] = cls
        self.image[y0:y1, x0:x1][inside] = self.color(cls) if color is None else color

    def region(self, mask: np.ndarray, cls: int, color: np.ndarray | None = None, y0: int = 0, x0: int = 0) -> None:
        """Paint a boolean ``mask`` whose top-left corner sits at (y0, x0)."""
        rows, cols = slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1])
        self.label[rows, cols][mask] = cls
        self.image[rows, cols][mask] = self.color(cls) if color is None else color


@dataclass
class _Layout:
    """Where the scene's ground is: the horizon's row, the vanishing point's column, and the road's perspective."""

    h: int
    w: int
    horizon: float
    vx: float
    half_coef: float = 0.0
    shift_coef: float = 0.0

    @property
    def ground(self) -> float:
        return self.h - self.horizon

    def ground_x(self, rng: np.random.Generator, d: float, side: int) -> float:
        """x of a point at depth d: on the road for side 0, on the pavement left (-1) or right (+1) of it."""
        centre, half_d = self.vx + self.shift_coef * d, self.half_coef * d + 1
        return centre + half_d * (rng.uniform(-0.6, 0.6) if side == 0 else side * rng.uniform(1.05, 1.8))


def _draw_sky_and_buildings(c: _Canvas, at: _Layout, rng: np.random.Generator) -> None:
    u, h, w, horizon = rng.uniform, at.h, at.w, at.horizon
    # Sky: vertical gradient between two sky colours.
    top, bottom = c.color(SKY), c.color(SKY)
    t = np.linspace(0, 1, max(int(horizon) + 1, 1), dtype=np.float32)[:, None, None]
    c.image[: len(t)] = top * (1 - t) + bottom * t
    # Buildings along the horizon with gaps of sky; windows are darker or brighter patches of the same class.
    x = u(-0.1, 0.05) * w
    while x < w:
        bw = w * u(0.08, 0.3)
        if rng.random() < 0.8:
            top_y = horizon - h * u(0.08, 0.5)
            base = c.color(BUILDING)
            c.rect(top_y, horizon + 1, x, x + bw, BUILDING, base)
            win = base * u(0.4, 1.5)
            ph, pw = max(h * u(0.04, 0.08), 3), max(bw * u(0.15, 0.3), 3)
            for wy in np.arange(top_y + ph * 0.5, horizon - ph, ph * 1.6):
                for wx in np.arange(x + pw * 0.4, x + bw - pw, pw * 1.7):
                    c.rect(wy, wy + ph, wx, wx + pw, BUILDING, win)
        x += bw


def _draw_ground(c: _Canvas, at: _Layout, rng: np.random.Generator) -> None:
    """Pavement everywhere below the horizon, a perspective road trapezoid over it (sets the layout's road)."""
    u, h, w, horizon = rng.uniform, at.h, at.w, at.horizon
    y_h = min(int(np.ceil(horizon)), h - 1)
    rows = np.arange(y_h, h, dtype=np.float32)[:, None]
    cols = np.arange(w, dtype=np.float32)[None, :]
    depth = (rows - horizon) / max(at.ground, 1.0)  # 0 at the horizon, 1 at the bottom
    c.rect(y_h, h, 0, w, PAVEMENT)
    at.half_coef, at.shift_coef = w * u(0.3, 0.6), w * u(-0.15, 0.15)
    half, shift = at.half_coef * depth + 1, at.shift_coef * depth
    offset = np.abs(cols - at.vx - shift)
    road = offset < half
    c.region(road, ROAD, y0=y_h)
    marking = road & (offset < half * 0.015 + 0.5) & ((depth * 12 + u()) % 1 < 0.5)
    c.region(marking, ROAD, np.full(3, u(180, 250), np.float32), y0=y_h)


def _draw_trees_and_fence(c: _Canvas, at: _Layout, rng: np.random.Generator) -> None:
    """Trees and fences behind the pavement, far to near."""
    u, h, w, horizon, ground = rng.uniform, at.h, at.w, at.horizon, at.ground
    for _ in range(rng.integers(1, 5)):
        d = u(0.02, 0.3)
        tx, ty = at.ground_x(rng, d, int(rng.choice([-1, 1]))), horizon + ground * d
        size = h * (0.1 + 0.5 * d) * u(0.6, 1.2)
        c.rect(ty - size, ty, tx - size * 0.05, tx + size * 0.05, TREE)
        canopy = c.color(TREE)
        for _ in range(rng.integers(2, 5)):
            cy, cx = ty - size * u(0.7, 1.2), tx + size * u(-0.4, 0.4)
            ry, rx = size * u(0.2, 0.45), size * u(0.25, 0.5)
            c.ellipse(cy, cx, ry, rx, TREE, canopy * u(0.8, 1.2))
    if rng.random() < 0.7:
        side = int(rng.choice([-1, 1]))
        fh = max(h * u(0.04, 0.12), 2)
        y0 = max(int(horizon + ground * u(0.0, 0.1) - fh), 0)
        x0, x1 = (0, int(max(at.vx - w * 0.1, 1))) if side < 0 else (int(at.vx + w * 0.1), w)
        fr = np.arange(y0, min(int(y0 + fh), h), dtype=np.float32)[:, None] - y0
        fc = np.arange(x0, x1, dtype=np.float32)[None, :] - x0
        period, bar = max(w * u(0.01, 0.03), 3), u(0.3, 0.6)
        fence = ((fc / period) % 1 < bar) | (np.abs(fr - fh * 0.2) < 1) | (np.abs(fr - fh * 0.7) < 1)
        c.region(fence, FENCE, y0=y0, x0=x0)


def _draw_pole(c: _Canvas, at: _Layout, rng: np.random.Generator, d: float, y: float, s: float) -> None:
    u = rng.uniform
    px = at.ground_x(rng, d, int(rng.choice([-1, 1])))
    pw = max(at.w * 0.004 * (1 + 3 * d), 1)
    top_y = y - s * u(1.5, 3.0)
    c.rect(top_y, y, px - pw / 2, px + pw / 2, POLE)
    if rng.random() < 0.8:
        r = max(s * u(0.12, 0.25), 1.5)
        if rng.random() < 0.5:
            c.ellipse(top_y + r, px, r, r, SIGN)
        else:
            c.rect(top_y, top_y + r * 1.6, px - r, px + r, SIGN)


def _draw_car(c: _Canvas, at: _Layout, rng: np.random.Generator, d: float, y: float, s: float) -> None:
    u = rng.uniform
    cx, cw = at.ground_x(rng, d, 0), s * u(1.0, 1.6)
    ch = cw * u(0.45, 0.6)
    body = c.color(CAR)
    c.rect(y - ch * 0.6, y - ch * 0.1, cx - cw / 2, cx + cw / 2, CAR, body)
    c.rect(y - ch, y - ch * 0.55, cx - cw * 0.3, cx + cw * 0.3, CAR, body * u(0.9, 1.1))
    c.rect(y - ch * 0.92, y - ch * 0.6, cx - cw * 0.25, cx + cw * 0.25, CAR, body * u(0.2, 0.5))
    for wx in (cx - cw * 0.3, cx + cw * 0.3):
        c.ellipse(y - ch * 0.12, wx, ch * 0.14, cw * 0.09, CAR, np.full(3, u(10, 50), np.float32))


def _draw_pedestrian(c: _Canvas, at: _Layout, rng: np.random.Generator, d: float, y: float, s: float) -> None:
    u = rng.uniform
    px, ph = at.ground_x(rng, d, int(rng.choice([-1, 1]))), s * u(0.8, 1.1)
    c.rect(y - ph * 0.45, y, px - ph * 0.07, px + ph * 0.07, PEDESTRIAN)
    c.rect(y - ph * 0.85, y - ph * 0.4, px - ph * 0.1, px + ph * 0.1, PEDESTRIAN)
    skin = np.float32([u(120, 230), u(80, 180), u(60, 160)])
    c.ellipse(y - ph * 0.92, px, ph * 0.08, ph * 0.065, PEDESTRIAN, skin)


def _draw_bicyclist(c: _Canvas, at: _Layout, rng: np.random.Generator, d: float, y: float, s: float) -> None:
    u = rng.uniform
    bx, bs = at.ground_x(rng, d, 0), s * u(0.7, 1.0)
    frame = c.color(BICYCLIST)
    for wx in (bx - bs * 0.3, bx + bs * 0.3):
        c.ellipse(y - bs * 0.18, wx, bs * 0.18, bs * 0.18, BICYCLIST, frame * 0.3)
    c.rect(y - bs * 0.25, y - bs * 0.18, bx - bs * 0.3, bx + bs * 0.3, BICYCLIST, frame)
    c.rect(y - bs * 0.85, y - bs * 0.3, bx - bs * 0.08, bx + bs * 0.1, BICYCLIST)
    c.ellipse(y - bs * 0.93, bx, bs * 0.08, bs * 0.07, BICYCLIST)


def _draw_clutter(c: _Canvas, at: _Layout, rng: np.random.Generator, d: float, y: float, s: float) -> None:
    vw = s * rng.uniform(0.2, 0.6)
    vx_ = at.ground_x(rng, d, int(rng.choice([-1, 0, 1])))
    c.rect(y - vw, y, vx_ - vw / 2, vx_ + vw / 2, VOID)


_THINGS = {"pole": _draw_pole, "car": _draw_car, "ped": _draw_pedestrian, "bike": _draw_bicyclist,
           "void": _draw_clutter}  # fmt: skip


def _draw_things(c: _Canvas, at: _Layout, rng: np.random.Generator) -> None:
    """Things on the ground, far to near: poles with signs, cars, pedestrians, cyclists, unlabelled clutter."""
    u = rng.uniform
    things = [(u(0.05, 0.6), kind) for kind in ["pole"] * int(rng.integers(1, 4)) + ["car"] * int(rng.integers(1, 4))]
    things += [(u(0.1, 0.8), "ped") for _ in range(rng.integers(0, 3))]
    things += [(u(0.1, 0.8), "bike") for _ in range(rng.integers(0, 2 + (rng.random() < 0.5)))]
    if rng.random() < 0.3:
        things.append((u(0.1, 0.9), "void"))
    for d, kind in sorted(things):
        y = at.horizon + at.ground * d
        s = at.h * (0.06 + 0.55 * d)  # apparent size grows towards the camera
        _THINGS[kind](c, at, rng, d, y, s)


def _photograph(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Texture, illumination and sensor noise: low-frequency shading, a per-image colour cast, per-pixel noise."""
    u, (h, w) = rng.uniform, c.label.shape
    shade = rng.standard_normal((max(h // 16, 2), max(w // 16, 2))).astype(np.float32)
    shade = cv2.resize(shade, (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, 1)
    ramp = 1 + u(-0.3, 0.3) * (np.arange(w, dtype=np.float32) / w - 0.5)
    light = (1 + 0.1 * shade) * ramp[:, None]  # (H, W, 1)
    gain = (u(0.6, 1.25) * u(0.85, 1.15, 3)).astype(np.float32)
    image = c.image * (light * gain) + u(-20, 20)
    amp = int(u(6, 20))  # uniform sensor noise, std amp / sqrt(3)
    image += rng.integers(-amp, amp + 1, (h, w, 3), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def _draw_scene(h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: image uint8 (h, w, 3) and labels uint8 (h, w), drawn back to front."""
    c = _Canvas(h, w, rng)
    at = _Layout(h, w, horizon=h * rng.uniform(0.35, 0.55), vx=0.0)
    at.vx = w * rng.uniform(0.3, 0.7)
    _draw_sky_and_buildings(c, at, rng)
    _draw_ground(c, at, rng)
    _draw_trees_and_fence(c, at, rng)
    _draw_things(c, at, rng)
    return _photograph(c, rng), c.label


class SyntheticScenes(ClassStatistics, Dataset):
    """Procedurally drawn street scenes with CamVid's 11 classes and palette (the default when no data is present).

    Sky, buildings with windows, a perspective road with markings, pavement, trees, fences, poles with signs, cars,
    pedestrians and cyclists, plus occasional unlabelled clutter (``ignore_index``). Instance colours are drawn from
    overlapping ranges, with per-image illumination, shading and noise, so a per-pixel colour lookup cannot solve it:
    a model has to use shape and context, as on CamVid (Brostow et al., PRL 2008).

    Item ``i`` is drawn from ``np.random.default_rng([seed, i])``: the same for every worker and every epoch.
    Items: ``uint8`` (H, W, 3) and ``int64`` (H, W) in {0..10, 255}, or the outputs of ``transforms``.
    """

    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE
    ignore_index = VOID

    def __init__(
        self,
        num_images: int,
        size: tuple[int, int] = (240, 320),
        seed: int = 0,
        transforms: Callable[..., Any] | None = None,
    ) -> None:
        if int(num_images) < 0:
            raise ValueError(f"num_images must be >= 0, got {num_images}")
        if isinstance(size, int):
            size = (size, size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (H, W) with H, W >= 1, got {size}")
        self.num_images, self.size, self.seed = int(num_images), (int(size[0]), int(size[1])), int(seed)
        self.transforms = transforms

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.num_images

    def draw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``uint8`` (H, W, 3) and mask ``uint8`` (H, W) of item ``index``."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} synthetic images")
        return _draw_scene(*self.size, np.random.default_rng([self.seed, index]))

    def load_mask(self, index: int) -> np.ndarray:
        """Mask ``uint8`` (H, W) of item ``index`` (used by the class statistics)."""
        return self.draw(index)[1]

    def _stats_key(self) -> str:
        return f"synthetic:{self.seed}:{self.size[0]}x{self.size[1]}:{self.num_images}"

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if index < 0:
            index += self.num_images
        image, mask = self.draw(index)
        return apply_transforms(self.transforms, image, mask)
