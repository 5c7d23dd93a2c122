"""Seeding and the random state of a training run: every generator an epoch draws from, captured and restored.

An epoch draws from torch's, numpy's and Python's global generators, from the DataLoader's own torch generators
(shuffle order, worker seeds) and from albumentations' per-transform generators. :func:`capture_rng_state` takes
all of them as plain data (a checkpoint reads back with ``weights_only=True``); :func:`restore_rng_state` puts them
back, so a resumed run draws what an uninterrupted one would have.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "seed_everything",
    "seed_worker_transforms",
    "use_worker_seeding",
    "find_random_transforms",
    "unsaved_generators",
    "capture_rng_state",
    "restore_rng_state",
]


def seed_everything(seed: int, dataset: Any = None) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and every GPU), and with ``dataset`` the
    albumentations generators of its transforms (they do not follow the global seeds)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    for t in find_random_transforms(dataset):
        t.set_random_seed(seed)


def _held_datasets(dataset: Any) -> Iterator[Any]:
    """The datasets ``dataset`` holds in its attributes, whatever they are named (``Subset.dataset``,
    ``ConcatDataset.datasets``, a user's ``self.base``), alone or in a list, tuple or dict."""
    for value in (vars(dataset) if hasattr(dataset, "__dict__") else {}).values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else (value,)
        if isinstance(value, (list, tuple, dict)) and len(items) > 64:  # a data list, not a list of datasets
            continue
        yield from (d for d in items if isinstance(d, Dataset) and d is not dataset)


def find_random_transforms(dataset: Any, _depth: int = 0) -> Iterator[Any]:
    """Objects with their own random generators (albumentations ``Compose``) reachable from a dataset through
    ``transforms``/``transform`` and the datasets it wraps, under any attribute name (see :func:`_held_datasets`),
    so that a resumed run restores them whatever wraps the dataset."""
    if _depth > 4 or dataset is None:
        return
    for name in ("transforms", "transform"):
        t = getattr(dataset, name, None)
        if t is not None and hasattr(t, "set_random_seed") and hasattr(t, "random_generator"):
            yield t
    for inner in _held_datasets(dataset):
        yield from find_random_transforms(inner, _depth + 1)


_GENERATORS = (np.random.Generator, np.random.RandomState, random.Random, torch.Generator)


def unsaved_generators(dataset: Any, _depth: int = 0, _path: str = "dataset") -> list[str]:
    """Where the train dataset (or one it wraps) keeps a random generator of its own that a checkpoint does not
    hold (``"dataset.base.rng"``): a resumed run would draw other numbers from it than an uninterrupted one."""
    if _depth > 4 or dataset is None or not hasattr(dataset, "__dict__"):
        return []
    found = [f"{_path}.{k}" for k, v in vars(dataset).items() if isinstance(v, _GENERATORS)]
    for name, value in vars(dataset).items():
        if isinstance(value, Dataset) and value is not dataset:
            found += unsaved_generators(value, _depth + 1, f"{_path}.{name}")
    return found


def seed_worker_transforms(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the dataset's albumentations generators from the worker's torch seed.

    Each worker gets a copy of those generators; without this every worker (and, without persistent workers,
    every epoch) would draw the same augmentations. The torch seed is ``base_seed + worker_id``, reproducible.
    """
    info = torch.utils.data.get_worker_info()
    for t in find_random_transforms(info.dataset if info is not None else None):
        t.set_random_seed(torch.initial_seed() % 2**32)


def use_worker_seeding(loader: Any) -> None:
    """Give a multi-worker DataLoader :func:`seed_worker_transforms` as its ``worker_init_fn`` when its dataset has
    random transforms and it has no ``worker_init_fn`` of its own."""
    if getattr(loader, "num_workers", 0) > 0 and loader.worker_init_fn is None:
        if any(True for _ in find_random_transforms(loader.dataset)):
            loader.worker_init_fn = seed_worker_transforms


def _random_states(transform: Any) -> Iterator[Any]:
    """``transform`` and every transform nested in it that owns a random generator (each albumentations transform
    has its own pair of numpy and Python generators)."""
    if hasattr(transform, "random_generator") and hasattr(transform, "py_random"):
        yield transform
    for child in getattr(transform, "transforms", None) or ():
        yield from _random_states(child)


def _transform_rngs(loader: Any) -> list[Any]:
    found: list[Any] = []
    for t in find_random_transforms(getattr(loader, "dataset", None)):
        found.extend(x for x in _random_states(t) if all(x is not y for y in found))
    return found


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The distinct torch generators a DataLoader draws its shuffle and worker seeds from."""
    if loader is None:
        return []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    found: list[torch.Generator] = []
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def capture_rng_state(loader: Any = None) -> dict[str, Any]:
    """The state of every random generator a training epoch consumes: torch (CPU and CUDA), numpy's and Python's
    global generators, the loader's torch generators and the dataset's albumentations generators."""
    keys, pos, has_gauss, cached = np.random.get_state()[1:]
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss, "gauss": cached},
        "python": [version, list(internal), gauss],
        "loader": [g.get_state() for g in _loader_generators(loader)],
        "transforms": [],
    }
    for t in _transform_rngs(loader):
        v, py_internal, py_gauss = t.py_random.getstate()
        state["transforms"].append(
            {"numpy": t.random_generator.bit_generator.state, "python": [v, list(py_internal), py_gauss]}
        )
    return state


def restore_rng_state(state: dict[str, Any], loader: Any = None) -> None:
    """Inverse of :func:`capture_rng_state` (the same loader, or one built the same way)."""
    generators, transforms = _loader_generators(loader), _transform_rngs(loader)
    if len(generators) != len(state.get("loader", [])) or len(transforms) != len(state.get("transforms", [])):
        raise ValueError(
            "the train loader differs from the one the checkpoint was written with (its generators or random "
            "transforms); build it the same way to resume, or start a fresh checkpoint_dir"
        )
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    for g, g_state in zip(generators, state.get("loader", []), strict=True):
        g.set_state(g_state)
    for t, t_state in zip(transforms, state.get("transforms", []), strict=True):
        t.random_generator.bit_generator.state = t_state["numpy"]
        v, py_internal, py_gauss = t_state["python"]
        t.py_random.setstate((v, tuple(py_internal), py_gauss))
