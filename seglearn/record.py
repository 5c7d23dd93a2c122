"""What a training run reports: one row of a results table (scores, epochs, time, images/s, memory, device, command).

``python -m seglearn train`` writes it as ``run.json``; a chapter notebook writes it as ``runs/chapters/<name>.json``
(:func:`save_chapter_record`); ``benchmarks/full_results.py`` turns either into the README's results table.
"""

from __future__ import annotations

import json
import platform
import shlex
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from seglearn.atomic import write_json
from seglearn.models import count_parameters

if TYPE_CHECKING:  # job.py imports this module
    from seglearn.job import TrainJob


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` on a GPU; ``CPU (x86_64, 2 threads)`` on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def _run_fields(history: Any, device: torch.device) -> dict[str, Any]:
    """The fields every record shares: how long the run took, how fast and big it was, and where it ran."""
    return {
        "epochs": history.epochs, "planned_epochs": history.planned_epochs, "stopped_early": history.stopped_early,
        "wall_s": sum(history.epoch_time), "images_per_s": history.images_per_s,
        "peak_memory_mib": history.peak_memory_mib, "memory_kind": history.memory_kind,
        "device": device_name(device), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip


def run_record(
    job: TrainJob,
    model: nn.Module,
    history: Any,
    scores: Any,
    *,
    device: torch.device,
    world_size: int,
    train_size: int,
    val_size: int,
) -> dict[str, Any]:
    """One row of a results table for ``job``: what ran (the exact command), what it scored, how long and how much
    memory.

    ``wall_s`` sums the epochs (validation included, over every resume of the run); ``images_per_s`` counts the
    training loops alone; ``peak_memory_mib`` is CUDA's peak allocation on a GPU, the process's peak RSS on a CPU.
    """
    prefix = "python -m seglearn" if world_size == 1 else f"torchrun --nproc_per_node={world_size} -m seglearn"
    return {
        "model": job.model, "model_kwargs": job.model_kwargs, "params_m": count_parameters(model) / 1e6,
        "dataset": job.dataset, "train_images": train_size, "val_images": val_size, "crop": list(job.crop),
        "pretrained_backbone": bool(job.pretrained_backbone), "lr": job.lr, "optimizer": job.optimizer,
        "batch_size": job.batch_size * world_size, "miou": scores.miou, "pixel_acc": scores.pixel_acc,
        "mean_acc": scores.mean_acc, "best_miou": history.best_miou, "best_epoch": history.best_epoch,
        "train_s": sum(history.train_time), "world_size": world_size, **_run_fields(history, device),
        "command": f"{prefix} {shlex.join(job.command_args())}",
    }  # fmt: skip


CHAPTER_RECORDS = Path("runs") / "chapters"  # relative to the notebooks' working directory; git-ignored


def chapter_record(
    name: str,
    *,
    row: str,
    notebook: str,
    model_name: str,
    model: nn.Module,
    history: Any,
    scores: Any,
    cfg: Any,
    info: Any,
    **extra: Any,
) -> dict[str, Any]:
    """A chapter's training run as a results-table row (the fields of ``run.json``) plus the chapter's own numbers.

    ``name`` names the record file, ``row`` the results-table row it stands for (see benchmarks/full_results.py),
    ``notebook`` the chapter file it came from; ``cfg`` is the :class:`~seglearn.notebook.NotebookConfig` and
    ``info`` the loaders' :class:`~seglearn.notebook.LoaderInfo`. ``extra`` (e.g. ``miou_crf``) is stored as given.
    """
    env = f"SEGLEARN_MODE={cfg.mode} SEGLEARN_PRETRAINED={int(cfg.pretrained)}"
    return {
        "name": name, "row": row, "model": model_name, "mode": cfg.mode, "data": info.source,
        "params": count_parameters(model), "params_m": count_parameters(model) / 1e6, "train_images": info.train_size,
        "val_images": info.val_size, "pretrained_backbone": bool(cfg.pretrained),
        "train_s": round(sum(history.epoch_time), 1), **_run_fields(history, cfg.device),
        "command": f"{env} jupyter nbconvert --to notebook --execute notebooks/{notebook}.ipynb",
        **scores.as_dict(), **extra,
    }  # fmt: skip


def save_chapter_record(record: dict[str, Any], folder: Path = CHAPTER_RECORDS) -> Path:
    """Write ``record`` as ``folder/<name>.json`` (later chapters and the results table read it) and return the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['name']}.json"
    return write_json(path, record, indent=None)


def load_chapter_record(name: str, folder: Path = CHAPTER_RECORDS) -> dict[str, Any] | None:
    """The record a chapter saved under ``name``, or None when that chapter has not run in this checkout."""
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
