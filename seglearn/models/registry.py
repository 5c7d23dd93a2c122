"""The model registry: what each model supports and how it is trained, declared once where the model is defined.

``@register_model("unet", paper=..., quick=Recipe(...), full=(Recipe(...),))`` on a builder ``fn(num_classes, **kw)``
records a :class:`ModelInfo`. :func:`create_model` checks every option against it before building, so an unsupported
option is the same ``ValueError`` for every model; chapter 10, the CLI and the benchmarks read rosters and recipes
from here (:func:`comparison_roster`, :func:`full_recipes`, :func:`model_info`).
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from seglearn.options import parse_schedule

# Images in each training split a recipe may name (CamVid: the SegNet tutorial's; VOC 2012; trainaug: VOC + SBD).
TRAIN_IMAGES = {("camvid", "train"): 367, ("voc", "train"): 1464, ("voc", "trainaug"): 10582}

# create_model's own keywords: a builder takes each one only if the model declares the capability.
CAPABILITY_KEYWORDS = ("backbone", "pretrained_backbone", "aux_loss")


@dataclass(frozen=True)
class Recipe:
    """One training recipe, in plain values: the create_model keywords and the training options of one run."""

    epochs: int
    lr: float
    optimizer: str = "sgd"  # "sgd" | "adamw"
    weight_decay: float = 1e-4
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)  # create_model keywords (backbone=..., ...)
    aux_loss: bool = False
    class_weights: str | None = None  # None | "median" (median-frequency balancing) | "enet" (1 / ln(1.02 + p))
    crop: tuple[int, int] = (360, 480)
    batch_size: int = 8
    row: str | None = None  # FULL recipes: the results-table row ("fcn-r50"); None for QUICK
    note: str = ""
    dataset: str = "camvid"  # "camvid" | "voc"
    split: str = "train"  # the training split ("trainaug": VOC + SBD); scored on "val"
    schedule: str = "poly"  # "poly" | "step:N" | "fixed" (seglearn.options.parse_schedule)
    lr_mult: Mapping[str, float] = field(default_factory=dict)  # parameter-name prefix -> rate multiplier
    rotate: float = 0.0  # random rotation by up to this many degrees (EncNet: 10)
    pretrained_backbone: bool = False  # start from ImageNet weights (the papers' init where they had one)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"Recipe optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.class_weights not in (None, "median", "enet"):
            raise ValueError(f"Recipe class_weights must be None, 'median' or 'enet', got {self.class_weights!r}")
        if self.dataset not in ("camvid", "voc"):
            raise ValueError(f"Recipe dataset must be 'camvid' or 'voc', got {self.dataset!r}")
        parse_schedule(self.schedule)
        # A private copy: a recipe must not change when the dict it was built from does.
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        object.__setattr__(self, "lr_mult", dict(self.lr_mult))
        object.__setattr__(self, "crop", tuple(self.crop))

    @property
    def iterations(self) -> int:
        """Training iterations: epochs x full batches of the training split (:data:`TRAIN_IMAGES`)."""
        return self.epochs * max(1, TRAIN_IMAGES[(self.dataset, self.split)] // self.batch_size)

    def as_dict(self) -> dict[str, Any]:
        """The recipe as JSON-ready plain values (for run records and resume checks)."""
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "weight_decay": self.weight_decay,
            "model_kwargs": dict(self.model_kwargs),
            "aux_loss": self.aux_loss,
            "class_weights": self.class_weights,
            "crop": list(self.crop),
            "batch_size": self.batch_size,
            "row": self.row,
            "note": self.note,
            "dataset": self.dataset,
            "split": self.split,
            "schedule": self.schedule,
            "lr_mult": dict(self.lr_mult),
            "rotate": self.rotate,
            "pretrained_backbone": self.pretrained_backbone,
        }


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is and supports (see :func:`register_model` for the fields)."""

    name: str
    builder: Callable[..., nn.Module]
    paper: str
    url: str
    chapter: str | None
    aux_loss: bool
    pretrained_backbone: bool
    backbones: tuple[str, ...]
    quick: Recipe | None
    full: tuple[Recipe, ...]
    compare: bool


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str,
    url: str = "",
    chapter: str | None = None,
    aux_loss: bool = False,
    pretrained_backbone: bool = False,
    backbones: tuple[str, ...] = (),
    quick: Recipe | None = None,
    full: tuple[Recipe, ...] = (),
    compare: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(num_classes, **kw) -> nn.Module`` under ``name``.

    Args:
        paper: the reference, e.g. ``'Long, Shelhamer, Darrell, "Fully Convolutional Networks ...", CVPR 2015'``.
        url: its arXiv link ("" when there is none).
        chapter: the notebook stem that teaches the model (``"01_fcn"``), or None.
        aux_loss: the model has an auxiliary head (the builder then takes ``aux_loss``).
        pretrained_backbone: ImageNet weights exist for its backbone (the builder takes ``pretrained_backbone``).
        backbones: accepted ``backbone=`` names, the default first (the builder takes ``backbone``); ``()``: the
            model has one fixed encoder and ``backbone=`` is refused.
        quick: the small variant QUICK mode trains (``model_kwargs``) and its QUICK recipe.
        full: the FULL recipes, one per results-table row; ``full[0]`` is the chapter's.
        compare: the model is in the comparison roster (chapter 10, benchmarks).
    """
    key = name.lower()

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if key in _REGISTRY:
            raise ValueError(f"model name {key!r} is registered twice")
        params = _keywords(fn)
        declared = {"backbone": bool(backbones), "pretrained_backbone": pretrained_backbone, "aux_loss": aux_loss}
        for keyword, supported in declared.items():
            if supported and params is not None and keyword not in params:
                raise TypeError(f"{key}: the builder {fn.__name__} declares {keyword} but does not take it")
        _REGISTRY[key] = ModelInfo(
            key, fn, paper, url, chapter, aux_loss, pretrained_backbone, tuple(backbones), quick, tuple(full), compare
        )
        return fn

    return wrap


def _keywords(fn: Callable[..., nn.Module]) -> dict[str, inspect.Parameter] | None:
    """The keywords a builder takes after ``num_classes``; None when it takes ``**kwargs`` (anything)."""
    params = dict(inspect.signature(fn).parameters)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    params.pop(next(iter(params)), None)  # num_classes
    return params


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model; ValueError naming the choices for an unknown name."""
    key = name.lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[key]


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_REGISTRY)


def comparison_roster(names: Sequence[str] | None = None) -> list[ModelInfo]:
    """The models compared side by side (``compare=True``), in chapter order, then registration order.

    ``names`` keeps only those models (still in roster order), e.g. ``["unet", "pspnet"]`` to compare a few; a name
    outside the roster is a ValueError listing the roster.
    """
    roster = [info for info in _in_chapter_order() if info.compare]
    if names is None:
        return roster
    wanted = [n.lower() for n in names]
    unknown = [n for n in wanted if n not in {info.name for info in roster}]
    if unknown or not wanted:
        raise ValueError(
            f"not in the comparison roster: {', '.join(unknown) or '(no names given)'}; choose from: "
            f"{', '.join(info.name for info in roster)}"
        )
    return [info for info in roster if info.name in wanted]


def full_recipes(dataset: str | None = "camvid") -> list[tuple[ModelInfo, Recipe]]:
    """Every FULL recipe (results-table row) on ``dataset`` (None: every dataset) as ``(model, recipe)``, in chapter
    order, then registration order. The results table is CamVid's; the VOC rows train the papers' own dataset."""
    return [(info, r) for info in _in_chapter_order() for r in info.full if dataset is None or r.dataset == dataset]


def _in_chapter_order() -> list[ModelInfo]:
    order = {name: i for i, name in enumerate(_REGISTRY)}
    return sorted(_REGISTRY.values(), key=lambda m: (m.chapter is None, m.chapter or "", order[m.name]))


def create_model(
    name: str,
    num_classes: int,
    *,
    backbone: str | None = None,
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model; ``backbone=None`` keeps the model's default (the paper's) backbone.

    Every option is checked against the model's registration first: an unknown name, ``aux_loss`` without an
    auxiliary head, a backbone the model does not take, ``pretrained_backbone`` without ImageNet weights or an
    unknown keyword is a ``ValueError`` saying what is accepted. The model gets ``model_spec`` (what rebuilds it:
    ``create_model(spec["model"], spec["num_classes"], **spec["model_kwargs"])``), or None when a keyword is not a
    plain value.

    ``forward(x)`` of every model returns a dict with ``"out"`` logits (N, num_classes, H, W) at the input size,
    plus ``"aux"`` when ``aux_loss`` and model-specific extras (EncNet's ``"se"``).
    """
    info = model_info(name)
    n = _num_classes(num_classes)
    build_kwargs = _check_options(info, backbone, pretrained_backbone, aux_loss, kwargs)
    model = info.builder(n, **build_kwargs)
    spec_kwargs = {k: v for k, v in build_kwargs.items() if k != "pretrained_backbone"}
    model.model_spec = (
        {"model": info.name, "num_classes": n, "model_kwargs": spec_kwargs} if _is_plain(spec_kwargs) else None
    )
    return model


def _num_classes(num_classes: Any) -> int:
    try:
        n = operator.index(num_classes)  # int, numpy integers, 0-d integer tensors; not 11.0 or "11"
    except TypeError:
        n = None
    if n is None or isinstance(num_classes, bool) or n < 2:
        raise ValueError(
            f"num_classes must be an integer >= 2, got {num_classes!r}: cross-entropy over one class is always 0 "
            "(a binary task is 2 classes, background and foreground)"
        )
    return int(n)


def _check_options(
    info: ModelInfo, backbone: str | None, pretrained_backbone: bool, aux_loss: bool, kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The builder's keywords for these options, or a ValueError saying which option the model refuses and why."""
    name = info.name
    if aux_loss and not info.aux_loss:
        with_aux = ", ".join(m for m in list_models() if _REGISTRY[m].aux_loss) or "none"
        raise ValueError(f"{name} has no auxiliary head: pass aux_loss=False (models with one: {with_aux})")
    if pretrained_backbone and not info.pretrained_backbone:
        raise ValueError(
            f"{name} has no pretrained backbone (no ImageNet weights exist for it; it trains from scratch): "
            "pass pretrained_backbone=False"
        )
    if backbone is not None and backbone not in info.backbones:
        if not info.backbones:
            raise ValueError(f"{name} has a fixed encoder and takes no backbone=: leave backbone out (None)")
        raise ValueError(
            f"{name} does not take backbone={backbone!r}; pass one of: {', '.join(info.backbones)} "
            f"(default {info.backbones[0]})"
        )
    params = _keywords(info.builder)
    if params is not None:
        accepted = [k for k in params if k not in CAPABILITY_KEYWORDS]
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            raise ValueError(
                f"{name} does not take {', '.join(f'{k}=' for k in unknown)}; its keywords are: "
                f"{', '.join(accepted) or 'none'} (plus create_model's backbone/pretrained_backbone/aux_loss where "
                "the model supports them)"
            )
        for key, value in kwargs.items():
            _check_type(name, key, value, params[key].default)
    out = dict(kwargs)
    if backbone is not None:
        out["backbone"] = backbone
    if aux_loss:
        out["aux_loss"] = True
    if pretrained_backbone:
        out["pretrained_backbone"] = True
    return out


def _check_type(name: str, key: str, value: Any, default: Any) -> None:
    """A keyword whose default is a number, a string or a bool must get one of the same kind: ``width="abc"``
    would otherwise fail deep inside the builder with a message about something else."""
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}
    kind = type(default)
    if kind not in kinds or value is None:
        return
    ok = isinstance(value, kinds[kind]) or (kind in (int, float) and _is_integer(value))
    if not ok or (kind is not bool and isinstance(value, bool)):
        raise ValueError(f"{name}'s {key} takes {'an' if kind is int else 'a'} {kind.__name__} "
                         f"(default {default!r}), got {value!r}")  # fmt: skip


def _is_integer(value: Any) -> bool:
    try:
        operator.index(value)  # numpy integers
    except TypeError:
        return False
    return True


def _is_plain(value: Any) -> bool:
    """str/int/float/bool/None, or tuples/lists/dicts (string keys) of them: what a model file can store."""
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, tuple | list):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False
