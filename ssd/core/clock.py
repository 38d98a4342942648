"""Wall-clock time of device work: the one timer that the harness, the search and the GPU check use.

A GPU runs its work queued, so a timer that did not wait for it would time
the queueing; `timed` synchronises the device before and after (a no-op on a
CPU).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that wall-clock time measures it (a no-op on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], T], device: torch.device) -> tuple[T, float]:
    """`run()`'s result and its wall seconds, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = run()
    synchronize(device)
    return result, time.perf_counter() - start


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """The median wall seconds of `repeats` calls of `run()`, after one untimed call (first-call costs:
    allocations, kernel choice, compilation)."""
    run()
    return statistics.median(timed(run, device)[1] for _ in range(repeats))
