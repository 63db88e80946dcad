"""Helpers the benchmark scripts share (they run as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def median(values: Any) -> float:
    """Median of an iterable of numbers, as a float."""
    return float(np.median(np.asarray(list(values), dtype=np.float64)))


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """Seconds one call of ``fn(*args, **kwargs)`` takes."""
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def random_codes(rng: np.random.Generator, n: int, planes: int, n_words: int) -> np.ndarray:
    """Uniformly random packed codes, uint64 ``(n, planes, n_words)`` (every bit random)."""
    return rng.integers(0, 2**64, size=(n, planes, n_words), dtype=np.uint64, endpoint=False)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
