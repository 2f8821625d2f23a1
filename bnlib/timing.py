"""Timing several implementations fairly on a shared machine: one process, runs alternating."""
from __future__ import annotations

import gc
import time
from typing import Callable

import numpy as np

__all__ = ["time_alternating"]


def time_alternating(fns: dict[str, Callable[[], object]], repeats: int = 7,
                     clock: Callable[[], float] = time.process_time,
                     warmup: int = 1) -> dict[str, np.ndarray]:
    """Seconds per call of each function, the functions alternating within every repeat.

    Alternating (with the order rotated each repeat) makes a drift in machine load hit every
    function alike; the warm-up calls absorb compilation and first-touch page faults; the
    garbage collector is paused while timing. Take medians of the result.

    Args:
        fns: name -> a callable with no arguments.
        repeats: timed calls per function. Default: ``7``.
        clock: the clock; ``time.process_time`` (CPU time, the default) is disturbed less by
            other jobs than ``time.perf_counter`` (wall time).
        warmup: untimed calls per function first. Default: ``1``.

    Returns:
        name -> array of ``repeats`` durations in seconds.

    Example:
        >>> t = time_alternating({"sum": lambda: sum(range(1000))}, repeats=3)
        >>> t["sum"].shape
        (3,)
    """
    if repeats < 1:
        raise ValueError(f"expected repeats >= 1 (got {repeats})")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    names = list(fns)
    samples: dict[str, list[float]] = {name: [] for name in names}
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            shift = r % len(names) if names else 0
            for name in names[shift:] + names[:shift]:  # rotate the order every repeat
                t0 = clock()
                fns[name]()
                samples[name].append(clock() - t0)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: np.array(t) for name, t in samples.items()}
