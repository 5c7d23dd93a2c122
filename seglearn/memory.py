"""Peak memory of a piece of work, on any device (CUDA's allocator counters are not available on a CPU)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def peak_new_bytes(fn: Callable[[], object]) -> int:
    """Peak bytes of tensors created while ``fn`` runs, from torch.profiler's memory timeline (works on CPU).

    Replays the profiler's CREATE/DESTROY events (``profile_memory=True``; the private ``_memory_profile`` behind
    ``export_memory_timeline``) as a running sum; tensors that existed before the call do not count.
    """
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        live += size if action == Action.CREATE else -size if action == Action.DESTROY else 0
        peak = max(peak, live)
    return peak


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak for :func:`peak_memory_mib` (CUDA only: a process's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """Peak memory (MiB) and what was measured: CUDA's peak allocation since the last reset on a GPU, else the
    process's peak resident set size over its whole life (Linux and macOS; NaN elsewhere)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "GPU peak allocated"
    try:
        import resource
    except ImportError:  # Windows
        return float("nan"), "unmeasured"
    import sys

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024, "process peak RSS"  # bytes on macOS, else KiB
