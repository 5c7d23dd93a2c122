"""Training and inference: ``train_one_epoch``, ``evaluate``, ``predict``, and ``fit``, a short loop over them.

Laid out as torchvision's ``references/segmentation/train.py``: one function trains an epoch, one scores a loader,
and ``fit`` ties them to the poly schedule, checkpoints (:mod:`seglearn.checkpoint`), seeding
(:mod:`seglearn.seeding`) and torch.distributed (:mod:`seglearn.distributed`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from . import distributed as D
from .checkpoint import Checkpointer, TrainingState, check_finite
from .checks import check_batch, check_labels, check_lr, check_scales, check_val_loader, input_channels, split_batch
from .history import History
from .memory import peak_memory_mib, reset_peak_memory
from .metrics import ConfusionMatrix, SegScores
from .models import logits_of, resize_to
from .progress import LivePlot, in_notebook, progress_bar
from .schedules import PolyLR, build_optimizer
from .seeding import seed_everything, use_worker_seeding

__all__ = ["fit", "train_one_epoch", "EpochStats", "evaluate", "predict", "default_device", "build_optimizer"]


def default_device() -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(images: Tensor, masks: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    return images, masks.to(device, non_blocking=True).long()


def _averaged_probs(net: nn.Module, x: Tensor, scales: Sequence[float], flip: bool) -> Tensor:
    """Softmax (N, C, H, W) at ``x``'s size, averaged over input ``scales`` and, with ``flip``, horizontal flips."""
    h, w = x.shape[-2:]
    total: Tensor | None = None
    for s in scales:
        size = (max(1, round(h * s)), max(1, round(w * s)))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            logits = logits_of(net(xs.flip(-1) if flipped else xs)).float()
            probs = resize_to(logits.flip(-1) if flipped else logits, (h, w)).softmax(1)
            total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


@dataclass(frozen=True)
class EpochStats:
    """One epoch of :func:`train_one_epoch`: mean loss (weighted by batch size, over all ranks), images trained on
    (all ranks), seconds in the loop (data loading included), the lr of its last step, the logits' channels."""

    loss: float
    images: int
    seconds: float
    lr: float
    num_classes: int


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    loss: Callable[[Any, Tensor], Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any = None,
    *,
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    grad_clip: float | None = None,
    channels_last: bool = False,
    progress: bool = False,
    epoch: int = 0,
    epochs: int = 1,
) -> EpochStats:
    """One pass over ``loader``: forward under autocast (``amp_dtype``), ``loss(output, masks)``, backward through
    ``scaler``, optional gradient clipping, an optimizer step and a ``scheduler`` step per batch.

    ``epoch``/``epochs`` (0-based epoch) only label the progress bar and error messages. Raises ValueError for a
    batch of one image reaching BatchNorm or for mask labels >= the logits' channels that are not the loss's
    ``ignore_index`` (255 when the loss has none), naming the batch; FloatingPointError for a non-finite loss
    (checked every step on a CPU, every 20th step elsewhere: each check is a host sync).
    Under torch.distributed the loss and image counts are summed over ranks and rank 0's BatchNorm statistics are
    copied to all.
    """
    net = D.unwrap_model(model)
    model.train()
    scaler = scaler if scaler is not None else torch.amp.GradScaler("cuda", enabled=False)  # a pass-through
    in_channels = input_channels(net)
    bn_training = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
    check_every = 1 if device.type == "cpu" else 20
    ignore_index = int(getattr(loss, "ignore_index", 255))
    steps = len(loader) if hasattr(loader, "__len__") else None
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    seen, num_classes, lr_used, t0 = 0, 0, math.nan, time.perf_counter()
    bar = progress_bar(loader, enabled=progress, desc=f"epoch {epoch + 1}/{epochs}", leave=False, total=steps)
    for step, batch in enumerate(bar):
        images, masks = split_batch(batch)
        check_batch(images, masks, in_channels)
        if bn_training and images.shape[0] == 1:
            raise ValueError(
                f"a batch of one image reached BatchNorm in training (epoch {epoch + 1}, step {step + 1}): "
                "use batch_size > 1 and DataLoader(..., drop_last=True) so no final batch of one is left"
            )
        loader_masks = masks
        images, masks = _to_device(images, masks, device, channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            output = model(images)
        num_classes = num_classes or int(logits_of(output).shape[1])
        check_labels(loader_masks, num_classes, ignore_index, f"epoch {epoch + 1}, step {step + 1}")
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            batch_loss = loss(output, masks)
        if step % check_every == 0 or step + 1 == steps:
            value = float(batch_loss.detach())
            if D.any_rank(not math.isfinite(value), device):
                raise FloatingPointError(
                    f"loss is {value} at epoch {epoch + 1}, step {step + 1} (on some rank): lower lr or set grad_clip"
                )
            # refresh=False: shown at the bar's next throttled redraw. A forced refresh is one Jupyter widget
            # message per step, which can overflow the output queue that nbval reads only after the cell ends.
            img_s = seen / (time.perf_counter() - t0 + 1e-9)
            bar.set_postfix(loss=f"{value:.4f}", img_s=f"{img_s:.1f}", refresh=False)
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
        loss_sum += batch_loss.detach() * images.shape[0]
        seen += images.shape[0]
    bar.close()
    D.broadcast_buffers(net)
    totals = D.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)]))
    mean = float(totals[0] / totals[1]) if totals[1] > 0 else math.nan  # a host sync: the epoch's work is done
    return EpochStats(mean, int(totals[1]), time.perf_counter() - t0, float(lr_used), num_classes)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int | None,
    device: str | torch.device | None = None,
    ignore_index: int = 255,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    amp: bool = True,
    channels_last: bool = False,
    progress: bool = False,
) -> SegScores:
    """Scores of ``model`` on every (image, mask) batch of ``loader``, from one dataset-wide confusion matrix.

    ``scales``/``flip`` as :func:`predict`: the prediction is the argmax of the softmax averaged over the input
    scales and, with ``flip``, horizontal flips (the default is the plain argmax of the logits).
    ``num_classes=None`` takes the model's output channels. Under torch.distributed the matrices of all ranks are
    summed before scoring (give each rank a disjoint shard, e.g. ``seglearn.distributed.eval_sampler``).
    """
    check_scales(scales)
    net = D.unwrap_model(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    was_training = net.training
    net.eval()
    amp_dtype = _amp_dtype(device, amp)
    in_channels = input_channels(net)
    plain = tuple(scales) == (1.0,) and not flip
    cm = ConfusionMatrix(num_classes, ignore_index, device=device) if num_classes is not None else None
    batches = 0
    try:
        for batch in progress_bar(loader, enabled=progress and D.get_rank() == 0, desc="eval", leave=False):
            images, masks = split_batch(batch)
            check_batch(images, masks, in_channels)
            images, masks = _to_device(images, masks, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                scores = logits_of(net(images)) if plain else _averaged_probs(net, images, scales, flip)
            if cm is None:
                cm = ConfusionMatrix(scores.shape[1], ignore_index, device=device)
            cm.update(scores.argmax(1), masks)
            batches += 1
    finally:
        net.train(was_training)
    total = D.all_reduce_sum(torch.tensor(float(batches), device=device))
    if cm is None or float(total) == 0:  # scores of no images would be NaN
        raise ValueError(
            "the evaluation loader yielded no batches (an empty val split, or fewer images than batch_size with "
            "drop_last=True?): pass a loader with images"
        )
    return cm.all_reduce().compute()


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, scales: Sequence[float] = (1.0,), flip: bool = False) -> Tensor:
    """Class probabilities (N, C, H, W), averaged over input ``scales`` and, with ``flip``, horizontal flips.

    ``images``: normalized float (N, 3, H, W) or (3, H, W) (a batch of one). Each scale resizes the input
    (bilinear), runs the model and resizes the logits back to (H, W) before the softmax; the result is on the
    device of ``images``.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim not in (3, 4):
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"predict expects a float tensor (N, 3, H, W) or (3, H, W), normalized; got {got}")
    check_scales(scales)
    if not bool(torch.isfinite(images).all()):
        raise ValueError("predict got images holding NaN or infinity: check how they were loaded and normalized")
    x = images[None] if images.ndim == 3 else images
    net = D.unwrap_model(model)
    was_training = net.training
    net.eval()
    try:
        probs = _averaged_probs(net, x.to(next(net.parameters()).device), scales, flip)
    finally:
        net.train(was_training)
    return probs.to(images.device)


def _recipe(opt: torch.optim.Optimizer, optimizer: Any, poly_power: float, warmup_iters: int, recipe: Any) -> dict:
    """What a resumed run must share with the one that wrote the checkpoint: the optimizer's settings as it was
    built (an instance's own), the schedule, and the caller's ``recipe``."""
    group = opt.param_groups[0]
    return {
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


def _resume(checkpoints: Checkpointer, state: TrainingState, epochs: int, steps: int) -> None:
    """Continue from ``last.pt`` (when there is one); a run asking for fewer epochs than it holds is refused."""
    if not checkpoints.restore(state):
        return
    if state.epoch > epochs:
        raise ValueError(
            f"{checkpoints.last} holds {state.epoch} epochs but epochs={epochs}: pass epochs >= {state.epoch} to "
            "continue that run, or pick another checkpoint_dir to train a shorter one"
        )
    state.scheduler.total_iters = epochs * steps  # a resumed run may ask for more epochs


def _check_fit_args(
    epochs: int, val_every: int, resume: bool, checkpoint_dir: Any, lr: float, optimizer: Any, val_loader: Any
) -> None:
    check_val_loader(val_loader)
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
    progress: bool = True, live_plot: bool | None = None,
    model_spec: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None,
) -> History:  # fmt: skip
    """Train ``model`` with a per-iteration poly schedule; validate, checkpoint and resume. Returns a :class:`History`.

    ``model(images)`` may return the seglearn output dict or bare logits; ``loss(output, masks)`` defaults to
    :class:`seglearn.losses.SegLoss`. ``optimizer`` is an instance or ``"sgd"`` (default) / ``"adamw"``. On CUDA
    it trains under autocast (bf16, or fp16 with a GradScaler). ``checkpoint_dir`` gets ``last.pt`` after every
    epoch and ``best.pt`` at the best val mIoU; ``resume=True`` continues exactly from ``last.pt``.
    ``model_spec`` is stored so that :func:`seglearn.load_model` can rebuild the model (default: the
    ``model.model_spec`` that ``create_model`` sets); ``recipe`` (plain values) is stored with the optimizer's and
    the schedule's settings, and resuming with any of them changed is refused (more epochs are allowed).
    ``time_budget_s`` stops after the epoch in which the budget runs out. On CUDA it resets the device's peak-memory
    counter first, so ``History.peak_memory_mib`` is this run's peak. When torch.distributed is initialized the
    model is wrapped in DistributedDataParallel, loaders are sharded, and only rank 0 writes and shows progress.
    """
    _check_fit_args(epochs, val_every, resume, checkpoint_dir, lr, optimizer, val_loader)
    if seed is not None:
        seed_everything(seed, getattr(train_loader, "dataset", None))
    net = D.unwrap_model(model)
    device = D.process_device(torch.device(device) if device is not None else default_device())
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    train_loader = D.shard_loader(train_loader, train=True, seed=seed or 0)
    val_loader = D.shard_loader(val_loader, train=False)
    use_worker_seeding(train_loader)
    steps = _steps(train_loader)
    opt = check_lr(build_optimizer(optimizer or "sgd", net, lr, weight_decay, momentum))
    sched = PolyLR(opt, total_iters=epochs * steps, power=poly_power, warmup_iters=warmup_iters)
    amp_dtype = _amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    loss = _default_loss(loss, device)
    spec = model_spec if model_spec is not None else getattr(net, "model_spec", None)
    state = TrainingState(net, opt, sched, scaler, train_loader, num_classes=num_classes, model_spec=spec,
                          recipe=_recipe(opt, optimizer or "sgd", poly_power, warmup_iters, recipe))  # fmt: skip
    main = D.get_rank() == 0  # the process that writes files and shows progress
    checkpoints = Checkpointer(checkpoint_dir, write=main) if checkpoint_dir is not None else None
    if resume:
        _resume(checkpoints, state, epochs, steps)
    train_model, history = D.wrap_if_distributed(model, device), state.history
    show = progress and main
    plot = LivePlot(epochs) if main and (live_plot or (live_plot is None and progress and in_notebook())) else None
    reset_peak_memory(device)  # History.peak_memory_mib is this run's peak (on CUDA; a CPU has only the process's)
    t_start = time.perf_counter()
    bar = progress_bar(range(state.epoch, epochs), enabled=show, desc="fit", unit="epoch", initial=state.epoch,
                       total=epochs)  # fmt: skip
    for epoch in bar:
        t_epoch = time.perf_counter()
        D.set_sampler_epoch(train_loader, epoch)
        stats = _checked_epoch(train_model, checkpoints, train_loader, loss, opt, sched, device=device, scaler=scaler,
                               amp_dtype=amp_dtype, grad_clip=grad_clip, channels_last=channels_last,
                               progress=show, epoch=epoch, epochs=epochs)  # fmt: skip
        history.record_train(stats.loss, stats.images, stats.seconds, stats.lr)
        state.num_classes = state.num_classes or stats.num_classes
        improved = False
        if val_loader is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            scores = evaluate(net, val_loader, state.num_classes, device, int(getattr(loss, "ignore_index", 255)),
                              amp=amp, channels_last=channels_last)  # fmt: skip
            improved = history.record_val(epoch + 1, scores)
        out_of_time = time_budget_s is not None and time.perf_counter() - t_start >= time_budget_s
        history.stopped_early = D.any_rank(out_of_time, device) and epoch + 1 < epochs
        history.epoch_time.append(time.perf_counter() - t_epoch)
        history.record_memory(*peak_memory_mib(device))
        state.epoch = epoch + 1
        if checkpoints is not None:
            checkpoints.save(state, best=improved)
        _show_epoch(bar, plot, history)
        if history.stopped_early:
            break
    bar.close()
    return history
