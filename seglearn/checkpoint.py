"""Training checkpoints: atomic writes, model/shape checks on load, and the RNG state needed to resume exactly.

Everything saved is plain (tensors, numbers, strings, lists, dicts), so ``torch.load(path, weights_only=True)`` reads
a checkpoint without unpickling arbitrary objects.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "check_state_dict",
    "capture_rng_state",
    "restore_rng_state",
    "find_random_transforms",
    "seed_everything",
    "seed_worker_transforms",
    "training_state",
]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file beside ``path``, then ``os.replace`` it into place.

    A process killed mid-write leaves the previous file intact (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def training_state(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    loader: Any,
    history: dict[str, Any],
    num_classes: int | None = None,
    model_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to continue training after ``epoch`` (completed epochs) exactly, as plain data."""
    return {
        "epoch": epoch,
        "model": _unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng_state(loader),
        "history": history,
        "num_classes": num_classes,
        "model_config": dict(model_config or {}),
    }


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, *, source: str = "checkpoint", saved_config: Any = None
) -> None:
    """Raise a ValueError naming the missing/unexpected keys and the first shape mismatches between a state dict
    and ``model``; ``saved_config`` (the model config stored with the checkpoint) is quoted to say where it came from.
    """
    expected = _unwrap(model).state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: {tuple(state_dict[k].shape)} in the checkpoint vs {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{title}: {', '.join(items[:3])}{more}")
    origin = f" (it was saved from model config {saved_config!r})" if saved_config else ""
    raise ValueError(
        f"{source} does not fit this {type(_unwrap(model)).__name__}{origin}: {'; '.join(problems)}. "
        "Build the same model (name, num_classes, backbone, aux_loss) as the run that wrote it, "
        "or point to that run's checkpoint."
    )


def load_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: Any = None,
    *,
    model_config: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``), check it fits ``model`` and load the given objects' states.

    Raises ValueError when the stored ``model_config`` differs from the given one, or when keys or shapes differ
    (naming them), before anything is modified. Returns the whole checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train with checkpoint_dir= first or check the path")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a seglearn training checkpoint (no 'model' entry)")
    saved_config = state.get("model_config")
    if model_config is not None and saved_config and dict(saved_config) != dict(model_config):
        raise ValueError(
            f"{path} was written for model config {saved_config!r}, not {model_config!r}: "
            "use a fresh checkpoint_dir or build the model the checkpoint came from"
        )
    if model is not None:
        check_state_dict(state["model"], model, source=str(path), saved_config=saved_config)
        _unwrap(model).load_state_dict(state["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and state.get(key) is not None:
            obj.load_state_dict(state[key])
    return state


def find_random_transforms(dataset: Any, _depth: int = 0) -> Iterator[Any]:
    """Objects with their own random generators (albumentations ``Compose``) reachable from a dataset through
    ``transforms``/``transform`` and wrapper datasets (``.dataset``, ``.datasets``)."""
    if _depth > 4 or dataset is None:
        return
    for name in ("transforms", "transform"):
        t = getattr(dataset, name, None)
        if t is not None and hasattr(t, "set_random_seed") and hasattr(t, "random_generator"):
            yield t
    inner = getattr(dataset, "dataset", None)
    if inner is not None and inner is not dataset:
        yield from find_random_transforms(inner, _depth + 1)
    for d in getattr(dataset, "datasets", None) or ():
        yield from find_random_transforms(d, _depth + 1)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (CPU and every GPU)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker_transforms(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: reseed the dataset's albumentations generators from the worker's torch seed.

    Each worker gets a copy of those generators; without this every worker (and, without persistent workers,
    every epoch) would draw the same augmentations. The torch seed is ``base_seed + worker_id``, reproducible.
    """
    info = torch.utils.data.get_worker_info()
    for t in find_random_transforms(info.dataset if info is not None else None):
        t.set_random_seed(torch.initial_seed() % 2**32)


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
