"""Peak memory of a piece of work, on any device (CUDA's allocator counters are not available on a CPU)."""

from __future__ import annotations

from collections.abc import Callable


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
