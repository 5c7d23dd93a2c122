"""Training checkpoints: atomic writes, checks on load, and :class:`TrainingState`, what ``fit`` saves and resumes.

Everything saved is plain (tensors, numbers, strings, lists, dicts), so ``torch.load(path, weights_only=True)`` reads
a checkpoint without unpickling arbitrary objects. A checkpoint written by ``fit`` holds the keys ``epoch``,
``model``, ``optimizer``, ``scheduler``, ``scaler``, ``rng``, ``history``, ``num_classes``, ``model_spec`` (what
:func:`seglearn.load_model` rebuilds), ``recipe`` (what must not change when the run is resumed) and ``partial``
(None, or the unfinished epoch of a run its time budget stopped: :class:`seglearn.partial.PartialEpoch`).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import write_file
from .history import History
from .partial import PartialEpoch
from .seeding import capture_rng_state, restore_rng_state, unsaved_generators

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "check_state_dict",
    "renamed_state_dict",
    "check_recipe",
    "check_plain",
    "check_finite",
    "read_torch_file",
    "TrainingState",
    "Checkpointer",
]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` with ``torch.save`` to a temporary file beside ``path``, then ``os.replace`` it into place
    (:func:`seglearn.atomic.atomic_write`): a process killed mid-write leaves the previous file intact, and the next
    write removes the temporary file it left."""
    return write_file(path, lambda f: torch.save(state, f))


def _why_unreadable(path: str | os.PathLike, err: Exception) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    text = str(err)
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):  # torch.save writes a zip (or a pickle)
        kind = "a PNG image" if head.startswith(b"\x89PNG") else "text" if head.isascii() else "another kind of file"
        return f"it is {kind}, not a file torch.save wrote"
    if isinstance(err, EOFError) or "central directory" in text or "truncated" in text.lower():
        return "it is truncated or damaged (a copy or a write that was cut short?)"
    if "Weights only load failed" in text:
        return "it holds Python objects besides tensors and plain data, so it was not written by seglearn"
    return f"it is truncated or damaged ({type(err).__name__})"


def read_torch_file(path: str | os.PathLike, what: str, hint: str, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, or a one-line ValueError saying why ``path`` is no ``what``
    (truncated, another kind of file, pickled objects) and what to do (``hint``) instead of torch's advice to
    unpickle it with ``weights_only=False``."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip, pickle and storage errors of every kind
        raise ValueError(f"{path} is not a {what}: {_why_unreadable(path, err)}; {hint}") from err


def check_finite(state_dict: dict[str, Any], what: str) -> None:
    """Raise a FloatingPointError naming the first tensors of ``state_dict`` holding NaN or infinity (one host
    sync for all of them): nothing non-finite is ever written as a model or a checkpoint."""
    floats = [(k, v) for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
    if not floats:
        return
    flags = torch.stack([torch.isfinite(v).all().to(floats[0][1].device) for _, v in floats]).cpu()
    if bool(flags.all()):
        return
    bad = [k for (k, _), ok in zip(floats, flags.tolist(), strict=True) if not ok]
    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    raise FloatingPointError(f"{what} holds NaN or infinite weights ({', '.join(bad[:3])}{more})")


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_plain(value: Any, what: str) -> None:
    """Raise a ValueError unless ``value`` is str/int/float/bool/None or a list, tuple or dict of them: checkpoints
    are read with ``weights_only=True``, which refuses anything else."""

    def plain(v: Any) -> bool:
        if v is None or isinstance(v, (str, int, float, bool)):
            return True
        if isinstance(v, (list, tuple)):
            return all(plain(x) for x in v)
        return isinstance(v, dict) and all(isinstance(k, str) and plain(x) for k, x in v.items())

    if not plain(value):
        raise ValueError(
            f"{what} {value!r} is not plain data (str, number, bool, None, or lists, tuples and dicts of them): "
            "checkpoints are read with weights_only=True; pass e.g. a name or str(value)"
        )


def _comparable(v: Any) -> Any:
    # a tuple saved and loaded stays a tuple, but a recipe built from JSON or Recipe.as_dict may hold a list
    if isinstance(v, (list, tuple)):
        return [_comparable(x) for x in v]
    if isinstance(v, dict):
        return {k: _comparable(x) for k, x in v.items()}
    return v


def check_recipe(saved: dict[str, Any] | None, given: dict[str, Any], *, folder: str | os.PathLike) -> None:
    """Raise a ValueError naming the keys whose values differ between a checkpoint's recipe and this run's
    (a checkpoint without a recipe, written before recipes were stored, is not checked)."""
    if not saved:
        return
    unset = object()
    changed = [
        f"{key}: {'unset' if there is unset else repr(there)} there, {'unset' if here is unset else repr(here)} here"
        for key in {**saved, **given}
        if _comparable(there := saved.get(key, unset)) != _comparable(here := given.get(key, unset))
    ]
    if changed:
        raise ValueError(
            f"{folder} holds a run of another recipe ({'; '.join(changed)}): pass the same recipe to continue that "
            f"run, or delete the folder {folder} (or pick another checkpoint_dir) to train this recipe from scratch"
        )


def renamed_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """``state`` under ``model``'s key names when only the names moved: before U-Net and FCN-VGG were backbone +
    head, their tensors had the same order and shapes, without the ``backbone.``/``head.`` prefixes."""
    expected = _unwrap(model).state_dict()
    if state.keys() == expected.keys() or len(state) != len(expected):
        return state
    pairs = list(zip(state.items(), expected.items(), strict=True))
    if all(
        (new == old or new.endswith("." + old)) and tuple(v.shape) == tuple(e.shape) for (old, v), (new, e) in pairs
    ):
        return {new: v for (_, v), (new, _) in pairs}
    return state


def check_state_dict(
    state_dict: dict[str, torch.Tensor], model: nn.Module, *, source: str = "checkpoint", saved_spec: Any = None
) -> None:
    """Raise a ValueError naming the missing/unexpected keys and the first shape mismatches between a state dict
    and ``model``; ``saved_spec`` (the model spec stored with the checkpoint) is quoted to say where it came from.
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
    origin = f" (it was saved from model spec {saved_spec!r})" if saved_spec else ""
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
    recipe: dict[str, Any] | None = None,
    model_spec: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint (``weights_only=True``), check it fits ``model`` and load the given objects' states.

    Raises ValueError, before anything is modified, when the stored ``recipe`` or ``model_spec`` differs from the
    given one (naming the differing keys) or when state-dict keys or shapes differ. Returns the whole checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train with checkpoint_dir= first or check the path")
    hint = f"delete {path} (or pick another checkpoint_dir) to train from scratch"
    state = read_torch_file(path, "training checkpoint", hint, map_location)
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"{path} is not a seglearn training checkpoint (no 'model' entry)")
    if recipe is not None:
        check_recipe(state.get("recipe"), recipe, folder=path.parent)
    saved_spec = state.get("model_spec")
    if model_spec is not None and saved_spec and _comparable(saved_spec) != _comparable(model_spec):
        raise ValueError(
            f"{path} was written for model {saved_spec!r}, not {model_spec!r}: build the model the "
            f"checkpoint came from, or delete {path.parent} (or pick another checkpoint_dir) to train from scratch"
        )
    if model is not None:
        weights = renamed_state_dict(state["model"], model)
        # model_config: what checkpoints written before model_spec held instead
        check_state_dict(weights, model, source=str(path), saved_spec=saved_spec or state.get("model_config"))
        _unwrap(model).load_state_dict(weights)
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and state.get(key) is not None:
            obj.load_state_dict(state[key])
    return state


@dataclass
class TrainingState:
    """Everything a run needs to continue exactly after ``epoch`` completed epochs (and ``partial``'s steps of the
    next one, when a time budget stopped it mid-epoch).

    ``loader`` is the train loader: its torch generators and its dataset's random transforms are part of the state.
    ``model_spec`` says what to rebuild (``{"model", "num_classes", "model_kwargs"}`` for ``create_model``),
    ``recipe`` what must not change on resume.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    loader: Any
    history: History = field(default_factory=History)
    epoch: int = 0
    num_classes: int | None = None
    model_spec: dict[str, Any] | None = None
    recipe: dict[str, Any] | None = None  # None: resume without comparing recipes
    partial: PartialEpoch | None = None

    def __post_init__(self) -> None:
        check_plain(self.model_spec, "model_spec")  # refused now, not when the first checkpoint is read back
        check_plain(self.recipe, "recipe")

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint: plain data only."""
        return {
            "epoch": self.epoch,
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng_state(self.loader),
            "history": self.history.to_dict(),
            "num_classes": self.num_classes,
            "model_spec": self.model_spec,
            "recipe": dict(self.recipe or {}),
            "partial": self.partial.to_dict() if self.partial is not None else None,
        }

    def load(self, path: str | os.PathLike) -> None:
        """Continue from the checkpoint at ``path``: check recipe, spec and shapes first, then load every state."""
        objects = (self.model, self.optimizer, self.scheduler, self.scaler)
        ckpt = load_checkpoint(path, *objects, recipe=self.recipe, model_spec=self.model_spec)
        try:  # written before seglearn checked weights before saving: continuing would train on garbage
            check_finite(ckpt["model"], str(path))
        except FloatingPointError as err:
            raise ValueError(f"{err}: it cannot be resumed; delete it (or pick another checkpoint_dir)") from None
        self.history, self.epoch = History.from_dict(ckpt["history"]), int(ckpt["epoch"])
        self.num_classes = self.num_classes or ckpt.get("num_classes")
        self.partial = PartialEpoch.from_dict(ckpt.get("partial"))
        restore_rng_state(ckpt["rng"], self.loader)


def _warn_unsaved_generators(loader: Any) -> None:
    unsaved = unsaved_generators(getattr(loader, "dataset", None))
    if unsaved:
        warnings.warn(
            f"resume from these checkpoints will not be exact: {', '.join(unsaved)} is a random generator of the "
            "train dataset's own, which a checkpoint does not hold; draw from albumentations transforms (under "
            "`transforms`) or from torch/numpy/random's global generators, which fit saves and restores",
            stacklevel=4,
        )


class Checkpointer:
    """``last.pt`` after every epoch and ``best.pt`` at the best validation in one folder; ``write=False`` (every
    rank but 0 under torch.distributed) reads but never writes."""

    def __init__(self, folder: str | os.PathLike, *, write: bool = True) -> None:
        self.folder, self.write = Path(folder), write
        self.last, self.best = self.folder / "last.pt", self.folder / "best.pt"
        self.good_epoch: int | None = None  # the epoch last.pt holds, once this run has written or read it
        self._checked_loader = False

    def last_good(self) -> str:
        """Where this run's last good weights are, for an error message."""
        if self.good_epoch is None:
            return f"no checkpoint of this run holds good weights yet ({self.last} was not written by it)"
        return f"{self.last} holds epoch {self.good_epoch} with finite weights (checked when it was written)"

    def restore(self, state: TrainingState) -> bool:
        """Load ``last.pt`` into ``state``; False (with a warning) when there is none: the run starts fresh."""
        if not self.last.is_file():
            warnings.warn(f"resume=True but {self.last} does not exist: starting from scratch", stacklevel=3)
            return False
        state.load(self.last)
        self.good_epoch = state.epoch
        return True

    def save(self, state: TrainingState, *, best: bool = False) -> None:
        """Write ``last.pt`` (and ``best.pt`` when ``best``), each atomically."""
        if not self.write:
            return
        if not self._checked_loader:
            self._checked_loader = True
            _warn_unsaved_generators(state.loader)
        ckpt = state.state_dict()
        check_finite(ckpt["model"], f"the model after epoch {state.epoch}")  # fit checks first; this is the guard
        if best:
            save_checkpoint(ckpt, self.best)
        save_checkpoint(ckpt, self.last)
        self.good_epoch = state.epoch
