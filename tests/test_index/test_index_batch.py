"""The query-blocked batch kernels (index/batch_kernels.py) against popcount and numpy.

``method="batch"`` must return what ``method="popcount"`` returns, bit for bit
(ids and scores), and both must match the numpy brute force of index_reference.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from index_reference import HASWELL, assert_topk_matches, reference_scores
from numba import njit

from index import (
    BinaryIndex,
    KernelChooser,
    fixed_plane_weights,
    pack_codes,
)
from index.impl import batch_kernels, dispatch
from index.impl.batch_kernels import LANES, POPCOUNT_PATH, batch_supported

needs_batch = pytest.mark.skipif(not POPCOUNT_PATH, reason="this CPU has no AVX2: no batch kernel")


def _case(rng, n, planes, m, weights, metric, nq, q_planes, random_qw, dup=False):
    pool = rng.choice([-1, 1], size=(3 if dup else n, planes, m))
    signs = pool[rng.integers(0, len(pool), size=n)] if dup and n else pool[:n]
    codes = pack_codes(signs.reshape(n, planes, m))
    ids = rng.choice(10 * n + 10, size=n, replace=False).astype(np.int64)
    scales = None
    if weights == "per_document":
        scales = rng.uniform(0.1, 2, (n, planes)).astype(np.float32)
        scales[:, 0] += planes * 2.0  # no code with zero norm
    queries = pack_codes(rng.choice([-1, 1], size=(nq, q_planes, m)))
    if random_qw:
        qw = rng.uniform(-1, 2, size=(nq, q_planes)).astype(np.float32)
    else:
        qw = np.tile(fixed_plane_weights(q_planes), (nq, 1))
    index = BinaryIndex(m, planes, weights, metric, kernels=KernelChooser())
    index.add(codes, ids, scales)
    doc_weights = scales if scales is not None else fixed_plane_weights(planes)
    divide = metric == "cosine" and not (weights == "fixed" and planes == 1)
    ref = reference_scores(codes, doc_weights, queries, qw, m, divide)
    exact = weights == "fixed" and not random_qw and not divide
    return index, ids, queries, qw, ref, exact


@needs_batch
@settings(max_examples=60, deadline=None)
@given(st.data())
def test_batch_equals_popcount_and_brute_force(data):
    # Few shapes: each (planes, query planes, words) is one more kernel to compile.
    m = data.draw(st.sampled_from([65, 100, 128]), label="m")  # 2 words, padding bits or not
    planes = data.draw(st.integers(1, 2), label="planes")
    q_planes = data.draw(st.sampled_from([1, planes]), label="query planes")
    weights = data.draw(st.sampled_from(["fixed", "per_document"]), label="weights")
    metric = data.draw(st.sampled_from(["ip", "cosine"]), label="metric")
    n = data.draw(st.integers(1, 300), label="n")
    # padded groups of one register and of four (each width is one more kernel to compile)
    nq = data.draw(st.sampled_from([2, LANES + 1, 4 * LANES + 3]), label="nq")
    random_qw = data.draw(st.booleans(), label="random query weights")
    dup = data.draw(st.booleans(), label="tied codes")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    index, ids, queries, qw, ref, exact = _case(
        rng, n, planes, m, weights, metric, nq, q_planes, random_qw, dup
    )
    k = data.draw(st.integers(1, 40), label="k")
    threads = data.draw(st.sampled_from([1, 2]), label="threads")
    mask = None
    if data.draw(st.booleans(), label="filtered"):
        mask = rng.random(n) < 0.5
    got = index.search(queries, k, qw, threads=threads, mask=mask, method="batch")
    ref_run = index.search(queries, k, qw, threads=threads, mask=mask, method="popcount")
    np.testing.assert_array_equal(got[1], ref_run[1])
    np.testing.assert_array_equal(got[0], ref_run[0])
    keep = np.ones(n, dtype=bool) if mask is None else mask
    for j in range(nq):
        assert_topk_matches(got[0][j], got[1][j], ref[j][keep], ids[keep], k, exact)


@needs_batch
def test_batch_after_removals_in_several_segments_and_cascade():
    rng = np.random.default_rng(3)
    index, ids, queries, qw, ref, _ = _case(rng, 900, 2, 100, "fixed", "cosine", 11, 2, False)
    index.compact()
    more = pack_codes(rng.choice([-1, 1], size=(50, 2, 100)))
    index.add(more, -np.arange(1, 51))
    index.remove(ids[::3])
    for kwargs in ({}, {"cascade": 4}):
        got = index.search(queries, 25, qw, method="batch", **kwargs)
        want = index.search(queries, 25, qw, method="popcount", **kwargs)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])


@njit(cache=False)  # not cached: numba shows no assembly of cached code
def _hamming_block(db, shape, qt, limits, dist, hits):
    n_words = db.shape[1]
    return batch_kernels._block_hamming(
        db.reshape(-1), n_words, 0, db.shape[0], shape, qt.reshape(-1), 0, limits, 0, dist, hits
    )


@needs_batch
def test_the_vector_popcount_is_the_cpu_instruction():
    rng = np.random.default_rng(4)
    db = rng.integers(0, 2**64, size=(50, 4), dtype=np.uint64)
    queries = rng.integers(0, 2**64, size=(LANES, 4), dtype=np.uint64)
    limits = np.full(LANES, 128, dtype=np.int64)
    dist = np.empty(50 * LANES, dtype=np.int16)
    hits = np.empty(50, dtype=np.int64)
    shape = ((np.uint64(0),) * 4, (np.uint64(0),) * LANES)
    _hamming_block(db, shape, np.ascontiguousarray(queries.T), limits, dist, hits)
    ref = np.unpackbits((db[:, None, :] ^ queries[None]).view(np.uint8), axis=-1).sum(axis=2)
    np.testing.assert_array_equal(dist.reshape(50, LANES), ref)
    bits = (ref <= 128) @ (1 << np.arange(LANES))
    np.testing.assert_array_equal(hits, bits)
    asm = next(iter(_hamming_block.inspect_asm().values()))
    if POPCOUNT_PATH == "avx512vpopcntdq":
        assert "vpopcntq" in asm  # 8 words per instruction
        assert "zmm" in asm
    else:  # AVX2: nibble lookups by vpshufb, byte sums by vpsadbw
        assert "vpshufb" in asm and "vpsadbw" in asm
    assert "popcntq" not in asm.replace("vpopcntq", ""), "a scalar popcount in the batch loop"


def test_unsupported_shapes_fall_back_to_popcount():
    # 8 query planes of 512 bits: 64 query words, more than the kernel keeps in registers
    assert not batch_supported(512, 1, 8)
    # 5 document planes: more than the kernel is built for (the generic popcount
    # kernel the scan tests compile takes them)
    assert not batch_supported(64, 5, 1)
    rng = np.random.default_rng(5)
    index, _, queries, qw, _, _ = _case(rng, 100, 5, 64, "per_document", "ip", 3, 1, True)
    got = index.search(queries, 7, qw, method="batch")
    want = index.search(queries, 7, qw, method="popcount")
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


@needs_batch
def test_exact_takes_the_batch_kernel_where_the_chooser_measured_it(monkeypatch):
    rng = np.random.default_rng(6)
    n = dispatch.PARALLEL_ROWS + 10
    index, _, queries, qw, _, _ = _case(rng, n, 1, 128, "fixed", "ip", 4, 1, False)
    key = (128, 1, 1, "fixed", "ip", 16, True)
    calls = []
    real = dispatch.batch_topk
    monkeypatch.setattr(dispatch, "batch_topk", lambda *a, **k: calls.append(1) or real(*a, **k))
    for choice in ("batch", "popcount"):
        calls.clear()
        index.kernels = KernelChooser(preset={key: choice, (*key, "no-sdc"): choice})
        got = index.search(queries, 10, method="exact")
        assert bool(calls) == (choice == "batch")
        want = index.search(queries, 10, method="popcount")
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    # a single query never takes the batch kernel
    calls.clear()
    index.search(queries[:1], 10, method="exact")
    assert not calls


AVX2_CHECK = """
import numpy as np
from numba import njit
from index.impl import batch_kernels

assert batch_kernels.POPCOUNT_PATH == "avx2", batch_kernels.POPCOUNT_PATH

@njit(cache=False)
def block(db, shape, qt, limits, dist, hits):
    return batch_kernels._block_hamming(
        db.reshape(-1), db.shape[1], 0, db.shape[0], shape, qt.reshape(-1), 0, limits, 0, dist, hits
    )

rng = np.random.default_rng(0)
db = rng.integers(0, 2**64, size=(50, 4), dtype=np.uint64)
q = rng.integers(0, 2**64, size=(8, 4), dtype=np.uint64)
dist, hits = np.empty(400, dtype=np.int16), np.empty(50, dtype=np.int64)
shape = ((np.uint64(0),) * 4, (np.uint64(0),) * 8)
block(db, shape, np.ascontiguousarray(q.T), np.full(8, 128, dtype=np.int64), dist, hits)
ref = np.unpackbits((db[:, None, :] ^ q[None]).view(np.uint8), axis=-1).sum(axis=2)
assert np.array_equal(dist.reshape(50, 8), ref)
asm = next(iter(block.inspect_asm().values()))
print("vpshufb" in asm, "vpsadbw" in asm, "vpopcntq" in asm, "zmm" in asm)
"""


@needs_batch
def test_an_avx2_target_gets_the_vpshufb_popcount():
    # Compiled for Haswell (AVX2, no AVX-512) whatever this CPU is: runs on any AVX2 host.
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": HASWELL}
    out = subprocess.run(
        [sys.executable, "-c", AVX2_CHECK], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["True", "True", "False", "False"], out.stdout + out.stderr


@needs_batch
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_searches_with_its_own_threads():
    rng = np.random.default_rng(7)
    index, _, queries, qw, _, _ = _case(rng, 2000, 1, 128, "fixed", "ip", 20, 1, False)
    want = index.search(queries, 5, qw, method="batch", threads=2)  # starts the thread pool
    pid = os.fork()
    if pid == 0:  # the child inherits the pool object but none of its threads
        signal.alarm(60)  # a hang kills the child instead of the test run
        got = index.search(queries, 5, qw, method="batch", threads=2)
        os._exit(0 if np.array_equal(got[1], want[1]) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_chunks_queued_behind_a_busy_pool_run_on_the_calling_thread():
    pool = batch_kernels._pool()
    gate = threading.Event()
    blockers = [pool.submit(gate.wait, 30) for _ in range(pool._max_workers)]
    try:
        seen = []
        batch_kernels.run_chunks(lambda c: seen.append((c, threading.get_ident())), 3)
        assert sorted(c for c, _ in seen) == [0, 1, 2]  # all ran, none waited for the pool
        assert {t for _, t in seen} == {threading.get_ident()}
    finally:
        gate.set()
        for b in blockers:
            b.result()
