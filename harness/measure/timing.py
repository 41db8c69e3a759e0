"""Wall-clock timing of one callable: first call, warm-up, then repeats; median, IQR and min.

On CUDA every timed call is bracketed by torch.cuda.synchronize, so a time covers the kernels the
call launched and not just their launch. Times are seconds (time.perf_counter).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Timing:
    first_call_s: float  # the first call alone: lazy init, compilation and autotuning land here
    times_s: list[float]  # one per timed repeat, after the warm-up

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def _quartiles(self) -> tuple[float, float]:
        """(Q1, Q3) by statistics.quantiles' 'inclusive' method (the data's own range); the one
        value twice for one repeat."""
        if len(self.times_s) < 2:
            return self.times_s[0], self.times_s[0]
        q1, _, q3 = statistics.quantiles(self.times_s, n=4, method="inclusive")
        return q1, q3

    @property
    def q1_s(self) -> float:
        return self._quartiles()[0]

    @property
    def q3_s(self) -> float:
        return self._quartiles()[1]

    @property
    def iqr_s(self) -> float:
        """Interquartile range Q3 - Q1; 0 for one repeat."""
        q1, q3 = self._quartiles()
        return q3 - q1

    @property
    def min_s(self) -> float:
        return min(self.times_s)


def time_call(fn: Callable[[], object], warmup: int, repeats: int, device: str = "cpu") -> Timing:
    """Time fn(): one first call (its own figure), `warmup` untimed calls, `repeats` timed calls."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got repeats={repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got warmup={warmup}")
    sync = _synchronizer(device)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return Timing(first_call_s=first, times_s=times)


def _synchronizer(device: str) -> Callable[[], None]:
    if str(device).startswith("cuda"):
        import torch

        dev = torch.device(device)
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None
