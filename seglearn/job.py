"""One training job: :class:`TrainJob` holds every option of ``python -m seglearn train`` with its default, and
:func:`run_train_job` runs it (fit, score, write the run folder).

The CLI parses its command line into a TrainJob, the demo and the benchmarks build one directly, and a registry
recipe becomes one with :meth:`TrainJob.from_recipe`, a named train recipe (``train --recipe cpu-15min``) with
:meth:`TrainJob.from_train_recipe`. Errors in a job's options or inputs are :class:`JobError`
(a ValueError) and name the option as the command line spells it.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglearn.atomic import write_file
from seglearn.atomic import write_json as write_json
from seglearn.names import DATASETS, model_names
from seglearn.options import JobError, check_choice, check_device, check_out_folder, is_int, parse_schedule, size_pair

if TYPE_CHECKING:  # torch and numpy are imported by the functions that train: a bad option is answered at once
    import numpy as np
    from torch import nn

MODEL_FILE = "model.pt"
OPTIMIZERS = ("sgd", "adamw")
CLASS_WEIGHTS = ("none", "median", "enet")


@dataclass
class TrainJob:
    """Every training option and its default (the same defaults as ``python -m seglearn train``).

    ``crop``/``image_size`` take one int or (H, W); ``model_args`` are extra create_model keywords
    (``{"output_stride": 16}``); ``out`` defaults to ``runs/<model>``; ``argv`` is the command that made the job
    (recorded in run.json). Invalid values raise :class:`JobError` naming the command-line option.
    """

    model: str
    dataset: str = "synthetic"
    split: str = "train"  # the training split (VOC: train or trainaug); val is always "val"
    root: str | Path | None = None
    num_images: int = 64
    image_size: tuple[int, int] | None = None
    crop: tuple[int, int] = (96, 128)
    scale: tuple[float, float] = (0.5, 2.0)
    rotate: float = 0.0  # training: random rotation by up to this many degrees (EncNet: 10)
    batch_size: int = 8
    workers: int = 2
    epochs: int = 10
    lr: float = 0.01
    optimizer: str = "sgd"
    weight_decay: float = 1e-4
    warmup_iters: int = 0
    schedule: str = "poly"  # or "step:N": x0.1 every N iterations (seglearn.schedules.parse_schedule)
    lr_mult: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> learning-rate multiplier
    class_weights: str = "none"
    aux_loss: bool = False
    backbone: str | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    pretrained_backbone: bool = False
    sync_bn: bool = False
    preload: bool = False
    val_every: int = 1
    channels_last: bool = False
    amp: bool = True
    time_budget: float | None = None
    plan_epochs: bool = False
    eval_scale: float = 1.0
    resume: bool = False
    seed: int = 0
    device: str | None = None
    out: str | Path | None = None
    argv: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Everything that needs no import first: an option error is answered before torch is loaded.
        check_choice(self.dataset, DATASETS, "--dataset")
        check_choice(self.optimizer, OPTIMIZERS, "--optimizer")
        check_choice(self.class_weights, CLASS_WEIGHTS, "--class-weights")
        self.crop = size_pair(self.crop, "--crop")
        self.image_size = None if self.image_size is None else size_pair(self.image_size, "--image-size")
        lo, hi = (float(s) for s in self.scale)
        if not 0 < lo <= hi < math.inf:
            raise JobError(f"--scale takes MIN MAX with 0 < MIN <= MAX (e.g. 0.5 2.0), got {lo:g} {hi:g}")
        self.scale = (lo, hi)
        counts = [("--num-images", self.num_images, 1), ("--batch-size", self.batch_size, 1),
                  ("--workers", self.workers, 0), ("--epochs", self.epochs, 1),
                  ("--warmup-iters", self.warmup_iters, 0), ("--val-every", self.val_every, 1)]  # fmt: skip
        for flag, value, least in counts:
            if not is_int(value) or value < least:
                raise JobError(f"{flag} takes an integer >= {least}, got {value!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise JobError(f"--lr takes a finite number > 0 (e.g. 0.01), got {self.lr:g}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise JobError(f"--weight-decay takes a finite number >= 0 (e.g. 1e-4), got {self.weight_decay:g}")
        try:
            parse_schedule(self.schedule)
        except ValueError as err:
            raise JobError(f"--schedule: {err}") from None
        self.lr_mult = {str(k): float(v) for k, v in parse_lr_mult(self.lr_mult).items()}
        if self.time_budget is not None and not (self.time_budget >= 0):
            raise JobError(f"--time-budget takes a number of seconds >= 0, got {self.time_budget:g}")
        if self.plan_epochs and self.time_budget is None:
            raise JobError("--plan-epochs plans the epochs that fit a time budget: give --time-budget S too")
        if not (math.isfinite(self.rotate) and 0 <= self.rotate <= 180):
            raise JobError(f"--rotate takes the largest angle in degrees, 0 to 180 (EncNet: 10), got {self.rotate:g}")
        if not (math.isfinite(self.eval_scale) and self.eval_scale > 0):
            raise JobError(f"--eval-scale takes a number > 0 (e.g. 0.5), got {self.eval_scale:g}")
        self.model_args = dict(self.model_args)
        self.out = Path(self.out) if self.out is not None else Path("runs") / str(self.model)
        check_out_folder(self.out)
        check_choice(self.model, model_names(), "--model", hint="; `python -m seglearn models` lists them")
        check_device(self.device)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """The create_model keywords this job trains with (aux_loss, the model args, the backbone when given)."""
        kwargs: dict[str, Any] = {"aux_loss": self.aux_loss, **self.model_args}
        if self.backbone:
            kwargs["backbone"] = self.backbone
        return kwargs

    @classmethod
    def from_recipe(cls, model: str, recipe: Any, **overrides: Any) -> TrainJob:
        """The job that trains ``model`` with a registry :class:`~seglearn.models.Recipe` (its dataset and split,
        epochs, lr and schedule, optimizer, weight decay, model keywords, aux loss, class weights, crop, batch size,
        ImageNet init); ``overrides`` set any other field (``root=...``, ``workers=8``) or replace a recipe's value."""
        model_args = dict(recipe.model_kwargs)
        fields = dict(
            epochs=recipe.epochs, lr=recipe.lr, optimizer=recipe.optimizer, weight_decay=recipe.weight_decay,
            aux_loss=recipe.aux_loss, backbone=model_args.pop("backbone", None), model_args=model_args,
            class_weights=recipe.class_weights or "none", crop=tuple(recipe.crop), batch_size=recipe.batch_size,
            dataset=recipe.dataset, split=recipe.split, schedule=recipe.schedule, lr_mult=dict(recipe.lr_mult),
            rotate=recipe.rotate, pretrained_backbone=recipe.pretrained_backbone,
        )  # fmt: skip
        return cls(model=model, **{**fields, **overrides})

    @classmethod
    def from_train_recipe(cls, name: str, **overrides: Any) -> TrainJob:
        """The job of the train recipe ``name`` (:data:`seglearn.train_recipes.TRAIN_RECIPES`, e.g. ``"cpu-15min"``,
        what ``seglearn train --recipe NAME`` runs), ``overrides`` replacing any of its values (``seed=1``)."""
        from seglearn.train_recipes import train_recipe

        try:
            values = train_recipe(name, overrides.get("model"))
        except ValueError as err:
            raise JobError(str(err)) from None
        return cls(**{**values, **overrides})

    def command_args(self) -> list[str]:
        """The ``seglearn`` arguments that make this job: ``argv`` when it came from a command line, else ``train``
        with every option that differs from its default (so run.json of a job built in Python reproduces too)."""
        if self.argv:
            return list(self.argv)
        default, args = TrainJob(self.model), ["train", "--model", self.model]
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("model", "argv") or value == getattr(default, f.name):
                continue
            flag = "--" + f.name.replace("_", "-")
            if f.name == "amp":
                args.append("--no-amp")
            elif f.name in ("model_args", "lr_mult"):
                args += [a for k, v in value.items() for a in (flag.rstrip("s"), f"{k}={_literal(v)}")]
            elif isinstance(value, bool):
                args.append(flag)
            elif isinstance(value, tuple):
                args += [flag, *map(str, value)]
            else:
                args += [flag, str(value)]
        return args


def parse_model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["base_channels=32", "output_stride=16"]`` -> ``{"base_channels": 32, "output_stride": 16}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise JobError(f"--model-arg takes KEY=VALUE (e.g. output_stride=16), got {pair!r}")
        try:
            out[key] = ast.literal_eval(raw)  # numbers, tuples, True/False/None
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare word: a string such as resnet50
    return out


def parse_lr_mult(pairs: Sequence[str] | dict[str, float]) -> dict[str, float]:
    """``["classifier=10"]`` (``--lr-mult``) or a dict -> ``{"classifier": 10.0}``; each multiplier a number > 0."""
    items = pairs.items() if isinstance(pairs, dict) else (p.partition("=")[::2] for p in pairs)
    out = {}
    for prefix, raw in items:
        try:
            mult = float(raw)
        except (TypeError, ValueError):
            mult = math.nan
        if not prefix or not (math.isfinite(mult) and mult > 0):
            raise JobError(f"--lr-mult takes PREFIX=MULT with MULT > 0 (e.g. classifier=10), got {prefix}={raw}")
        out[prefix] = mult
    return out


def _literal(value: Any) -> str:
    """How ``--model-arg KEY=VALUE`` spells ``value``: a bare word for a string that reads as no literal, else repr."""
    if isinstance(value, str):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return repr(value)


@dataclass
class TrainResult:
    """What :func:`run_train_job` returns: the final val scores, the fit history, the dataset's classes and palette,
    the run.json record, the trained model (unwrapped, eval mode) and the run folder."""

    scores: Any
    history: Any
    classes: list[str]
    palette: np.ndarray
    record: dict[str, Any]
    model: nn.Module
    out: Path


def one_line(err: BaseException) -> str:
    """An error's message on one line: of an error raised in a DataLoader worker, the worker's own message (the last
    line of the traceback torch puts into it), not the traceback."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last and last.split(": ", 1)[0].isidentifier() else last
    return " ".join(text.split())


def _datasets(job: TrainJob, splits: Sequence[str], crop: tuple[int, int] | None) -> list[Any]:
    from seglearn.data import job_datasets

    try:
        return job_datasets(job.dataset, splits, root=job.root, crop=crop, scale=job.scale, num_images=job.num_images,
                            image_size=job.image_size, preload=job.preload, rotate=job.rotate)  # fmt: skip
    except (OSError, ValueError, RuntimeError) as err:  # a missing folder, or a bad file found by preload
        raise JobError(str(err)) from None


def job_val_set(job: TrainJob) -> Any:
    """The val split ``job`` is scored on (eval preset), e.g. to draw its images next to the predictions."""
    return _datasets(job, ["val"], None)[0]


def _build_model(job: TrainJob, num_classes: int, info: Any) -> nn.Module:
    """The job's model from the registry, the same initial weights on every rank, wrapped for DDP under torchrun."""
    import torch

    from seglearn import distributed as D
    from seglearn.models import create_model

    torch.manual_seed(job.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    try:
        model = create_model(job.model, num_classes, pretrained_backbone=job.pretrained_backbone, **job.model_kwargs)
        return D.wrap_model(model, info, sync_bn=job.sync_bn)
    except (ValueError, TypeError) as err:  # a refused option, a bad --model-arg name or value
        given = " ".join(f"--model-arg {k}={_literal(v)}" for k, v in job.model_args.items())
        raise JobError(f"{err}" + (f" (from {given})" if given else "")) from None


def run_train_job(job: TrainJob, quiet: bool = False) -> TrainResult:
    """Train with :func:`seglearn.engine.fit` (checkpoints in ``job.out/checkpoints``), score the val split merged
    over all ranks, and on rank 0 write model.pt (:func:`seglearn.model_file.save_model`), run.json, history.json,
    scores.json and curves.png under ``job.out``; unless ``quiet``, print the scores table and what was written."""
    import numpy as np
    import torch

    from seglearn import distributed as D
    from seglearn.data import make_loader
    from seglearn.engine import evaluate, fit
    from seglearn.record import run_record

    info = D.init_distributed(job.device)
    train_set, val_set = _datasets(job, [job.split, "val"], job.crop)
    model = _build_model(job, train_set.num_classes, info)
    net = D.unwrap_model(model)
    loss = None
    if job.class_weights != "none":  # SegNet's median-frequency or ENet's weights, counted on the train split
        from seglearn.losses import SegLoss

        loss = SegLoss(class_weights=train_set.class_weights(job.class_weights))
    # What must not change when --resume continues this run (fit adds lr, optimizer and its schedule).
    recipe = {"model": job.model, "model_kwargs": job.model_kwargs, "dataset": job.dataset, "crop": list(job.crop),
              "batch_size": job.batch_size, "class_weights": job.class_weights}  # fmt: skip
    if job.split != "train":  # only when set: older run folders still resume
        recipe["split"] = job.split
    loaders = [make_loader(ds, batch_size=job.batch_size, train=train, workers=job.workers, seed=job.seed)
               for ds, train in ((train_set, True), (val_set, False))]  # fmt: skip
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    try:
        history = fit(
            model, *loaders, epochs=job.epochs, lr=job.lr, optimizer=job.optimizer, loss=loss, device=info.device,
            seed=job.seed, checkpoint_dir=job.out / "checkpoints", resume=job.resume, time_budget_s=job.time_budget,
            model_spec=net.model_spec, recipe=recipe, weight_decay=job.weight_decay, warmup_iters=job.warmup_iters,
            val_every=job.val_every, amp=job.amp, channels_last=job.channels_last, plan_epochs=job.plan_epochs,
            val_scales=(job.eval_scale,), schedule=job.schedule, lr_mult=job.lr_mult,
        )  # fmt: skip
    except (ValueError, FloatingPointError, OSError) as err:  # --resume on another recipe, a bad mask, a diverged run
        raise JobError(one_line(err)) from None
    # Each rank scores its own shard (no repeats); evaluate sums the confusion matrices over ranks.
    scores = evaluate(model, loaders[1], train_set.num_classes, device=info.device, scales=(job.eval_scale,),
                      channels_last=job.channels_last)  # fmt: skip
    classes, palette = list(train_set.classes), np.asarray(train_set.palette)
    record = run_record(job, net, history, scores, device=info.device, world_size=info.world_size,
                        train_size=len(train_set), val_size=len(val_set))  # fmt: skip
    result = TrainResult(scores, history, classes, palette, record, net.eval(), job.out)
    if info.is_main:
        _write_run(job, result, world_size=info.world_size)
        if not quiet:
            planned = f" of {history.planned_epochs} planned" if history.planned_epochs else ""
            print(f"{job.model} on {job.dataset}: {history.epochs}{planned} epochs, val scores ({len(val_set)} images)")
            print(scores.table(classes))
            print(
                f"\n{record['epochs']} epochs in {record['wall_s']:.0f} s, {record['images_per_s']:.1f} images/s, "
                f"{record['memory_kind']} {record['peak_memory_mib']:.0f} MiB on {record['device']}"
            )
            print(f"wrote {job.out / MODEL_FILE}, history.json, scores.json, run.json, curves.png")
    D.teardown_distributed()
    return result


def _write_run(job: TrainJob, result: TrainResult, *, world_size: int) -> None:
    """model.pt (weights + what rebuilds them + classes/palette), run.json, history.json, scores.json, curves.png."""
    import matplotlib.pyplot as plt

    from seglearn.model_file import save_model
    from seglearn.plot import plot_history

    save_model(job.out / MODEL_FILE, result.model, classes=result.classes, palette=result.palette.tolist(),
               dataset=job.dataset, crop=list(job.crop))  # fmt: skip
    write_json(job.out / "run.json", result.record)  # each file atomically: the old one or the new one
    write_json(job.out / "history.json", result.history.as_json())
    scores = result.scores.as_dict()
    write_json(job.out / "scores.json", {**scores, "classes": result.classes, "world_size": world_size})
    fig = plot_history(result.history)
    write_file(job.out / "curves.png", lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
