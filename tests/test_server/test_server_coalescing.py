"""Coalesced searches over HTTP: one shared scan, each request its own exact answer.

Concurrent ``POST /search`` requests are held behind a gated scan so they
queue and ride in one batch; every answer must equal the same query searched
alone afterwards and a numpy brute force over the code values.
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from server_fakes import FAKE_DIM

from binsearch.codes.codecs import make_codec
from index import code_values
from server.batching import Coalescer

N_DOCS, N_QUERIES = 300, 24


def brute_force(queries: np.ndarray, docs: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Top-k (row, cosine of code values) per query, ties by row: the obvious way."""
    codec = make_codec("residual", FAKE_DIM, 2)
    d, q = (codec.encode(x.astype(np.float32)) for x in (docs, queries))
    dv, qv = code_values(d.words, codec.m, d.scales), code_values(q.words, codec.m, q.scales)
    cos = (qv @ dv.T) / np.outer(np.linalg.norm(qv, axis=1), np.linalg.norm(dv, axis=1))
    out = []
    for row in cos:
        order = np.lexsort((np.arange(len(row)), -row))[:k]
        out.append([(int(i), float(row[i])) for i in order])
    return out


def hold_scans(store, expected: int) -> list[int]:
    """Make the store's scan wait until ``expected`` requests are queued; returns batch sizes."""
    batches = store.scan_batches
    original, sizes = batches.fn, []
    first = threading.Event()

    def gated(items):
        if not first.is_set():  # the first (lone) scan waits for the rest to queue behind it
            first.set()
            for _ in range(500):
                with batches._cv:
                    if len(batches._pending) >= expected - len(items):
                        break
                threading.Event().wait(0.01)
        sizes.append(len(items))
        return original(items)

    batches.fn = gated
    return sizes


def test_coalesced_searches_equal_lone_searches_and_brute_force(client):
    rng = np.random.default_rng(5)
    docs = rng.standard_normal((N_DOCS, FAKE_DIM)).astype(np.float32)
    for start in range(0, N_DOCS, 100):
        rows = [{"id": f"d{i}", "vector": docs[i].tolist()} for i in range(start, start + 100)]
        assert client.post("/documents", json={"documents": rows}).status_code == 200
    queries = rng.standard_normal((N_QUERIES, FAKE_DIM)).astype(np.float32)
    ks = [1 + (i * 7) % 15 for i in range(N_QUERIES)]  # mixed k: each takes the head of top-K
    sizes = hold_scans(client.app.state.store, N_QUERIES)

    answers: dict[int, dict] = {}

    def ask(i: int) -> None:
        r = client.post("/search", json={"vector": queries[i].tolist(), "k": ks[i]})
        answers[i] = r.json() if r.status_code == 200 else {"status": r.status_code}

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(N_QUERIES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == N_QUERIES and all("results" in a for a in answers.values())
    assert max(sizes) > 1 and sum(sizes) == N_QUERIES  # they did share scans

    reference = brute_force(queries, docs, max(ks))
    for i in range(N_QUERIES):
        lone = client.post("/search", json={"vector": queries[i].tolist(), "k": ks[i]}).json()
        got = answers[i]["results"]
        assert [(h["id"], h["score"]) for h in got] == [
            (h["id"], h["score"]) for h in lone["results"]
        ]
        ref = reference[i][: ks[i]]
        np.testing.assert_allclose([h["score"] for h in got], [s for _, s in ref], atol=1e-5)
        for h in got:  # ties may swap order in float rounding; every id scores its reference
            row = int(h["id"][1:])
            assert h["score"] == pytest.approx(
                float(reference_score(queries[i], docs[row])), abs=1e-5
            )
        timings = answers[i]["timings"]
        assert timings["search_ms"] > 0 and timings["queue_ms"] >= 0
        total = timings["encode_ms"] + timings["search_ms"] + timings["queue_ms"]
        assert timings["total_ms"] == pytest.approx(total, abs=2e-3)


def reference_score(query: np.ndarray, doc: np.ndarray) -> float:
    return brute_force(query[None, :], doc[None, :], 1)[0][0][1]


def test_coalesced_text_queries_share_one_encoder_call(client, encoder):
    texts = ["supersonic boundary layer", "heat transfer in a pipe", "wing flutter", "shock"]
    body = {"documents": [{"id": f"t{i}", "text": t} for i, t in enumerate(texts)]}
    assert client.post("/documents", json=body).status_code == 200
    store = client.app.state.store
    batches, original = store.encoder_batches, store.encoder_batches.fn
    gate, running, sizes = threading.Event(), threading.Event(), []

    def gated(items):
        running.set()
        gate.wait(10)
        sizes.append(len(items))
        return original(items)

    batches.fn = gated
    answers: dict[int, dict] = {}

    def ask(i: int) -> None:
        answers[i] = client.post("/search", json={"query": texts[i % 4], "k": 2}).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    threads[0].start()
    assert running.wait(10)  # the first call holds; the rest queue behind it
    for t in threads[1:]:
        t.start()
    for _ in range(500):
        with batches._cv:
            if len(batches._pending) >= 7:
                break
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(60)
    assert sorted(sizes) == [1, 7]  # 8 requests, 2 encoder calls
    for i, a in answers.items():
        assert a["results"][0]["id"] == f"t{i % 4}"
        assert a["timings"]["encode_ms"] > 0


def test_a_lone_query_never_waits_for_the_window():
    # The rule: no window after a batch of one (a lone client), none for a full batch.
    assert Coalescer.window_for(last_batch=0, queued=1, max_batch=64, window_ms=1.0) == 0.0
    assert Coalescer.window_for(last_batch=1, queued=1, max_batch=64, window_ms=1.0) == 0.0
    assert Coalescer.window_for(last_batch=8, queued=64, max_batch=64, window_ms=1.0) == 0.0
    assert Coalescer.window_for(last_batch=8, queued=3, max_batch=64, window_ms=1.0) == 0.001
    assert Coalescer.window_for(last_batch=8, queued=3, max_batch=64, window_ms=0.0) == 0.0
    # ... and the worker follows it: a huge window, yet lone calls are never held by it.
    batcher = Coalescer(lambda xs: [x + 1 for x in xs], max_batch=64, window_ms=600_000)
    for x in range(3):
        outcome = batcher.submit(x)
        assert outcome.result == x + 1 and outcome.batch == 1 and not outcome.windowed
    batcher.close()


def test_a_busy_worker_waits_for_the_window_then_runs_what_came():
    gate = threading.Event()
    calls: list[int] = []

    def hold_first(items):
        if not calls:
            gate.wait(10)
        calls.append(len(items))
        return list(items)

    batcher = Coalescer(hold_first, max_batch=4, window_ms=5.0)
    outcomes = {}
    threads = [
        threading.Thread(target=lambda x=x: outcomes.__setitem__(x, batcher.submit(x)))
        for x in range(6)
    ]
    threads[0].start()
    while not batcher._worker or batcher._pending:  # the first item is taken alone
        threading.Event().wait(0.005)
    for t in threads[1:]:
        t.start()
    for _ in range(500):
        with batcher._cv:
            if len(batcher._pending) == 5:
                break
        threading.Event().wait(0.01)
    gate.set()
    for t in threads:
        t.join(10)
    assert calls == [1, 4, 1]  # then a full batch (no window), then the rest after a window
    assert {x: o.result for x, o in outcomes.items()} == {x: x for x in range(6)}
    assert not outcomes[0].windowed
    assert [o.windowed for o in outcomes.values() if o.batch == 1 and o.result != 0] == [True]
    batcher.close()


def test_async_callers_share_batches_without_blocking_the_loop():
    gate, running = threading.Event(), threading.Event()
    sizes: list[int] = []

    def square_all(items):
        running.set()
        gate.wait(10)
        sizes.append(len(items))
        return [x * x for x in items]

    batcher = Coalescer(square_all, max_batch=16)

    async def main() -> list[int]:
        tasks = [asyncio.create_task(batcher.submit_async(0))]
        while not running.is_set():  # the loop stays free while the worker holds
            await asyncio.sleep(0.005)
        tasks += [asyncio.create_task(batcher.submit_async(x)) for x in range(1, 10)]
        while len(batcher._pending) < 9:
            await asyncio.sleep(0.005)
        gate.set()
        return [(await t).result for t in tasks]

    assert asyncio.run(main()) == [x * x for x in range(10)]
    assert sizes == [1, 9]
    batcher.close()
    assert batcher.submit(3).result == 9  # a closed coalescer starts a new worker


def test_a_failing_batch_fails_only_its_own_async_callers():
    batcher = Coalescer(lambda xs: [1 / x for x in xs])

    async def main() -> None:
        with pytest.raises(ZeroDivisionError):
            await batcher.submit_async(0)
        assert (await batcher.submit_async(4)).result == 0.25

    asyncio.run(main())
    batcher.close()
