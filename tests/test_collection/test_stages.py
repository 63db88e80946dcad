"""The bounded thread pipeline `binsearch index` runs its stages on."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from binsearch.collection.stages import staged


@settings(max_examples=25, deadline=None)
@given(
    items=st.lists(st.integers(-1000, 1000), max_size=40),
    n_stages=st.integers(1, 4),
    depth=st.integers(1, 3),
)
def test_results_are_the_stages_applied_in_source_order(items, n_stages, depth):
    stages = [lambda x, i=i: x * 3 + i for i in range(n_stages)]
    expected = []
    for x in items:
        for f in stages:
            x = f(x)
        expected.append(x)
    assert list(staged(iter(items), stages, depth=depth)) == expected


def test_stages_run_on_their_own_threads_at_the_same_time():
    seen: dict[str, set[str]] = {"a": set(), "b": set()}
    both = threading.Barrier(2, timeout=5)

    def a(x):
        seen["a"].add(threading.current_thread().name)
        if x == 1:
            both.wait()  # item 1 in stage a while item 0 is in stage b: or a timeout
        return x

    def b(x):
        seen["b"].add(threading.current_thread().name)
        if x == 0:
            both.wait()
        return x

    assert list(staged(iter(range(4)), [a, b], depth=1)) == [0, 1, 2, 3]
    assert len(seen["a"]) == 1 and len(seen["b"]) == 1 and seen["a"] != seen["b"]
    assert threading.current_thread().name not in seen["a"] | seen["b"]


class Boom(RuntimeError):
    pass


def test_an_error_in_a_stage_is_raised_in_the_caller_as_it_was():
    def bad(x):
        if x == 5:
            raise Boom("five")
        return x

    got = []
    with pytest.raises(Boom, match="five"):
        for x in staged(iter(range(100)), [lambda x: x, bad]):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]


def test_an_error_in_the_source_is_raised_in_the_caller():
    def source():
        yield 1
        raise Boom("source")

    with pytest.raises(Boom, match="source"):
        list(staged(source(), [lambda x: x]))


def test_memory_is_bounded_and_closing_early_stops_every_thread():
    read = []

    def source():
        for i in range(10_000):
            read.append(i)
            yield i

    before = threading.active_count()
    gen = staged(source(), [lambda x: x, lambda x: x], depth=2)
    assert next(gen) == 0
    time.sleep(0.3)  # let the stages run ahead as far as the queues allow
    assert len(read) <= 10, len(read)  # 2 queues of 2, one item per stage in hand, ...
    gen.close()
    assert threading.active_count() == before
    assert len(read) <= 12


def test_an_error_in_the_callers_loop_stops_the_stages():
    before = threading.active_count()
    with pytest.raises(Boom):
        for x in staged(iter(range(10_000)), [lambda x: x]):
            if x == 3:
                raise Boom
    assert threading.active_count() == before


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one stage"):
        list(staged(iter([1]), []))
    with pytest.raises(ValueError, match="depth"):
        list(staged(iter([1]), [lambda x: x], depth=0))
