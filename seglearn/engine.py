"""Training and inference: ``fit`` (poly schedule, AMP, checkpoints, exact resume, DDP), ``evaluate``, ``predict``."""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from .checkpoint import (
    find_random_transforms,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    seed_everything,
    seed_worker_transforms,
    training_state,
)
from .distributed import ShardSampler, get_rank, unwrap_model
from .history import History
from .memory import peak_memory_mib, reset_peak_memory
from .metrics import ConfusionMatrix, SegScores
from .models.shell import logits_of, resize_to
from .progress import LivePlot, in_notebook, progress_bar
from .schedules import PolyLR, build_optimizer

__all__ = ["fit", "evaluate", "predict", "default_device", "build_optimizer"]

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def default_device() -> torch.device:
    """The fastest available device: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _split_batch(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise TypeError(f"the loader must yield (images, masks) pairs, got {type(batch).__name__}")


def _check_batch(images: Tensor, masks: Tensor, in_channels: int | None) -> None:
    """Shape/dtype checks with advice; cheap (no device sync)."""
    c = in_channels or 3
    if not (isinstance(images, Tensor) and images.ndim == 4 and images.is_floating_point()):
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(
            f"expected images as a float tensor (N, {c}, H, W), got {got}; "
            "use a transforms preset (seglearn.data.train_transforms) that normalizes and converts to tensors"
        )
    if in_channels is not None and images.shape[1] != in_channels:
        raise ValueError(f"expected images (N, {in_channels}, H, W) for this model, got {tuple(images.shape)}")
    if not (isinstance(masks, Tensor) and masks.ndim == 3 and masks.dtype in _INT_DTYPES):
        got = f"{tuple(masks.shape)} {masks.dtype}" if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"expected masks as an integer tensor (N, H, W) of class indices, got {got}")
    if masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
        raise ValueError(
            f"images {tuple(images.shape)} and masks {tuple(masks.shape)} disagree: "
            "need the same N and the same H, W (transform image and mask together)"
        )


def _input_channels(model: nn.Module) -> int | None:
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return conv.in_channels if conv is not None else None


def _amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _to_device(images: Tensor, masks: Tensor, device: torch.device, channels_last: bool) -> tuple[Tensor, Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    images = images.to(device, non_blocking=True, memory_format=fmt)
    return images, masks.to(device, non_blocking=True).long()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


_SHARDED = (DistributedSampler, ShardSampler)


def _sharded(loader: DataLoader | None, train: bool, seed: int) -> DataLoader | None:
    """Under torch.distributed, the same loader over this rank's shard (a loader already sharded is kept)."""
    if not (_distributed() and isinstance(loader, DataLoader)) or isinstance(loader.sampler, _SHARDED):
        return loader
    if loader.batch_size is None:
        raise ValueError(
            "under torch.distributed pass DataLoaders with a batch_size and a DistributedSampler "
            "(seglearn.distributed.train_sampler / eval_sampler); this one cannot be sharded automatically"
        )
    if train:
        sampler = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    else:
        sampler = ShardSampler(loader.dataset)  # no padding: each image is scored exactly once
    keys = ("num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn", "generator")
    kw = {k: getattr(loader, k) for k in keys}
    if loader.num_workers > 0:
        kw.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, **kw)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    num_classes: int | None,
    device: str | torch.device | None = None,
    ignore_index: int = 255,
    *,
    amp: bool = True,
    channels_last: bool = False,
    progress: bool = False,
) -> SegScores:
    """Scores of ``model`` on every (image, mask) batch of ``loader``, from one dataset-wide confusion matrix.

    ``num_classes=None`` takes the model's output channels. Under torch.distributed the matrices of all ranks are
    summed before scoring (give each rank a disjoint shard, e.g. ``seglearn.distributed.eval_sampler``).
    """
    net = unwrap_model(model)
    device = torch.device(device) if device is not None else next(net.parameters()).device
    net.to(device)
    was_training = net.training
    net.eval()
    amp_dtype = _amp_dtype(device, amp)
    in_channels = _input_channels(net)
    cm = ConfusionMatrix(num_classes, ignore_index, device=device) if num_classes is not None else None
    try:
        for batch in progress_bar(loader, enabled=progress and get_rank() == 0, desc="eval", leave=False):
            images, masks = _split_batch(batch)
            _check_batch(images, masks, in_channels)
            images, masks = _to_device(images, masks, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = logits_of(net(images))
            if cm is None:
                cm = ConfusionMatrix(logits.shape[1], ignore_index, device=device)
            cm.update(logits.argmax(1), masks)
    finally:
        net.train(was_training)
    if cm is None:
        raise ValueError("the evaluation loader yielded no batches; pass num_classes or a non-empty loader")
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
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive numbers, got {scales!r}")
    x = images[None] if images.ndim == 3 else images
    net = unwrap_model(model)
    device = next(net.parameters()).device
    x = x.to(device)
    h, w = x.shape[-2:]
    was_training = net.training
    net.eval()
    total: Tensor | None = None
    try:
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            for flipped in (False, True) if flip else (False,):
                logits = logits_of(net(xs.flip(-1) if flipped else xs)).float()
                probs = resize_to(logits.flip(-1) if flipped else logits, (h, w)).softmax(1)
                total = probs if total is None else total + probs
    finally:
        net.train(was_training)
    return (total / (len(scales) * (2 if flip else 1))).to(images.device)


def _any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (one tiny all-reduce), so that all ranks stop together."""
    if not _distributed():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: Iterable | None = None,
    *,
    epochs: int,
    lr: float,
    optimizer: str | torch.optim.Optimizer | None = None,
    loss: Callable[[Any, Tensor], Tensor] | None = None,
    device: str | torch.device | None = None,
    seed: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    time_budget_s: float | None = None,
    num_classes: int | None = None,
    weight_decay: float = 1e-4,
    momentum: float = 0.9,
    warmup_iters: int = 0,
    poly_power: float = 0.9,
    amp: bool = True,
    channels_last: bool = False,
    grad_clip: float | None = None,
    val_every: int = 1,
    progress: bool = True,
    live_plot: bool | None = None,
    sync_bn: bool = False,
    model_config: dict[str, Any] | None = None,
) -> History:
    """Train ``model`` with a per-iteration poly schedule; validate, checkpoint and resume. Returns a :class:`History`.

    ``model(images)`` may return the seglearn output dict or bare logits; ``loss(output, masks)`` defaults to
    :class:`seglearn.losses.SegLoss`. ``optimizer`` is an instance or ``"sgd"`` (default) / ``"adamw"``. On CUDA
    it trains under autocast (bf16, or fp16 with a GradScaler). ``checkpoint_dir`` gets ``last.pt`` after every
    epoch and ``best.pt`` at the best val mIoU; ``resume=True`` continues exactly from ``last.pt``.
    ``time_budget_s`` stops after the epoch in which the budget runs out. On CUDA it resets the device's peak-memory
    counter first, so ``History.peak_memory_mib`` is this run's peak. When torch.distributed is initialized the
    model is wrapped in DistributedDataParallel, loaders are sharded, and only rank 0 writes and shows progress.
    """
    if epochs < 1 or val_every < 1:
        raise ValueError(f"epochs and val_every must be >= 1, got epochs={epochs}, val_every={val_every}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (the folder holding last.pt)")
    rank, distributed = get_rank(), _distributed()
    if seed is not None:
        seed_everything(seed)
        for t in find_random_transforms(getattr(train_loader, "dataset", None)):
            t.set_random_seed(seed)
    net = unwrap_model(model)
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None and distributed:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    net.to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    train_loader = _sharded(train_loader, True, seed or 0)
    val_loader = _sharded(val_loader, False, seed or 0)
    if getattr(train_loader, "num_workers", 0) > 0 and train_loader.worker_init_fn is None:
        if any(True for _ in find_random_transforms(train_loader.dataset)):
            train_loader.worker_init_fn = seed_worker_transforms
    steps = len(train_loader)
    if steps == 0:
        raise ValueError("train_loader yields no batches (dataset smaller than batch_size with drop_last=True?)")
    opt = build_optimizer(optimizer or "sgd", net, lr, weight_decay, momentum)
    sched = PolyLR(opt, total_iters=epochs * steps, power=poly_power, warmup_iters=warmup_iters)
    amp_dtype = _amp_dtype(device, amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if loss is None:
        from .losses import SegLoss

        loss = SegLoss()
    if isinstance(loss, nn.Module):
        loss.to(device)
    ignore_index = int(getattr(loss, "ignore_index", 255))

    history, start = History(), 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_checkpoint(ckpt_dir / "last.pt", net, opt, sched, scaler, model_config=model_config)
        sched.total_iters = epochs * steps  # a resumed run may ask for more (or fewer) epochs
        history, start = History.from_dict(state["history"]), int(state["epoch"])
        num_classes = num_classes or state.get("num_classes")
        restore_rng_state(state["rng"], train_loader)
    elif resume:
        warnings.warn(f"resume=True but {ckpt_dir / 'last.pt'} does not exist: starting from scratch", stacklevel=2)

    if distributed and not isinstance(model, nn.parallel.DistributedDataParallel):
        if sync_bn:
            if device.type != "cuda":
                raise ValueError("sync_bn=True needs CUDA (PyTorch syncs BatchNorm statistics only on GPUs)")
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model = nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    train_model = model if isinstance(model, nn.parallel.DistributedDataParallel) else net
    main = rank == 0
    show = progress and main
    plot = LivePlot(epochs) if main and (live_plot or (live_plot is None and progress and in_notebook())) else None
    in_channels = _input_channels(net)
    check_every = 1 if device.type == "cpu" else 20  # a host sync per check: every step is free only on the CPU
    reset_peak_memory(device)  # History.peak_memory_mib is this run's peak (on CUDA; a CPU has only the process's)
    t_start = time.perf_counter()

    epoch_bar = progress_bar(range(start, epochs), enabled=show, desc="fit", unit="epoch", initial=start, total=epochs)
    for epoch in epoch_bar:
        t_epoch = time.perf_counter()
        if isinstance(getattr(train_loader, "sampler", None), DistributedSampler):
            train_loader.sampler.set_epoch(epoch)
        train_model.train()
        bn_training = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in net.modules())
        loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        seen, t_images = 0, time.perf_counter()
        bar = progress_bar(train_loader, enabled=show, desc=f"epoch {epoch + 1}/{epochs}", leave=False, total=steps)
        for step, batch in enumerate(bar):
            images, masks = _split_batch(batch)
            _check_batch(images, masks, in_channels)
            if bn_training and images.shape[0] == 1:
                raise ValueError(
                    f"a batch of one image reached BatchNorm in training (epoch {epoch + 1}, step {step + 1}): "
                    "use batch_size > 1 and DataLoader(..., drop_last=True) so no final batch of one is left"
                )
            images, masks = _to_device(images, masks, device, channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                output = train_model(images)
                batch_loss = loss(output, masks)
            if num_classes is None:
                num_classes = int(logits_of(output).shape[1])
            if step % check_every == 0 or step == steps - 1:
                value = float(batch_loss.detach())
                if _any_rank(not math.isfinite(value), device):
                    raise FloatingPointError(
                        f"loss is {value} at epoch {epoch + 1}, step {step + 1} (on some rank): lower lr, set "
                        "grad_clip, or check the masks (labels >= num_classes that are not ignore_index?); last.pt "
                        "keeps the last good epoch"
                    )
                # refresh=False: shown at the bar's next throttled redraw. A forced refresh is one Jupyter widget
                # message per step, which can overflow the output queue that nbval reads only after the cell ends.
                bar.set_postfix(
                    loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - t_images + 1e-9):.1f}", refresh=False
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(batch_loss).backward()
            if grad_clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
            lr_used = opt.param_groups[0]["lr"]
            scaler.step(opt)
            scaler.update()
            sched.step()
            loss_sum += batch_loss.detach() * images.shape[0]
            seen += images.shape[0]
        bar.close()
        if distributed:  # each rank updated BatchNorm statistics on its own batches: take rank 0's everywhere
            for buffer in net.buffers():
                dist.broadcast(buffer, src=0)

        totals = torch.stack([loss_sum, torch.tensor(float(seen), device=device, dtype=torch.float64)])
        if distributed:
            dist.all_reduce(totals)
        epoch_loss = float(totals[0] / totals[1])  # a host sync: the GPU has finished the epoch's work
        history.train_time.append(time.perf_counter() - t_images)
        history.train_images.append(int(totals[1]))
        history.train_loss.append(epoch_loss)
        history.lr.append(float(lr_used))
        improved = False
        if val_loader is not None and ((epoch + 1) % val_every == 0 or epoch + 1 == epochs):
            scores = evaluate(net, val_loader, num_classes, device, ignore_index, amp=amp, channels_last=channels_last)
            improved = history.record_val(epoch + 1, scores)
        out_of_time = _any_rank(time_budget_s is not None and time.perf_counter() - t_start >= time_budget_s, device)
        history.stopped_early = out_of_time and epoch + 1 < epochs
        history.epoch_time.append(time.perf_counter() - t_epoch)
        peak, history.memory_kind = peak_memory_mib(device)
        prev = history.peak_memory_mib  # a resumed run keeps the peak of its earlier part
        history.peak_memory_mib = peak if math.isnan(prev) else max(prev, peak)
        if ckpt_dir is not None and main:
            state = training_state(
                epoch + 1, net, opt, sched, scaler, train_loader, history.to_dict(), num_classes, model_config
            )
            if improved:
                save_checkpoint(state, ckpt_dir / "best.pt")
            save_checkpoint(state, ckpt_dir / "last.pt")
        miou = history.val[-1].miou if history.val_epochs[-1:] == [epoch + 1] else None
        epoch_bar.set_postfix(loss=f"{epoch_loss:.4f}", miou="-" if miou is None else f"{miou:.3f}")
        if plot is not None:
            plot.update(epoch + 1, epoch_loss, miou)
        if history.stopped_early:
            break
    epoch_bar.close()
    return history
