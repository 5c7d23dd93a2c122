"""Checks of option values that need no torch (torch only to count GPUs): a bad value is answered at once, with
the command-line option it came from. :class:`JobError` is the error of a training job's options or inputs."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["JobError", "size_pair", "check_device", "check_out_folder", "check_choice", "is_int", "parse_schedule"]


class JobError(ValueError):
    """A mistake in a job's options or inputs (bad value, missing dataset, refused model option); the CLI reports
    it as ``seglearn: error: ...`` with exit code 2."""


def is_int(value: Any) -> bool:
    try:
        operator.index(value)  # int and numpy integers; not 2.0 or "2"
    except TypeError:
        return False
    return not isinstance(value, bool)


def size_pair(value: int | Sequence[int], flag: str) -> tuple[int, int]:
    """``32`` or ``[32]`` -> (32, 32); ``[32, 48]`` -> (32, 48); anything else is refused naming ``flag``."""
    values = [value] if is_int(value) else list(value)
    if len(values) not in (1, 2) or not all(is_int(v) and v >= 1 for v in values):
        raise JobError(f"{flag} takes one or two positive ints (H W), got {' '.join(map(str, values))}")
    return (int(values[0]), int(values[-1]))


_DEVICE = re.compile(r"(cpu|mps|cuda(:\d+)?)")


def check_device(device: str | None, flag: str = "--device") -> None:
    """Refuse a device name torch would not know, or a GPU this machine does not have (imports torch only then)."""
    if device is None or device == "cpu":
        return
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise JobError(f"{flag} {device!r} is not a device: pass cpu, cuda, cuda:N or mps (or leave it out)")
    import torch

    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} GPU(s) are visible" if count else "no CUDA GPU is visible (torch.cuda.is_available())"
            raise JobError(f"{flag} {device}: {have}; pass {flag} cpu, or leave it out to use what is there")
    elif not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise JobError(f"{flag} mps: Apple's MPS is not available here; pass {flag} cpu or leave it out")


def check_out_folder(out: Path, flag: str = "--out") -> None:
    """Refuse an output folder that is a file (or lies under one), before any training."""
    for folder in (out, *out.parents):
        if folder.exists():
            if not folder.is_dir():
                raise JobError(f"{flag} {out}: {folder} is a file; pass a folder (it gets model.pt, run.json, ...)")
            return


def check_choice(value: Any, choices: Sequence[str], flag: str, hint: str = "") -> None:
    if value not in choices:
        raise JobError(f"{flag} {value!r} is not one of: {', '.join(choices)}{hint}")


def parse_schedule(schedule: str) -> tuple[str, int, float]:
    """``"poly"`` -> ("poly", 0, 0); ``"fixed"`` (one rate throughout, FCN's) -> ("fixed", 0, 0);
    ``"step:2000"`` -> ("step", 2000, 0.1); ``"step:2000:0.5"`` -> gamma 0.5."""
    name, *args = str(schedule).split(":")
    try:
        if name in ("poly", "fixed") and not args:
            return name, 0, 0.0
        if name == "step" and len(args) in (1, 2):
            every, gamma = int(args[0]), float(args[1]) if len(args) == 2 else 0.1
            if every >= 1 and 0 < gamma < 1:
                return "step", every, gamma
    except ValueError:
        pass
    raise ValueError(
        f"schedule {schedule!r} is not one of: poly, fixed, step:N (x0.1 every N iterations), step:N:GAMMA"
    )
