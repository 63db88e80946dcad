"""Coalesce concurrent calls into one batched call (dynamic batching).

One worker thread per :class:`Coalescer` runs ``fn`` over every queued item
at once (up to ``max_batch``). While a batch runs, new requests queue and
ride together in the next one, so under load the scan kernel scores many
queries per pass over the codes and the encoder embeds many texts per call,
while a lone request runs at once: an idle worker never waits for company.

The short window (``window_ms``) is only for a busy worker: after a batch of
more than one item, the next batch waits up to the window for more requests
(or until it is full), because the clients just answered are about to send
their next queries. After a batch of one (a lone client) the next item runs
at once. :meth:`Coalescer.window_for` is that rule as a pure function.

Callers in threads use :meth:`Coalescer.submit` (blocks); coroutines use
:meth:`Coalescer.submit_async` (awaits without holding a worker thread of the
event loop's pool: a request costs no thread hop of its own).
"""

from __future__ import annotations

import asyncio
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
    done: threading.Event | None = None
    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future | None = None
    result: Any = None
    error: BaseException | None = None
    wait_ms: float = 0.0
    run_ms: float = 0.0
    batch: int = 0
    windowed: bool = False


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """A result with where its time went.

    ``wait_ms``: queued until its batch started (includes any window);
    ``run_ms``: the batch call it rode in; ``batch``: items in that call;
    ``windowed``: whether its batch waited for the window before starting.
    """

    result: R
    wait_ms: float
    run_ms: float
    batch: int
    windowed: bool = False


class Coalescer(Generic[T, R]):
    """Run ``fn(items) -> results`` (same length, same order) over queued items.

    Args:
        fn: the batched call; an exception fails every item of its batch.
        max_batch: most items per call, bounding one call's latency and memory.
        window_ms: how long a busy worker waits to fill a batch (see the module).
        name: the worker thread's name.

    Example:
        >>> double = Coalescer(lambda xs: [2 * x for x in xs])
        >>> double.submit(21).result
        42
    """

    def __init__(
        self,
        fn: Callable[[Sequence[T]], Sequence[R]],
        max_batch: int = 16,
        window_ms: float = 0.0,
        name: str = "coalescer",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.fn = fn
        self.max_batch = max_batch
        self.window_ms = float(window_ms)
        self.name = name
        self._cv = threading.Condition(threading.Lock())
        self._pending: list[_Job[T, R]] = []
        self._worker: threading.Thread | None = None
        self._closed = False
        self._last_batch = 0
        self.calls = 0
        self.items = 0

    # ------------------------------------------------------------------ scheduling
    @staticmethod
    def window_for(last_batch: int, queued: int, max_batch: int, window_ms: float) -> float:
        """Seconds the worker waits before starting a batch of ``queued`` items.

        Zero for a lone client (the last batch had at most one item), for a
        full batch, and when there is no window; else ``window_ms``.
        """
        if window_ms <= 0 or last_batch <= 1 or queued >= max_batch:
            return 0.0
        return window_ms / 1e3

    def _take(self) -> tuple[list[_Job[T, R]], bool] | None:
        """The next batch (waiting for items and, when busy, the window); None once closed."""
        with self._cv:
            while not self._pending and not self._closed:
                self._cv.wait()
            if not self._pending:
                self._worker = None  # under the lock: a later submit starts a new worker
                return None
            wait = self.window_for(
                self._last_batch, len(self._pending), self.max_batch, self.window_ms
            )
            windowed = wait > 0
            deadline = time.perf_counter() + wait
            while len(self._pending) < self.max_batch and not self._closed:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            self._last_batch = len(batch)
            return batch, windowed

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            self._run(*taken)

    def _enqueue(self, job: _Job[T, R]) -> None:
        with self._cv:
            self._pending.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._worker.start()
            self._cv.notify()

    # ------------------------------------------------------------------ callers
    def submit(self, item: T) -> Outcome[R]:
        """Block until ``item`` is processed (in some batch) and return its outcome."""
        job: _Job[T, R] = _Job(item, done=threading.Event())
        self._enqueue(job)
        assert job.done is not None
        job.done.wait()
        return self._outcome(job)

    async def submit_async(self, item: T) -> Outcome[R]:
        """:meth:`submit` for a coroutine: awaits the batch without blocking the event loop."""
        loop = asyncio.get_running_loop()
        job: _Job[T, R] = _Job(item, loop=loop, future=loop.create_future())
        self._enqueue(job)
        assert job.future is not None
        await job.future
        return self._outcome(job)

    @staticmethod
    def _outcome(job: _Job[T, R]) -> Outcome[R]:
        if job.error is not None:
            raise job.error
        return Outcome(job.result, job.wait_ms, job.run_ms, job.batch, job.windowed)

    def close(self) -> None:
        """Stop the worker once the queued items are done (a later submit starts a new one)."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(60)
        with self._cv:
            self._closed, self._last_batch = False, 0

    # ------------------------------------------------------------------ the batch
    def _run(self, batch: list[_Job[T, R]], windowed: bool = False) -> None:
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            results = self.fn([j.item for j in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batched call gave {len(results)} results for {len(batch)}")
        except BaseException as exc:  # every caller of the batch gets it, the worker lives on
            results = None
            error = exc
        finished = time.perf_counter()
        self.calls += 1
        self.items += len(batch)
        for i, job in enumerate(batch):
            job.wait_ms = (started - job.queued) * 1e3
            job.run_ms = (finished - started) * 1e3
            job.batch = len(batch)
            job.windowed = windowed
            if results is None:
                job.error = error
            else:
                job.result = results[i]
            if job.done is not None:
                job.done.set()
            elif job.loop is not None and job.future is not None:
                job.loop.call_soon_threadsafe(_settle, job.future)


def _settle(future: asyncio.Future) -> None:
    # The result travels on the job; the future only wakes its coroutine.
    if not future.done():  # a cancelled request (client gone) needs nothing
        future.set_result(None)
