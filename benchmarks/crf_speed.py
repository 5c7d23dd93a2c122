"""Dense CRF time per image against the number of classes and mean-field iterations, and the batch speed-up.

    python benchmarks/crf_speed.py                      # a CamVid val image when ../shared/data has one
    python benchmarks/crf_speed.py --size 360 480 --classes 2 11 21 --iterations 5 10 --workers 2 --batch 8

The image is a real CamVid validation image when the shared data folder is present (``SEGLEARN_SHARED_DATA`` or
``../shared/data``), else a synthetic one of the same size. Probabilities are a softmax of smooth random logits.
Times are medians over ``--repeats`` runs; the batch line compares ``crf_batch(workers=1)`` with
``crf_batch(workers=N)`` on ``--batch`` images (process start-up included) and checks that they agree exactly.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np

from seglearn.crf import DenseCRF, crf_batch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def load_image(size: tuple[int, int]) -> tuple[np.ndarray, str]:
    """A (H, W, 3) uint8 image: CamVid val when available (resized to ``size``), else a synthetic scene."""
    from PIL import Image

    files = sorted((SHARED_DATA / "camvid" / "val").glob("*.png"))
    if files:
        image = Image.open(files[0]).convert("RGB").resize(size[::-1], Image.BILINEAR)
        return np.asarray(image), f"CamVid {files[0].name}"
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: size[0], : size[1]]
    image = np.stack([xx * 255 // size[1], yy * 255 // size[0], (xx // 40 + yy // 40) % 2 * 200], axis=-1)
    image = np.clip(image + rng.integers(-10, 11, image.shape), 0, 255).astype(np.uint8)
    return image, "synthetic"


def random_probs(num_classes: int, size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Softmax of random logits drawn at 1/8 resolution and up-sampled (blocky, like a stride-8 network's)."""
    rng = np.random.default_rng(seed)
    h, w = size
    coarse = rng.normal(scale=2.0, size=(num_classes, -(-h // 8), -(-w // 8)))
    logits = coarse.repeat(8, axis=1).repeat(8, axis=2)[:, :h, :w]
    e = np.exp(logits - logits.max(0))
    return (e / e.sum(0)).astype(np.float32)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--classes", type=int, nargs="+", default=(2, 11, 21))
    parser.add_argument("--iterations", type=int, nargs="+", default=(5, 10))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    size = tuple(args.size)
    image, source = load_image(size)

    print(f"image: {source}, {size[0]}x{size[1]}; DeepLab-LargeFOV parameters; median of {args.repeats}")
    print(f"{'classes':>7} " + " ".join(f"{f'{it} iter s':>10}" for it in args.iterations))
    for c in args.classes:
        probs = random_probs(c, size)
        row = [
            median_time(lambda it=it, p=probs: DenseCRF(iterations=it)(image, p), args.repeats)
            for it in args.iterations
        ]
        print(f"{c:>7} " + " ".join(f"{t:10.3f}" for t in row))

    c = args.classes[-1]
    images = [image] * args.batch
    probs = [random_probs(c, size, seed=s) for s in range(args.batch)]
    start = time.perf_counter()
    sequential = crf_batch(images, probs, workers=1)
    t1 = time.perf_counter() - start
    start = time.perf_counter()
    parallel = crf_batch(images, probs, workers=args.workers)
    tn = time.perf_counter() - start
    same = all(np.array_equal(a, b) for a, b in zip(sequential, parallel, strict=True))
    print(
        f"batch of {args.batch} ({c} classes, 10 iter): 1 worker {t1:.2f} s, {args.workers} workers {tn:.2f} s, "
        f"speed-up {t1 / tn:.2f}x, identical: {same}  (cpu_count={os.cpu_count()})"
    )


if __name__ == "__main__":
    main()
