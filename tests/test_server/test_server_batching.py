"""Dynamic batching: every caller gets its own result, concurrent callers share calls."""

from __future__ import annotations

import threading
import time

import pytest

from server.batching import Coalescer


def test_concurrent_callers_share_calls_and_get_their_own_results():
    gate = threading.Event()
    sizes: list[int] = []

    def square_all(items):
        gate.wait(5)  # hold the first call so the others queue behind it
        sizes.append(len(items))
        return [x * x for x in items]

    batcher = Coalescer(square_all, max_batch=4)
    results: dict[int, int] = {}
    threads = [
        threading.Thread(target=lambda x=x: results.__setitem__(x, batcher.submit(x).result))
        for x in range(10)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(10)
    assert results == {x: x * x for x in range(10)}
    assert sum(sizes) == 10 and max(sizes) <= 4 and len(sizes) < 10


def test_a_failing_call_fails_each_of_its_items_and_nothing_else():
    def fail_on_seven(items):
        if 7 in items:
            raise ValueError("seven")
        return list(items)

    batcher = Coalescer(fail_on_seven)
    with pytest.raises(ValueError, match="seven"):
        batcher.submit(7)
    outcome = batcher.submit(3)
    assert outcome.result == 3 and outcome.batch == 1 and outcome.run_ms >= 0
