"""Seeding: every generator an epoch draws from is captured and restored; workers and epochs get their own draws."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from seglearn.checkpoint import save_checkpoint
from seglearn.seeding import (
    capture_rng_state,
    find_random_transforms,
    restore_rng_state,
    seed_everything,
    seed_worker_transforms,
    use_worker_seeding,
)


def _draws(loader, compose) -> tuple:
    order = [int(batch[0]) for batch in loader]
    image = np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    augmented = [compose(image=image)["image"].tolist() for _ in range(4)]
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], order, augmented


def test_rng_capture_restores_every_generator_an_epoch_uses(tmp_path):
    import albumentations as A

    class Augmented(TensorDataset):
        transforms = A.Compose([A.HorizontalFlip(p=0.5), A.RandomBrightnessContrast(p=0.5)])

    data = Augmented(torch.arange(16))
    loader = DataLoader(data, batch_size=1, shuffle=True, generator=torch.Generator().manual_seed(1))
    save_checkpoint({"rng": capture_rng_state(loader)}, tmp_path / "rng.pt")
    first = _draws(loader, data.transforms)
    assert _draws(loader, data.transforms) != first  # every generator moved on
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], loader)
    assert _draws(loader, data.transforms) == first
    other = DataLoader(data, batch_size=1, shuffle=True)  # no generator of its own: cannot take this state
    with pytest.raises(ValueError, match="train loader differs"):
        restore_rng_state(capture_rng_state(loader), other)


def test_worker_seeding_gives_each_worker_and_epoch_its_own_reproducible_augmentations():
    import albumentations as A

    class Draws(torch.utils.data.Dataset):
        transforms = A.Compose([A.HorizontalFlip(p=0.5)])

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.tensor(self.transforms.transforms[0].random_generator.random())

    def epochs(seed: int) -> list[list[float]]:
        loader = DataLoader(Draws(), batch_size=2, num_workers=2, worker_init_fn=seed_worker_transforms,
                            generator=torch.Generator().manual_seed(seed))  # fmt: skip
        return [torch.cat(list(loader)).tolist() for _ in range(2)]

    first = epochs(0)
    assert len({round(x, 12) for e in first for x in e}) == 8  # no worker or epoch repeats another's draws
    assert epochs(0) == first and epochs(1) != first


def test_seed_everything_seeds_the_global_generators_and_the_datasets_transforms():
    import albumentations as A

    class Augmented(TensorDataset):
        transforms = A.Compose([A.HorizontalFlip(p=0.5)])

    data = Augmented(torch.arange(4))

    def draws():
        flips = data.transforms.random_generator.random()
        return torch.rand(2).tolist(), np.random.rand(2).tolist(), random.random(), flips

    seed_everything(3, data)
    first = draws()
    seed_everything(3, data)
    assert draws() == first
    seed_everything(4, data)
    assert draws() != first
    assert list(find_random_transforms(torch.utils.data.Subset(data, [0, 1]))) == [data.transforms]


def test_worker_seeding_is_installed_only_where_it_is_needed():
    import albumentations as A

    class Augmented(TensorDataset):
        transforms = A.Compose([A.HorizontalFlip(p=0.5)])

    augmented, plain = Augmented(torch.arange(4)), TensorDataset(torch.arange(4))
    loader = DataLoader(augmented, num_workers=2)
    use_worker_seeding(loader)
    assert loader.worker_init_fn is seed_worker_transforms
    for other in (DataLoader(augmented), DataLoader(plain, num_workers=2), DataLoader(augmented, num_workers=2,
                  worker_init_fn=print)):  # fmt: skip
        before = other.worker_init_fn
        use_worker_seeding(other)
        assert other.worker_init_fn is before
