"""The one place loaders are made: :func:`make_loader` (CLI, demo, notebooks) and :func:`job_datasets` (the CLI's
datasets for a list of splits, synthetic scenes sized from the crop)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from seglearn import distributed as D

from .base import worker_context
from .collate import eval_collate
from .transforms import eval_transforms, train_transforms

SYNTHETIC_SIZE = (96, 128)  # synthetic scenes when neither an image size nor a crop is given


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    workers: int = 0,
    seed: int = 0,
    pin_memory: bool | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset`` yielding (images (B, 3, H, W), masks (B, H, W)) batches.

    ``train=True`` shuffles with a generator seeded by ``seed`` (the same order for the same seed; under torchrun a
    distributed sampler gives each rank its shard) and drops a last short batch when there is more than one batch,
    so no batch of one reaches BatchNorm. Evaluation keeps the order, and a batch of images of different sizes
    (VOC) comes as lists (:func:`~seglearn.data.collate.eval_collate`, which :func:`seglearn.evaluate` scores size by
    size, so any batch size gives the same scores); under torchrun each rank scores its own shard, every image once.
    ``pin_memory`` defaults to whether CUDA is available; preloaded datasets get forked workers (they
    share the decoded arrays instead of pickling a copy into each).
    """
    sampler = D.train_sampler(dataset, seed=seed) if train else D.eval_sampler(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,  # type: ignore[arg-type]
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed) if train else None,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        multiprocessing_context=worker_context(dataset, workers),
        collate_fn=None if train else eval_collate,
    )


def job_datasets(
    name: str,
    splits: Sequence[str],
    *,
    root: str | Path | None = None,
    crop: tuple[int, int] | None = None,
    scale: tuple[float, float] = (0.5, 2.0),
    num_images: int = 64,
    image_size: tuple[int, int] | None = None,
    preload: bool = False,
    rotate: float = 0.0,
) -> list[Dataset]:
    """Dataset ``name`` for each of ``splits``: the first with the training preset (random rescale by ``scale``,
    rotation by up to ``rotate`` degrees, crop to ``crop``) when ``crop`` is given, the others (or all, without a
    crop) with the eval preset.

    Synthetic: ``num_images`` scenes for train and a quarter of that (at least 4) for the other splits, of size
    ``image_size``, else the crop, else 96x128. ``preload`` decodes every camvid/voc image once into memory.
    Raises what the dataset raises (OSError, ValueError, RuntimeError) for a missing folder or a bad file.
    """
    from . import build_dataset  # the package's own module: imported here because it imports this one

    out = []
    for i, split in enumerate(splits):
        tf = train_transforms(crop, scale=scale, rotate=rotate) if crop is not None and i == 0 else eval_transforms()
        kw: dict = {"preload": preload}  # synthetic ignores it
        if name == "synthetic":
            kw["num_images"] = num_images if split == "train" else max(4, num_images // 4)
            kw["size"] = tuple(image_size or crop or SYNTHETIC_SIZE)
        out.append(build_dataset(name, split, root=root, transforms=tf, **kw))
    return out
