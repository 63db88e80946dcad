"""A bounded pipeline of threads: each stage works on item i while the next works on i-1.

``binsearch index`` reads and tokenises batch i+1 while torch encodes batch i
and the calling thread codes and writes batch i-1 (tokenizers, torch, numpy,
numba and SQLite release the GIL for their heavy parts, so the stages run on
different cores). :func:`staged` is the general form: every stage runs in its
own thread, joined by queues of at most ``depth`` items, so memory stays
bounded however long the source; results come back in source order, in the
calling thread (which can therefore keep what must stay on one thread, such as
a SQLite connection, to itself).

An exception in any stage (or in the source) stops every stage and is raised
in the calling thread, as it was raised; closing the returned generator early
(or an exception in the caller's loop) stops the stages too.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_DONE = object()
#: Seconds a blocked stage waits before looking whether the pipeline was stopped.
_POLL = 0.1
#: Seconds the caller waits for each stage when the pipeline is stopped early.
_ABANDON = 5.0


class _Failed:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put ``item`` unless the pipeline stops meanwhile; False if it stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL)
        except queue.Empty:
            continue
    return _DONE


def _run_stage(
    inputs: Iterable[Any] | queue.Queue,
    work: Callable[[Any], Any],
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    try:
        if isinstance(inputs, queue.Queue):
            while (item := _get(inputs, stop)) is not _DONE:
                if isinstance(item, _Failed):  # an earlier stage failed: pass it on
                    _put(out, item, stop)
                    return
                if not _put(out, work(item), stop):
                    return
        else:
            for item in inputs:
                if stop.is_set() or not _put(out, work(item), stop):
                    return
        _put(out, _DONE, stop)
    except BaseException as exc:  # noqa: BLE001 - raised again in the calling thread
        _put(out, _Failed(exc), stop)


def staged(
    source: Iterable[Any],
    stages: list[Callable[[Any], Any]],
    depth: int = 2,
    name: str = "pipeline",
) -> Iterator[Any]:
    """``stages[-1](...stages[0](item))`` for each item of ``source``, in order.

    ``source`` is iterated in the first stage's thread. Each queue between
    stages holds at most ``depth`` items. Generator: close it (or leave its
    loop by an exception) to stop the threads; they are joined before it returns
    (after a stop, each for at most a few seconds: one busy with a long item
    finishes it on its own and then ends).
    """
    if not stages:
        raise ValueError("staged needs at least one stage")
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    stop = threading.Event()
    queues = [queue.Queue(maxsize=depth) for _ in stages]
    threads = []
    for i, work in enumerate(stages):
        inputs = source if i == 0 else queues[i - 1]
        thread = threading.Thread(
            target=_run_stage,
            args=(inputs, work, queues[i], stop),
            name=f"{name}-{i}",
            daemon=True,  # never keeps the interpreter alive after Ctrl-C
        )
        threads.append(thread)
    for thread in threads:
        thread.start()
    finished = False
    try:
        while True:
            item = queues[-1].get()
            if item is _DONE:
                finished = True
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        for thread in threads:
            # a stage stopped early may be inside one long item (a batch being encoded):
            # it ends after that item, touching nothing of the caller's meanwhile
            thread.join(None if finished else _ABANDON)
