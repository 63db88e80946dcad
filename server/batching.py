"""Coalesce concurrent calls into one batched call (dynamic batching).

While one batch runs, new requests queue; the next free thread takes every
queued request as one batch. A sentence encoder embeds 8 short texts in one
call far faster than in 8 calls, and the scan kernel scores several queries
per pass over the codes, so under concurrency both get cheaper per request,
while a lone request runs at once, without waiting for company.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Job(Generic[T, R]):
    item: T
    queued: float = field(default_factory=time.perf_counter)
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    wait_ms: float = 0.0
    run_ms: float = 0.0
    batch: int = 0


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """A result with where its time went: queued, and the batch call it rode in."""

    result: R
    wait_ms: float
    run_ms: float
    batch: int


class Coalescer(Generic[T, R]):
    """Run ``fn(items) -> results`` (same length, same order) over queued items.

    Args:
        fn: the batched call; an exception fails every item of its batch.
        max_batch: most items per call, bounding one call's latency and memory.

    Example:
        >>> double = Coalescer(lambda xs: [2 * x for x in xs])
        >>> double.submit(21).result
        42
    """

    def __init__(self, fn: Callable[[Sequence[T]], Sequence[R]], max_batch: int = 16) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self._cv = threading.Condition(threading.Lock())
        self._pending: list[_Job[T, R]] = []
        self._busy = False
        self.calls = 0
        self.items = 0

    def submit(self, item: T) -> Outcome[R]:
        """Block until ``item`` is processed (in some batch) and return its outcome."""
        job: _Job[T, R] = _Job(item)
        with self._cv:
            self._pending.append(job)
            while not job.done:
                if self._busy:
                    self._cv.wait()
                    continue
                # Nobody is running: this thread runs the oldest queued items,
                # its own among them unless more than max_batch are waiting.
                self._busy = True
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self._cv.release()
                try:
                    self._run(batch)
                finally:
                    self._cv.acquire()
                    self._busy = False
                    self._cv.notify_all()
        if job.error is not None:
            raise job.error
        return Outcome(job.result, job.wait_ms, job.run_ms, job.batch)

    def _run(self, batch: list[_Job[T, R]]) -> None:
        started = time.perf_counter()
        try:
            results = self.fn([j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batched call gave {len(results)} results for {len(batch)}")
        except BaseException as exc:
            results = None
            error = exc
        finished = time.perf_counter()
        self.calls += 1
        self.items += len(batch)
        for i, job in enumerate(batch):
            job.wait_ms = (started - job.queued) * 1e3
            job.run_ms = (finished - started) * 1e3
            job.batch = len(batch)
            if results is None:
                job.error = error
            else:
                job.result = results[i]
            job.done = True
