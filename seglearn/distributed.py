"""Data-parallel training under ``torchrun``: process-group set-up and teardown, rank helpers, samplers.

``torchrun --nproc_per_node=N -m seglearn train ...`` starts N processes and gives each the env vars ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. :func:`init_distributed` reads them (gloo on a
CPU, nccl on GPUs); without them it returns a single-process :class:`DistInfo` and every helper here is a no-op, so
the same code runs with and without a launcher.

``fit`` calls the helpers at the bottom (:func:`wrap_if_distributed`, :func:`shard_loader`, :func:`any_rank`, ...):
the only place where seglearn wraps a model in ``DistributedDataParallel`` or talks to other ranks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` are all set (torchrun, or a launcher that mimics it)."""
    return all(v in os.environ for v in TORCHRUN_VARS)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer; launch with torchrun") from None


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the process group torchrun describes, or describe a single process when not launched by torchrun.

    ``device=None`` picks ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU. The backend follows the device:
    nccl for CUDA, gloo otherwise. Calling it again after the group exists returns the same description.
    """
    want_cuda = torch.cuda.is_available() if device is None else torch.device(device).type == "cuda"
    if not launched_by_torchrun():
        dev = torch.device(device) if device is not None else torch.device("cuda" if want_cuda else "cpu")
        return DistInfo(rank=0, world_size=1, local_rank=0, device=dev)
    rank, world_size, local_rank = (_env_int(v) for v in TORCHRUN_VARS)
    if want_cuda:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "lower --nproc_per_node or pass --device cpu"
            )
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if want_cuda else "gloo",
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=timedelta(seconds=timeout_s),
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def teardown_distributed() -> None:
    """Leave the process group (after a barrier so no rank exits while another still talks to it)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_initialized() -> bool:
    """True when a torch.distributed process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 (and always when not distributed): the process that writes files and prints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if get_world_size() > 1:
        dist.barrier()


class ShuffledDistributedSampler(DistributedSampler):
    """A ``DistributedSampler`` that reshuffles every pass by itself.

    ``DistributedSampler`` repeats the same order unless ``set_epoch`` is called before each epoch; this one
    advances its epoch after each ``__iter__``, so a training loop that never calls ``set_epoch`` still sees a new
    order every epoch (one that does call it keeps full control).
    """

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        self.epoch += 1
        return iter(indices)


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, ...``: every item exactly once over all ranks.

    ``DistributedSampler`` pads the last round with repeated items so that every rank gets the same count; for
    scoring that would count those images twice, so evaluation uses this sampler and sums confusion matrices.
    """

    def __init__(self, dataset: Sized, rank: int | None = None, world_size: int | None = None) -> None:
        self.rank = get_rank() if rank is None else rank
        self.world_size = get_world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, {self.world_size}), got {self.rank}")
        self.num_items = len(dataset)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_items, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_items, self.world_size))


def train_sampler(dataset: Sized, *, seed: int = 0, drop_last: bool = False) -> Sampler[int] | None:
    """The training sampler for the current process group: a shuffling distributed sampler, or ``None`` (use
    ``shuffle=True`` on the ``DataLoader``) when running in one process."""
    if get_world_size() == 1:
        return None
    return ShuffledDistributedSampler(dataset, shuffle=True, seed=seed, drop_last=drop_last)


def eval_sampler(dataset: Sized) -> Sampler[int] | None:
    """The evaluation sampler: this rank's :class:`ShardSampler`, or ``None`` (sequential) in one process."""
    return ShardSampler(dataset) if get_world_size() > 1 else None


def wrap_model(model: nn.Module, info: DistInfo, *, sync_bn: bool = False) -> nn.Module:
    """Move ``model`` to ``info.device`` and, across several processes, wrap it in ``DistributedDataParallel``.

    ``sync_bn`` converts BatchNorm layers to ``SyncBatchNorm`` first (batch statistics over all ranks; it matters
    when the per-GPU batch is small, as with large crops; CUDA only). In one process the model is returned unwrapped.
    """
    model = model.to(info.device)
    if not info.distributed:
        return model
    if sync_bn:
        if info.device.type != "cuda":
            raise ValueError("SyncBatchNorm needs GPUs (PyTorch syncs batch statistics only on CUDA); drop --sync-bn")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return wrap_if_distributed(model, info.device)


def wrap_if_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when a process group exists and it is not wrapped yet (on
    ``device``, where it must already be); otherwise ``model`` itself."""
    if not is_initialized() or isinstance(model, nn.parallel.DistributedDataParallel):
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a ``DistributedDataParallel`` wrapper (the model itself otherwise)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def process_device(device: torch.device) -> torch.device:
    """``device`` for this process: under torch.distributed a bare ``cuda`` becomes ``cuda:LOCAL_RANK``."""
    if device.type == "cuda" and device.index is None and is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


_SHARDED = (DistributedSampler, ShardSampler)


def shard_loader(loader: DataLoader | None, *, train: bool, seed: int = 0) -> DataLoader | None:
    """Under torch.distributed, the same loader over this rank's shard: a shuffling ``DistributedSampler`` for
    training, a :class:`ShardSampler` (each image scored once) for evaluation. Without a process group, or for a
    loader that is already sharded (or not a DataLoader), ``loader`` itself."""
    if not (is_initialized() and isinstance(loader, DataLoader)) or isinstance(loader.sampler, _SHARDED):
        return loader
    if loader.batch_size is None:
        raise ValueError(
            "under torch.distributed pass DataLoaders with a batch_size and a DistributedSampler "
            "(seglearn.distributed.train_sampler / eval_sampler); this one cannot be sharded automatically"
        )
    if train:
        sampler = DistributedSampler(loader.dataset, shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    else:
        sampler = ShardSampler(loader.dataset)
    keys = ("num_workers", "collate_fn", "pin_memory", "drop_last", "timeout", "worker_init_fn", "generator")
    kw = {k: getattr(loader, k) for k in keys}
    if loader.num_workers > 0:
        kw.update(prefetch_factor=loader.prefetch_factor, persistent_workers=loader.persistent_workers)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, **kw)


def set_sampler_epoch(loader: object, epoch: int) -> None:
    """Tell a loader's ``DistributedSampler`` the epoch (its shuffle order depends on it); no-op for others."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is set on any rank (one tiny all-reduce), so that all ranks stop together."""
    if not is_initialized():
        return flag
    t = torch.tensor(float(flag), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_reduce_sum(t: Tensor) -> Tensor:
    """``t`` summed over all ranks, in place (``t`` itself without a process group)."""
    if is_initialized():
        dist.all_reduce(t)
    return t


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank: each rank updated them on its own
    batches, and DDP syncs gradients, not buffers."""
    if is_initialized():
        for buffer in unwrap_model(model).buffers():
            dist.broadcast(buffer, src=0)
