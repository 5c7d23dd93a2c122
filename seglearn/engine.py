"""Training: ``train_one_epoch``, and ``fit``, a short loop over it and ``evaluate``.

Laid out as torchvision's ``references/segmentation/train.py``: one function trains an epoch, one scores a loader
(:mod:`seglearn.evaluation`, whose ``evaluate`` and ``predict`` are re-exported here), and ``fit`` ties them to the
poly schedule, checkpoints (:mod:`seglearn.checkpoint`), seeding (:mod:`seglearn.seeding`), a time budget that
stops at a step boundary (:mod:`seglearn.partial`) and torch.distributed (:mod:`seglearn.distributed`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import distributed as D
from .checkpoint import Checkpointer, TrainingState, check_finite
from .checks import check_batch, check_labels, check_lr, check_val_loader, input_channels, split_batch
from .evaluation import _amp_dtype, _to_device, default_device, evaluate, predict
from .history import History
from .memory import peak_memory_mib, reset_peak_memory
from .models import logits_of
from .partial import EpochPlan, PartialEpoch, budget_stop, resumed_batches
from .progress import LivePlot, in_notebook, progress_bar
from .schedules import build_optimizer, build_schedule
from .seeding import capture_rng_state, seed_everything, use_worker_seeding

__all__ = ["fit", "train_one_epoch", "EpochStats", "evaluate", "predict", "default_device", "build_optimizer"]


@dataclass(frozen=True)
class EpochStats:
    """One epoch of :func:`train_one_epoch`: mean loss (weighted by batch size, over all ranks), images trained on
    (all ranks), seconds in the loop (data loading included), the lr of its last step, the logits' channels; the
    steps taken, whether the epoch ran to its end (False: ``stop()`` ended it) and the loss sum behind the mean."""

    loss: float
    images: int
    seconds: float
    lr: float
    num_classes: int
    steps: int = 0
    complete: bool = True
    loss_sum: float = math.nan


def _check_step_batch(images: Tensor, masks: Tensor, in_channels: int | None, bn_training: bool, where: str) -> None:
    check_batch(images, masks, in_channels)
    if bn_training and images.shape[0] == 1:
        raise ValueError(
            f"a batch of one image reached BatchNorm in training ({where}): "
            "use batch_size > 1 and DataLoader(..., drop_last=True) so no final batch of one is left"
        )


def _optimizer_step(net: nn.Module, batch_loss: Tensor, optimizer: Any, scheduler: Any, scaler: Any,
                    grad_clip: float | None) -> float:  # fmt: skip
    """Backward through ``scaler``, optional clipping, the optimizer and scheduler steps; the lr the step used."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(batch_loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    lr_used = optimizer.param_groups[0]["lr"]
    scaler.step(optimizer)  # skips the step when fp16 gradients overflowed
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    return lr_used


def train_one_epoch(
    model: nn.Module, loader: Iterable, loss: Callable[[Any, Tensor], Tensor], optimizer: torch.optim.Optimizer,
    scheduler: Any = None, *, device: torch.device, scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None, grad_clip: float | None = None, channels_last: bool = False,
    progress: bool = False, epoch: int = 0, epochs: int = 1, start: PartialEpoch | None = None,
    stop: Callable[[], bool] | None = None,
) -> EpochStats:  # fmt: skip
    """One pass over ``loader``: forward under autocast (``amp_dtype``), ``loss(output, masks)``, backward through
    ``scaler``, optional gradient clipping, an optimizer step and a ``scheduler`` step per batch.

    ``epoch``/``epochs`` (0-based epoch) only label the progress bar and error messages. ``stop()`` is asked after
    every step but the last; True ends the epoch there (``complete=False``). ``start`` continues an epoch that was
    stopped so (:mod:`seglearn.partial`). Raises ValueError for a batch of one image reaching BatchNorm or for mask
    labels >= the logits' channels that are not the loss's ``ignore_index`` (255 when the loss has none), naming
    the batch; FloatingPointError for a non-finite loss (checked every step on a CPU, every 20th step elsewhere:
    each check is a host sync). Under torch.distributed the loss and image counts are summed over ranks and rank
    0's BatchNorm statistics are copied to all.
    """
    net = D.unwrap_model(model)
    model.train()
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)  # a pass-through
    in_channels = input_channels(net)
    bn_training = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
    check_every = 1 if device.type == "cpu" else 20
    ignore_index = int(getattr(loss, "ignore_index", 255))
    steps = len(loader) if hasattr(loader, "__len__") else None
    first = start.steps if start is not None else 0
    carried = start is not None and D.get_rank() == 0  # the stopped run's sums are over all ranks: added once
    loss_sum = torch.tensor(start.loss_sum if carried else 0.0, device=device, dtype=torch.float64)
    seen, fresh, num_classes, t0 = start.images if carried else 0, 0, 0, time.perf_counter()
    lr_used, step, complete = start.lr if start is not None else math.nan, first - 1, True
    batches = resumed_batches(loader, start) if start is not None else loader
    bar = progress_bar(batches, enabled=progress, desc=f"epoch {epoch + 1}/{epochs}", leave=False, total=steps,
                       initial=first)  # fmt: skip
    for step, batch in enumerate(bar, start=first):
        where = f"epoch {epoch + 1}, step {step + 1}"
        images, masks = split_batch(batch)
        _check_step_batch(images, masks, in_channels, bn_training, where)
        loader_masks = masks
        images, masks = _to_device(images, masks, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(images)
        num_classes = num_classes or int(logits_of(output).shape[1])
        check_labels(loader_masks, num_classes, ignore_index, where)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            batch_loss = loss(output, masks)
        if step % check_every == 0 or step + 1 == steps:
            value = float(batch_loss.detach())
            if D.any_rank(not math.isfinite(value), device):
                raise FloatingPointError(f"loss is {value} at {where} (on some rank): lower lr or set grad_clip")
            # refresh=False: shown at the bar's next throttled redraw. A forced refresh is one Jupyter widget
            # message per step, which can overflow the output queue that nbval reads only after the cell ends.
            img_s = fresh / (time.perf_counter() - t0 + 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{img_s:.1f}", refresh=False)
        lr_used = _optimizer_step(net, batch_loss, optimizer, scheduler, scaler, grad_clip)
        loss_sum += batch_loss.detach() * images.shape[0]
        seen, fresh = seen + images.shape[0], fresh + images.shape[0]
        if stop is not None and step + 1 != steps and stop():
            complete = False
            break
    bar.close()
    D.broadcast_buffers(net)
    totals = D.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)]))
    mean = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan  # a host sync: the epoch's work is done
    seconds = time.perf_counter() - t0 + (start.seconds if start is not None else 0.0)
    return EpochStats(mean, int(totals[1]), seconds, float(lr_used), num_classes, step + 1, complete, float(totals[0]))


def _recipe(
    opt: torch.optim.Optimizer, optimizer: Any, poly_power: float, warmup_iters: int, plan: bool, recipe: Any
) -> dict:
    """What a resumed run must share with the one that wrote the checkpoint: the optimizer's settings as it was
    built (an instance's own), the schedule (planned from a budget or not), and the caller's ``recipe``."""
    group = opt.param_groups[0]
    return {
        **({"plan_epochs": True} if plan else {}),  # only when set: older checkpoints have no such key
        "lr": float(group.get("initial_lr", group["lr"])),
        "optimizer": optimizer.lower() if isinstance(optimizer, str) else type(opt).__name__,
        "weight_decay": group.get("weight_decay"),
        "momentum": group.get("momentum"),
        "poly_power": float(poly_power),
        "warmup_iters": int(warmup_iters),
        **dict(recipe or {}),
    }


def _checked_epoch(model: nn.Module, checkpoints: Checkpointer | None, *args: Any, **kw: Any) -> EpochStats:
    """:func:`train_one_epoch`, then the weights checked finite before anything can save them; a non-finite loss or
    weight stops the run with an error that says where its last good weights are."""
    try:
        stats = train_one_epoch(model, *args, **kw)
        check_finite(D.unwrap_model(model).state_dict(), f"the model after epoch {kw['epoch'] + 1}")
    except FloatingPointError as err:
        where = checkpoints.last_good() if checkpoints is not None else "nothing was saved (no checkpoint_dir)"
        raise FloatingPointError(f"{err}; nothing non-finite was saved: {where}") from None
    return stats


def _resume(checkpoints: Checkpointer, state: TrainingState, epochs: int, steps: int, keep_plan: bool) -> int:
    """Continue from ``last.pt`` (when there is one); a run asking for fewer epochs than it holds is refused. A
    time-budget stop's unfinished epoch is taken out of the history: the resumed run finishes it (PartialEpoch).
    Returns the epochs to run: ``epochs``, or with ``keep_plan`` the plan a budget run made after its first epoch."""
    if not checkpoints.restore(state):
        return epochs
    if keep_plan and state.history.planned_epochs:  # planned after epoch 1: the run is the plan's length
        epochs = min(epochs, state.history.planned_epochs)
    held = state.epoch + (state.partial is not None)  # an unfinished epoch already holds some of its steps
    if held > epochs:
        raise ValueError(
            f"{checkpoints.last} holds {held} epochs but epochs={epochs}: pass epochs >= {held} to "
            "continue that run, or pick another checkpoint_dir to train a shorter one"
        )
    state.history.drop_partial()
    state.scheduler.total_iters = epochs * steps  # a resumed run may ask for more epochs
    return epochs


def _check_fit_args(
    epochs: int, val_every: int, resume: bool, checkpoint_dir: Any, lr: float, optimizer: Any, val_loader: Any,
    plan_epochs: bool = False, time_budget_s: float | None = None,
) -> None:  # fmt: skip
    check_val_loader(val_loader)
    if plan_epochs and time_budget_s is None:
        raise ValueError("plan_epochs=True plans the epochs that fit a time budget: pass time_budget_s= too")
    if not isinstance(optimizer, torch.optim.Optimizer):
        check_lr(lr)  # before torch.optim's own "Invalid learning rate"; an instance's lr is checked once built
    if epochs < 1 or val_every < 1:
        raise ValueError(f"epochs and val_every must be >= 1, got epochs={epochs}, val_every={val_every}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (the folder holding last.pt)")


def _steps(loader: Any) -> int:
    steps = len(loader)
    if steps == 0:
        raise ValueError("train_loader yields no batches (dataset smaller than batch_size with drop_last=True?)")
    return steps


def _default_loss(loss: Callable | None, device: torch.device) -> Callable[[Any, Tensor], Tensor]:
    if loss is None:
        from .losses import SegLoss  # imported here: losses is not needed by evaluate/predict users

        loss = SegLoss()
    return loss.to(device) if isinstance(loss, nn.Module) else loss


def _record_epoch(
    state: TrainingState, stats: EpochStats, epoch: int, epoch_rng: dict | None, val_loader: Iterable | None,
    loss: Any, device: torch.device, **eval_kw: Any,
) -> bool:  # fmt: skip
    """Record a trained epoch in ``state`` (an unfinished one as ``state.partial``, to resume at its step) and
    score ``val_loader`` when given; True at a new best validation."""
    history = state.history
    history.record_train(stats.loss, stats.images, stats.seconds, stats.lr)
    state.num_classes = state.num_classes or stats.num_classes
    if not stats.complete:  # the budget ran out mid-epoch: the run stops here, resumable at this step
        state.partial = PartialEpoch(stats.steps, stats.loss_sum, stats.images, stats.seconds, stats.lr, epoch_rng,
                                     capture_rng_state(state.loader))  # fmt: skip
        history.partial_steps = stats.steps
    if val_loader is None:
        return False
    ignore_index = int(getattr(loss, "ignore_index", 255))
    scores = evaluate(D.unwrap_model(state.model), val_loader, state.num_classes, device, ignore_index, **eval_kw)
    return history.record_val(epoch + 1, scores, partial=not stats.complete)


def _show_epoch(bar: Any, plot: LivePlot | None, history: History) -> None:
    epoch = history.epochs
    miou = history.val[-1].miou if history.val_epochs[-1:] == [epoch] else None
    bar.set_postfix(loss=f"{history.train_loss[-1]:.4f}", miou="-" if miou is None else f"{miou:.3f}")
    if plot is not None:
        plot.update(epoch, history.train_loss[-1], miou)


def fit(
    model: nn.Module, train_loader: DataLoader, val_loader: Iterable | None = None, *, epochs: int, lr: float,
    optimizer: str | torch.optim.Optimizer | None = None, loss: Callable[[Any, Tensor], Tensor] | None = None,
    device: str | torch.device | None = None, seed: int | None = None, num_classes: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None, resume: bool = False, time_budget_s: float | None = None,
    weight_decay: float = 1e-4, momentum: float = 0.9, warmup_iters: int = 0, poly_power: float = 0.9,
    amp: bool = True, channels_last: bool = False, grad_clip: float | None = None, val_every: int = 1,
    val_scales: Sequence[float] = (1.0,), plan_epochs: bool = False, schedule: str = "poly", progress: bool = True,
    lr_mult: Mapping[str, float] | None = None, live_plot: bool | None = None, model_spec: dict[str, Any] | None = None,
    recipe: dict[str, Any] | None = None,
) -> History:  # fmt: skip
    """Train ``model`` with a per-iteration schedule; validate, checkpoint and resume. Returns a :class:`History`.

    ``model(images)`` may return the seglearn output dict or bare logits; ``loss(output, masks)`` defaults to
    :class:`seglearn.losses.SegLoss`. ``optimizer``: an instance, ``"sgd"`` (default) or ``"adamw"``; on CUDA under
    autocast (bf16, or fp16 with a GradScaler). ``checkpoint_dir`` gets ``last.pt`` each epoch and ``best.pt`` at the
    best val mIoU; ``resume=True`` continues exactly from ``last.pt``. ``model_spec`` (default ``model.model_spec``)
    lets :func:`seglearn.load_model` rebuild the model; ``recipe`` (plain values) is stored with the optimizer's and
    schedule's settings, and resuming with any changed is refused (more epochs are allowed). ``time_budget_s``
    (seconds from this call) stops after the first step that ends past it, mid-epoch too, validates once more, and
    ``resume=True`` finishes that epoch exactly. ``plan_epochs`` (with a budget): ``epochs`` is the most, and after
    the first epoch the run takes as many as fit the budget (:class:`seglearn.partial.EpochPlan`; kept on resume).
    ``val_scales``: :func:`evaluate`'s ``scales``. ``schedule``: "poly" or "step:N" (x0.1 every N iterations);
    ``lr_mult``: per-layer rate multipliers (``build_optimizer``). torchrun: DDP, sharded loaders, rank 0 writes."""
    _check_fit_args(epochs, val_every, resume, checkpoint_dir, lr, optimizer, val_loader, plan_epochs, time_budget_s)
    if seed is not None:
        seed_everything(seed, getattr(train_loader, "dataset", None))
    net = D.unwrap_model(model)
    device = D.process_device(torch.device(device) if device is not None else default_device())
    net.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    train_loader = D.shard_loader(train_loader, train=True, seed=seed or 0)
    val_loader = D.shard_loader(val_loader, train=False)
    use_worker_seeding(train_loader)
    steps = _steps(train_loader)
    opt = check_lr(build_optimizer(optimizer or "sgd", net, lr, weight_decay, momentum, lr_mult))
    sched = build_schedule(schedule, opt, epochs * steps, poly_power, warmup_iters)
    amp_dtype = _amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss = _default_loss(loss, device)
    spec = model_spec if model_spec is not None else getattr(net, "model_spec", None)
    extra = {k: v for k, v in {"schedule": schedule, "lr_mult": dict(lr_mult or {})}.items() if v not in ("poly", {})}
    saved = _recipe(opt, optimizer or "sgd", poly_power, warmup_iters, plan_epochs, {**extra, **dict(recipe or {})})
    state = TrainingState(net, opt, sched, scaler, train_loader, num_classes=num_classes, model_spec=spec, recipe=saved)
    main = D.get_rank() == 0  # the process that writes files and shows progress
    checkpoints = Checkpointer(checkpoint_dir, write=main) if checkpoint_dir is not None else None
    if resume:
        epochs = _resume(checkpoints, state, epochs, steps, keep_plan=plan_epochs)
    train_model, history, show = D.wrap_if_distributed(model, device), state.history, progress and main
    plot = LivePlot(epochs) if main and (live_plot or (live_plot is None and progress and in_notebook())) else None
    reset_peak_memory(device)  # History.peak_memory_mib is this run's peak (on CUDA; a CPU has only the process's)
    bar = progress_bar(range(state.epoch, epochs), enabled=show, desc="fit", unit="epoch", initial=state.epoch,
                       total=epochs)  # fmt: skip
    stop = budget_stop(time_budget_s, device)
    plan = EpochPlan(time_budget_s, device, active=plan_epochs and not history.planned_epochs)  # kept on resume
    for epoch in bar:
        t_epoch = time.perf_counter()
        D.set_sampler_epoch(train_loader, epoch)
        start, state.partial = state.partial, None
        epoch_rng = start.epoch_rng if start else capture_rng_state(train_loader) if stop else None
        stats = _checked_epoch(train_model, checkpoints, train_loader, loss, opt, sched, device=device, scaler=scaler,
                               amp_dtype=amp_dtype, grad_clip=grad_clip, channels_last=channels_last,
                               progress=show, epoch=epoch, epochs=epochs, start=start, stop=stop)  # fmt: skip
        if (planned := plan.after(stats.complete, start, epochs)) is not None:  # the first epoch's pace
            epochs = history.planned_epochs = bar.total = planned
            sched.set_total_iters(epochs * steps)
        due = (epoch + 1) % val_every == 0 or epoch + 1 == epochs
        improved = _record_epoch(state, stats, epoch, epoch_rng, val_loader if due or not stats.complete else None,
                                 loss, device, amp=amp, channels_last=channels_last, scales=val_scales)  # fmt: skip
        out_of_time = not stats.complete or (stop is not None and stop())
        history.stopped_early = out_of_time and (epoch + 1 < epochs or not stats.complete)
        history.epoch_time.append(time.perf_counter() - t_epoch + (start.seconds if start else 0.0))
        history.record_memory(*peak_memory_mib(device))
        state.epoch = epoch + 1 if stats.complete else epoch  # completed epochs
        if checkpoints is not None:
            checkpoints.save(state, best=improved)
        _show_epoch(bar, plot, history)
        if history.stopped_early or epoch + 1 >= epochs:  # the plan may end before the bar's range
            break
    bar.close()
    return history
