"""Data-loading throughput of the CamVid training pipeline per number of DataLoader workers (images/s), read from
disk and preloaded into memory.

The pipeline is what training uses: ``seglearn.data.CamVid(split="train")`` with
``seglearn.data.train_transforms(crop)`` (random scale 0.5-2, crop 360x480 with ignore padding, flip, normalize),
batched by a ``torch.utils.data.DataLoader`` (shuffled, pinned on CUDA hosts), once decoding each PNG on every read
("from disk") and once from ``CamVid(..., preload=True)`` (decoded once in the main process, shared with forked
workers: ``seglearn train --preload``), so the ratio column is what preloading buys per worker count. Real CamVid
comes from ``seglearn.data.locate_dataset("camvid")`` (``$SEGLEARN_DATA``, ``data/camvid``, or
``../shared/data/camvid``) or ``--root``; without it, SyntheticScenes images (drawn on the fly, a different cost,
nothing to preload) stand in and the output says so.

For each worker count the first ``--warmup`` batches (worker start-up, first reads) are not timed, then
``--batches`` batches are (workers prefetch ``2 x workers`` batches during the warm-up, so keep ``--batches`` well
above that). With 0 workers the main process's torch threads run the transforms' tensor ops; ``--threads 1``
shows what they cost there on a busy CPU. Compare images/s with the training throughput of
``benchmarks/train_throughput.py``: the smallest worker count whose images/s exceeds the GPU's keeps it fed.

    python benchmarks/data_throughput.py                        # workers 0, 1, 2
    python benchmarks/data_throughput.py --max-workers 8 --batches 40
    python benchmarks/data_throughput.py --no-preload           # from disk only
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from seglearn.data import CamVid, SyntheticScenes, locate_dataset, train_transforms

# Both columns fork their workers (as `seglearn train --preload` does), so they differ only in where images come from.
CONTEXT = "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def training_dataset(
    crop: tuple[int, int], root: str | Path | None = None, synthetic_images: int = 64
) -> tuple[Dataset, str]:
    """The CamVid train split with the training transforms, else SyntheticScenes; returns (dataset, source)."""
    transforms = train_transforms(crop)
    path = Path(root) if root is not None else locate_dataset("camvid")
    if path is not None:
        return CamVid(path, split="train", transforms=transforms), f"CamVid train ({path})"
    size = (360, 480)
    return SyntheticScenes(synthetic_images, size=size, transforms=transforms), f"SyntheticScenes {size} (no CamVid)"


def loader_throughput(dataset: Dataset, workers: int, batch_size: int, batches: int, warmup: int) -> dict[str, Any]:
    """images/s of ``batches`` batches from a fresh DataLoader with ``workers`` workers, after ``warmup`` batches."""
    needed = (batches + warmup) * batch_size
    if len(dataset) < needed:  # cycle the epoch rather than time a partial one
        dataset = torch.utils.data.ConcatDataset([dataset] * -(-needed // len(dataset)))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
        multiprocessing_context=CONTEXT if workers > 0 else None,
    )
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        images, _ = next(it)
    seconds = time.perf_counter() - t0
    del it
    n = batches * batch_size
    return {
        "workers": workers,
        "images": n,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "startup_s": t0 - start,
        "shape": tuple(images.shape),
    }


def table(records: list[dict[str, Any]]) -> str:
    lines = [
        "| workers | images/s from disk | images/s preloaded | ratio | s per batch from disk | start-up + warm-up s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        per_batch = r["seconds"] / (r["images"] / r["shape"][0])
        pre = r.get("preloaded_images_per_s")
        pre_s, ratio = ("-", "-") if pre is None else (f"{pre:.1f}", f"{r['ratio']:.2f}x")
        lines.append(
            f"| {r['workers']} | {r['images_per_s']:.1f} | {pre_s} | {ratio} | {per_batch:.3f} | {r['startup_s']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-workers", type=int, default=2, help="measure 0, 1, ..., this many workers")
    p.add_argument("--crop", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    p.add_argument("--root", default=None, help="CamVid folder (default: seglearn.data.locate_dataset)")
    p.add_argument("--synthetic", action="store_true", help="use SyntheticScenes even when CamVid is present")
    p.add_argument("--no-preload", action="store_true", help="time reading from disk only (no preloaded column)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    args = p.parse_args(argv)
    if args.max_workers < 0 or args.batch < 1 or args.batches < 1 or args.warmup < 0 or min(args.crop) < 1:
        p.error("need --max-workers >= 0, --batch >= 1, --batches >= 1, --warmup >= 0 and a positive --crop")
    return args


def main(argv: list[str] | None = None, out: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Measure each worker count from disk and preloaded, print a markdown table through ``out``; returns one record
    per worker count (``images_per_s`` from disk; ``preloaded_images_per_s`` and ``ratio``, None without preload)."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    crop = tuple(args.crop)
    if args.synthetic:
        dataset, source = SyntheticScenes(64, size=(360, 480), transforms=train_transforms(crop)), "SyntheticScenes"
    else:
        dataset, source = training_dataset(crop, args.root)
    out(
        f"data: {source}, {len(dataset)} images; train_transforms(crop={crop}), batch {args.batch}, "
        f"{args.batches} timed batches after {args.warmup}; {torch.get_num_threads()} torch threads"
    )
    preloaded, preload = None, {"preload_s": None, "preload_mib": None}
    if not args.no_preload and hasattr(dataset, "preload"):
        preloaded = training_dataset(crop, args.root)[0]
        t0 = time.perf_counter()
        preloaded.preload()
        preload = {"preload_s": time.perf_counter() - t0, "preload_mib": preloaded.preloaded_bytes / 2**20}
        out(
            f"preload: {len(preloaded)} images decoded once in {preload['preload_s']:.2f} s, "
            f"{preload['preload_mib']:.0f} MiB in memory"
        )
    elif not args.no_preload:
        out("preload: not applicable (SyntheticScenes draws each scene on the fly)")
    records = []
    for workers in range(args.max_workers + 1):
        record = loader_throughput(dataset, workers, args.batch, args.batches, args.warmup)
        record.update(preloaded_images_per_s=None, ratio=None, **preload)
        if preloaded is not None:
            fast = loader_throughput(preloaded, workers, args.batch, args.batches, args.warmup)
            record.update(
                preloaded_images_per_s=fast["images_per_s"], ratio=fast["images_per_s"] / record["images_per_s"]
            )
        records.append({"source": source, "crop": crop, "batch": args.batch, **record})
    out(table(records))
    return records


if __name__ == "__main__":
    main()
