"""The run's switches, read from an argument, else the environment, else a default: run mode, ImageNet weights,
time budgets and name lists. :func:`seglearn.setup_notebook` reads them; scripts may call them too."""

from __future__ import annotations

import os

import torch

MODES = ("QUICK", "FULL")

__all__ = ["MODES", "env_names", "env_seconds", "run_mode", "use_pretrained"]


def run_mode(device: torch.device, mode: str | None = None) -> str:
    """``mode`` (QUICK or FULL, any case) if given, else ``SEGLEARN_MODE``, else QUICK on a CPU and FULL on a GPU."""
    given = mode is not None
    raw = (mode if given else os.environ.get("SEGLEARN_MODE", "")).strip()
    if not raw:
        return "FULL" if device.type == "cuda" else "QUICK"
    if raw.upper() not in MODES:
        where = f"mode={mode!r}" if given else f"SEGLEARN_MODE={raw!r}"
        raise ValueError(f"{where} is not a run mode; set it to QUICK or FULL (or leave it unset: the device decides)")
    return raw.upper()


def use_pretrained(mode: str) -> bool:
    """``SEGLEARN_PRETRAINED`` (1/0, true/false, yes/no) or, when unset, True in FULL mode and False in QUICK."""
    raw = os.environ.get("SEGLEARN_PRETRAINED", "").strip().lower()
    if not raw:
        return mode == "FULL"
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no"):
        return False
    raise ValueError(f"SEGLEARN_PRETRAINED={raw!r} is not a switch; set it to 1 (ImageNet weights) or 0 (from scratch)")


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from the environment variable ``name`` (a time budget), ``default`` if unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise ValueError(f"{name}={raw!r} is not a number of seconds: set it to e.g. 120, or unset it for {default:g}")
    return value


def env_names(name: str) -> list[str] | None:
    """The comma-separated names in the environment variable ``name`` (``"unet, pspnet"``), None if unset or empty."""
    raw = os.environ.get(name, "")
    names = [n.strip() for n in raw.split(",") if n.strip()]
    return names or None
